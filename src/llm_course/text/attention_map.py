"""Attention heat maps of a fine-tuned sequence classifier: how each token's attention spreads over the text.

Run: ``python -m llm_course.text.attention_map RUN/hf_model "A review." --output attention.png``

Attention weights show where a layer moved information from; they are not an explanation of the prediction (the
values, later layers and the head all intervene). Matplotlib is imported only when drawing.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llm_course.assets import from_pretrained
from llm_course.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def load_for_attention(model_dir: str | Path) -> tuple[Any, Any]:
    """A saved sequence classifier (eval mode) and its tokenizer, with attention that can return its weights.

    Fused SDPA attention never materializes the weights, so transformers returns none with ``output_attentions``
    unless the model runs the eager implementation.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = from_pretrained(AutoModelForSequenceClassification, str(model_dir), "--model_dir",
                            attn_implementation="eager", dtype=torch.float32)  # fmt: skip
    return model.eval(), from_pretrained(AutoTokenizer, str(model_dir), "--model_dir")


def head_averaged_attention(
    model: Any, tokenizer: Any, text: str, layer: int = -1, max_length: int = 128
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Attention weights of one layer for ``text``, averaged over that layer's heads.

    Args:
        model: a sequence classifier loaded with eager attention (:func:`load_for_attention`).
        tokenizer: its tokenizer.
        text: one input text.
        layer: 0-based layer index; negative counts from the last layer.
        max_length: tokens kept (truncated at the end).

    Returns:
        The tokens, the ``(tokens, tokens)`` matrix whose row ``i`` is token ``i``'s attention over all tokens (each
        row sums to 1), and the class probabilities.

    Raises:
        ConfigError: ``layer`` is outside the model's layers.
    """
    n_layers = model.config.num_hidden_layers
    if not -n_layers <= layer < n_layers:
        allowed = f"0..{n_layers - 1} or -1..-{n_layers}"
        raise ConfigError(f"layer={layer} is outside the model's {n_layers} layers: use {allowed}")
    inputs = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs, output_attentions=True)
    if not out.attentions:
        raise ValueError("the model returned no attention weights; load it with attn_implementation='eager'")
    weights = out.attentions[layer][0].float().mean(dim=0)  # (heads, T, T) -> (T, T)
    tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    return tokens, weights, out.logits[0].float().softmax(-1)


def attention_heatmap(
    model_dir: str,
    text: str,
    layer: int = -1,
    output: str | None = None,
    max_length: int = 128,
) -> "Figure":
    """Draw one layer's head-averaged attention for ``text``: the full matrix, and the ``[CLS]`` row as bars.

    The ``[CLS]`` row is where the classifier's input vector gathers from in that layer.

    Args:
        model_dir: a saved classifier with its tokenizer (a run's ``hf_model/`` folder).
        text: the text to run (keep it short: one tick label per token).
        layer: 0-based layer index; negative counts from the last layer.
        output: save the figure to this path (PNG, 150 dpi) when given.
        max_length: tokens kept.

    Returns:
        The figure: axes 0 holds the matrix (queries on y, keys on x), axes 1 the ``[CLS]`` row.

    Raises:
        ConfigError: ``layer`` is outside the model's layers.
        AssetError: ``model_dir`` cannot be loaded.
    """
    from llm_course.plotting import subplots

    model, tokenizer = load_for_attention(model_dir)
    tokens, weights, probs = head_averaged_attention(model, tokenizer, text, layer, max_length)
    n, cfg = len(tokens), model.config
    layer_number = layer % cfg.num_hidden_layers + 1
    label = cfg.id2label.get(int(probs.argmax()), str(int(probs.argmax())))

    side = max(4.5, 0.32 * n + 1.5)
    fig, (ax, bars) = subplots(1, 2, figsize=(side + 4.0, side))
    image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0)
    ax.set_xticks(range(n), tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(n), tokens, fontsize=8)
    title = f"layer {layer_number} of {cfg.num_hidden_layers}, mean over {cfg.num_attention_heads} heads"
    ax.set(xlabel="attended token (key)", ylabel="attending token (query)", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bars.barh(range(n), weights[0].numpy(), color="tab:blue")
    bars.set_yticks(range(n), tokens, fontsize=8)
    bars.invert_yaxis()
    bars.set(xlabel="attention weight", title=f"{tokens[0]} row")
    fig.suptitle(f"predicted {label} (p = {float(probs.max()):.2f}): {text}", fontsize=9)
    fig.tight_layout()
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=150)
    return fig


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(attention_heatmap)
