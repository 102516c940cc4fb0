"""Inputs of ``scripts/gpu_check.sh``: labelled reviews for ``bench precision`` and, for ``--dry_run``, tiny models.

Usage: python scripts/gpu_check_inputs.py FOLDER [--tiny]

Writes ``FOLDER/reviews.jsonl`` (labelled texts; the benchmark times training on them, so they are long enough to
fill 128 tokens, and their labels follow sentiment words, so the loss can fall) and, with ``--tiny``, two models
built from configs: ``FOLDER/tiny_bert`` (a 2-layer BERT classifier with the embedded MiniLM tokenizer, for
``bench precision``) and ``FOLDER/tiny_llama`` (a 2-layer Llama, 64 wide, with a byte tokenizer and ChatML, for
``bench quant-inference``, ``lora-memory`` and ``serve``). Its output layer is zero, so greedy decoding never picks
the end-of-turn token and every reply has exactly ``max_tokens`` tokens. 64 wide: bitsandbytes' 4-bit CPU kernel
needs layer widths that are multiples of its block size (64).
"""

import argparse
import json
import random
from pathlib import Path

import torch

from llm_course.tiny import byte_tokenizer, tiny_bert

GOOD = ["wonderful", "moving", "brilliant", "clever", "delightful", "superb", "touching", "gripping"]
BAD = ["boring", "awful", "dull", "clumsy", "tedious", "dreadful", "lifeless", "muddled"]
FILLER = ("the film story acting plot camera music scene actor director script ending moment character audience "
          "screen score pace dialogue cast light").split()  # fmt: skip


def write_reviews(path: Path, n: int, words: int = 160, seed: int = 0) -> Path:
    """``n`` labelled reviews of ``words`` words: filler with sentiment words of the label's side mixed in."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            label = i % 2
            side = GOOD if label else BAD
            text = " ".join(rng.choice(side) if rng.random() < 0.15 else rng.choice(FILLER) for _ in range(words))
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


def tiny_llama(folder: Path, width: int = 64) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=3 * width,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    model = LlamaForCausalLM(config)
    torch.nn.init.zeros_(model.lm_head.weight)  # every logit ties: greedy picks token 0, never the end of turn
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tiny", action="store_true", help="also build the tiny models (for --dry_run)")
    parser.add_argument("--reviews", type=int, default=1000, help="labelled reviews to write")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    made = {"reviews": str(write_reviews(args.folder / "reviews.jsonl", args.reviews))}
    if args.tiny:
        made["tiny_bert"] = tiny_bert(args.folder / "tiny_bert")
        made["tiny_llama"] = str(tiny_llama(args.folder / "tiny_llama"))
    print(json.dumps(made))


if __name__ == "__main__":
    main()
