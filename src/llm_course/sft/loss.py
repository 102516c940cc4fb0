"""The response-token loss of a causal LM, computed without the full-vocabulary logits tensor.

A Hugging Face causal LM returns logits for every position (batch × length × vocabulary; 49,152 words for
SmolLM2), upcasts them to float32 for the cross entropy and keeps them, their log-softmax and their gradient
alive through backward: about 16 bytes per position and word, 800 MB for 1,024 tokens. At that size the
logits, not the weights, set the peak memory of a LoRA step. :func:`causal_lm_loss` runs the head and the
cross entropy on the response tokens only (prompt positions never need logits), ``chunk_size`` tokens at a
time, and recomputes each chunk in backward (``torch.utils.checkpoint``), so at most one chunk's logits exist.
The value and the gradients equal the model's own loss (tests/test_sft_loss.py).
"""

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llm_course.sft.prompts import IGNORE_INDEX

# Config fields of models whose logits are rescaled or capped after the head: the plain head would be wrong.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def unwrap(net: Any) -> Any:
    """The ``*ForCausalLM`` model inside a PEFT wrapper (LoRA layers are injected in place), or ``net`` itself."""
    return net.get_base_model() if hasattr(net, "get_base_model") else net


def causal_lm_loss(
    net: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    chunk_size: int = 0,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Next-token cross entropy over the positions whose label is not -100 (as Hugging Face computes it).

    ``chunk_size`` = 0 calls the model with ``labels`` (full logits); > 0 computes the head and the loss on that
    many response tokens at a time. ``net`` is a ``*ForCausalLM`` model or a PEFT model wrapping one.
    ``reduction="sum"`` adds the tokens' losses instead of averaging them, so that the caller can divide by the
    token count of several batches together (token-weighted gradient accumulation, ``sft/module.py``).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} is not one of: mean, sum")
    if chunk_size <= 0:
        loss = net(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        # the model only averages; mean × count is the sum, gradients included
        return loss * (labels[:, 1:] != IGNORE_INDEX).sum() if reduction == "sum" else loss
    model = unwrap(net)
    transforms = [k for k in _LOGIT_TRANSFORMS if getattr(model.config, k, None) not in (None, 1, 1.0)]
    if transforms:
        raise ValueError(
            f"model.loss_chunk_size={chunk_size}: {type(model).__name__} transforms its logits after the head "
            f"({', '.join(transforms)}), which the chunked loss does not reproduce. Set model.loss_chunk_size=0."
        )
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    keep = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
    hidden, targets = hidden[:, :-1][keep], labels[:, 1:][keep]
    head = model.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk_size):
        part = slice(start, start + chunk_size)
        if torch.is_grad_enabled():  # keep no logits for backward: recompute this chunk's there
            total = total + checkpoint(_chunk_loss, head, hidden[part], targets[part], use_reentrant=False)
        else:
            total = total + _chunk_loss(head, hidden[part], targets[part])
    if reduction == "sum":
        return total
    return total / len(targets)  # no response token: 0 / 0 = nan, as the model's own loss gives
