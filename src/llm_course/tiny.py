"""Tiny models built from a config on the fly: ``llm-course tour --tiny``, ``scripts/gpu_check.sh --dry_run`` and the
tests use them.

Random weights: they check that a pipeline runs end to end, not what a model learns.
"""

from pathlib import Path
from typing import Any

import torch

CHATML = (  # SmolLM2's chat template: ChatML with a default system turn
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_bert(folder: Path) -> str:
    """A 2-layer, 32-wide BERT classifier, saved with the embedded MiniLM tokenizer (its vocabulary)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from llm_course.assets import resolve_model

    if (folder / "config.json").is_file():  # built before
        return str(folder)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def byte_tokenizer(chat_template: str | None = CHATML, first: str | None = None) -> Any:
    """A byte-level tokenizer with no merges (one token per byte), ChatML's special tokens and ``chat_template``
    (None: none, as GPT-2 has). ``first``: a token (in byte-level characters, "Ġ" for a space) given id 0, before
    the bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    head = [first] if first is not None else []
    vocab = {c: i for i, c in enumerate(head + [c for c in bytes_to_unicode().values() if c != first])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer.chat_template = chat_template
    return tokenizer


def tiny_lm(folder: Path, arch: str = "llama", width: int = 32, mlp: int | None = None) -> str:
    """A 2-layer causal LM (``llama``: the architecture of SmolLM2, a thousandth of its size; or ``gpt2``) ``width``
    wide, saved with the byte tokenizer. GPT-2 gets the tokenizer without a chat template, so it exercises the Alpaca
    prompt. ``mlp``: Llama's MLP width (default 2 × ``width``)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():  # built before
        return str(folder)
    tokenizer = byte_tokenizer(CHATML if arch == "llama" else None)
    n = len(tokenizer)
    torch.manual_seed(0)
    if arch == "llama":
        config = LlamaConfig(vocab_size=n, hidden_size=width, intermediate_size=mlp or 2 * width, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             tie_word_embeddings=True)  # fmt: skip
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=n, n_embd=width, n_layer=2, n_head=4, n_positions=1024,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
        model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def constant_lm(folder: Path, first: str) -> str:
    """A tiny Llama whose output layer is zero: every logit ties, so greedy decoding always picks token 0, ``first``
    (and under a grammar, the lowest id the grammar allows)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer(CHATML, first)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    model = LlamaForCausalLM(config)
    torch.nn.init.zeros_(model.lm_head.weight)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
