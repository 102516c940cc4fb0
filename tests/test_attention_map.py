"""Module 3: the attention heat map draws the weights the classifier uses, one row per token, each row summing to 1."""

import math

import pytest
import torch

from llm_course.errors import ConfigError
from llm_course.text.attention_map import attention_heatmap, head_averaged_attention, load_for_attention

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", *"the plot was thin but acting superb".split()]
TEXT = "The plot was thin, but the acting was superb."
TOKENS = ["[CLS]", "the", "plot", "was", "thin", ",", "but", "the", "acting", "was", "superb", ".", "[SEP]"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A 3-layer, 32-wide BERT classifier with 4 heads and a word-level tokenizer, saved like a run's hf_model/."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("run") / "hf_model"
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)})
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, id2label={0: "neg", 1: "pos"},
                        label2id={"neg": 0, "pos": 1})  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)  # SDPA by default: the loader must switch to eager
    tokenizer.save_pretrained(folder)
    return str(folder)


def recomputed_attention(model, tokenizer, text: str, layer: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) of ``layer``, from its input hidden states and query/key weights, mean over heads."""
    inputs = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[layer]  # the input of `layer`
        attn = model.bert.encoder.layer[layer].attention.self
        heads, d = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
        q, k = (proj(hidden[0]).view(-1, heads, d).transpose(0, 1) for proj in (attn.query, attn.key))
        return (q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(-1).mean(0)


@pytest.mark.parametrize("layer", [0, -1])
def test_weights_are_the_layers_softmax(model_dir, layer):
    model, tokenizer = load_for_attention(model_dir)
    tokens, weights, probs = head_averaged_attention(model, tokenizer, TEXT, layer=layer)
    assert tokens == TOKENS
    assert weights.shape == (len(TOKENS), len(TOKENS))
    assert torch.allclose(weights.sum(-1), torch.ones(len(TOKENS)), atol=1e-5)
    assert torch.allclose(weights, recomputed_attention(model, tokenizer, TEXT, layer % 3), atol=1e-5)
    assert probs.shape == (2,) and abs(float(probs.sum()) - 1) < 1e-5
    other = head_averaged_attention(model, tokenizer, TEXT, layer=1)[1]
    assert not torch.allclose(weights, other, atol=1e-3)  # a different layer attends differently


def test_heatmap_figure_and_file(model_dir, tmp_path):
    png = tmp_path / "figs" / "attention.png"
    fig = attention_heatmap(model_dir, TEXT, layer=-1, output=str(png))
    matrix_ax, cls_ax = fig.axes[:2]
    assert [t.get_text() for t in matrix_ax.get_xticklabels()] == TOKENS
    assert [t.get_text() for t in matrix_ax.get_yticklabels()] == TOKENS
    assert len(cls_ax.get_yticklabels()) == len(TOKENS)
    drawn = torch.as_tensor(matrix_ax.images[0].get_array().data)
    assert drawn.shape == (len(TOKENS), len(TOKENS))
    assert torch.allclose(drawn.sum(-1).float(), torch.ones(len(TOKENS)), atol=1e-5)
    bar_heights = torch.tensor([bar.get_width() for bar in cls_ax.patches])
    assert torch.allclose(bar_heights.float(), drawn[0].float(), atol=1e-6)  # the bars are the [CLS] row
    assert "layer 3 of 3" in matrix_ax.get_title() and "mean over 4 heads" in matrix_ax.get_title()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_layer_out_of_range_names_the_range(model_dir):
    with pytest.raises(ConfigError, match=r"layer=3 is outside the model's 3 layers"):
        attention_heatmap(model_dir, TEXT, layer=3)
