"""``llm-course generate`` and ``llm-course chat``: the generation engine in a terminal."""

import json as jsonlib
import sys
from collections.abc import Callable
from typing import TextIO

from llm_course.inference.engine import GenerationEngine, Weights
from llm_course.inference.sampling import SamplingParams


def generate(
    prompt: str,
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    weights: Weights = "fp32",
    system: str | None = None,
    temperature: float = 0.7,
    top_k: int = 50,
    top_p: float = 0.95,
    repetition_penalty: float = 1.0,
    max_new_tokens: int = 256,
    seed: int | None = None,
    stop: list[str] | None = None,
    json: bool = False,
    device: str = "auto",
    trust_remote_code: bool = False,
) -> None:
    """Answer one prompt, streaming the reply to the terminal; its timings go to stderr.

    Args:
        prompt: the user message.
        model: embedded name (smollm2-135m-instruct), hub id, model folder (e.g. from llm-course merge), or a LoRA
            adapter folder from Module 6.
        adapter: a LoRA adapter folder to apply on top of --model.
        weights: fp32, bf16, int8 or nf4.
        system: an optional system message.
        temperature: 0 = greedy; higher = more varied.
        top_k: sample among the k most likely tokens (0 = no limit).
        top_p: sample among the most likely tokens that make up probability p (1 = no limit).
        repetition_penalty: >1 makes repeating a token less likely (1 = off).
        max_new_tokens: most tokens in the reply.
        seed: seed for sampling (same seed, same reply).
        stop: strings that end the reply.
        json: print one JSON object (reply, timings, settings) instead of streaming.
        device: auto, cpu, cuda or cuda:N.
        trust_remote_code: allow model code from the hub (off unless you trust the repo).
    """
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed, stop or [])
    engine = GenerationEngine.load(model, adapter, weights, device, trust_remote_code)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    generation = engine.stream(messages, params)
    if json:
        reply = generation.wait()
        result = {"model": engine.name, "weights": engine.weights, "reply": reply, "stats": generation.stats.as_dict(),
                  "params": params.as_dict()}  # fmt: skip
        print(jsonlib.dumps(result, indent=2))
        return
    for piece in generation:
        print(piece, end="", flush=True)
    print()
    print(generation.stats.line(), file=sys.stderr)


CHAT_HELP = """commands: /reset (forget the conversation), /params (show settings), /params NAME=VALUE ... (change them,
e.g. /params temperature=0.2 max_new_tokens=64), /quit (or Ctrl-D). Ctrl-C stops the reply being written."""


def chat(
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    weights: Weights = "fp32",
    system: str | None = None,
    temperature: float = 0.7,
    top_k: int = 50,
    top_p: float = 0.95,
    repetition_penalty: float = 1.0,
    max_new_tokens: int = 256,
    seed: int | None = None,
    device: str = "auto",
    trust_remote_code: bool = False,
) -> None:
    """Chat in the terminal, keeping the conversation; /reset, /params, /quit; Ctrl-C stops one reply.

    Args:
        model: embedded name (smollm2-135m-instruct), hub id, model folder, or a LoRA adapter folder from Module 6.
        adapter: a LoRA adapter folder to apply on top of --model.
        weights: fp32, bf16, int8 or nf4.
        system: an optional system message, kept across /reset.
        temperature: 0 = greedy; higher = more varied.
        top_k: sample among the k most likely tokens (0 = no limit).
        top_p: sample among the most likely tokens that make up probability p (1 = no limit).
        repetition_penalty: >1 makes repeating a token less likely (1 = off).
        max_new_tokens: most tokens per reply.
        seed: seed for sampling.
        device: auto, cpu, cuda or cuda:N.
        trust_remote_code: allow model code from the hub (off unless you trust the repo).
    """
    engine = GenerationEngine.load(model, adapter, weights, device, trust_remote_code)
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed)
    print(f"{engine.describe()}\n{CHAT_HELP}")
    ChatSession(engine, params, system).run(input, sys.stdout)


SETTABLE = {"temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float, "max_new_tokens": int,
            "seed": int}  # fmt: skip


class ChatSession:
    """The terminal chat loop, with ``read`` (``input``) and ``out`` passed in so tests can drive it."""

    def __init__(self, engine: GenerationEngine, params: SamplingParams, system: str | None = None) -> None:
        self.engine, self.params, self.system = engine, params, system
        self.history: list[dict[str, str]] = []

    def messages(self) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def run(self, read: Callable[[str], str], out: TextIO) -> None:
        while True:
            try:
                line = read("you> ").strip()
            except EOFError:
                return
            except KeyboardInterrupt:  # like Python's prompt: Ctrl-C at the prompt clears the line
                print("\n(Ctrl-C: use /quit or Ctrl-D to leave)", file=out)
                continue
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line, out):
                    return
                continue
            self.reply(line, out)

    def command(self, line: str, out: TextIO) -> bool:
        """Run a /command; True means quit."""
        name, *args = line.split()
        if name == "/quit":
            return True
        if name == "/reset":
            self.history.clear()
            print("(conversation cleared)", file=out)
        elif name == "/params":
            self.set_params(args, out)
        else:
            print(f"unknown command {name!r}. {CHAT_HELP}", file=out)
        return False

    def set_params(self, assignments: list[str], out: TextIO) -> None:
        from llm_course.inference.sampling import InvalidRequest

        current = self.params.as_dict()
        for item in assignments:
            key, _, value = item.partition("=")
            if key not in SETTABLE or not value:
                print(f"(cannot set {item!r}: use NAME=VALUE with NAME one of {', '.join(SETTABLE)})", file=out)
                return
            kind = SETTABLE[key]
            try:
                current[key] = kind(value)
                candidate = SamplingParams(**current).check(0, self.engine.context_length)
            except (ValueError, InvalidRequest) as err:
                print(f"(not changed: {err})", file=out)
                return
            self.params = candidate
        print("  ".join(f"{k}={v}" for k, v in self.params.as_dict().items()), file=out)

    def reply(self, text: str, out: TextIO) -> None:
        from llm_course.inference.sampling import InvalidRequest

        self.history.append({"role": "user", "content": text})
        try:
            generation = self.engine.stream(self.messages(), self.params)
        except InvalidRequest as err:
            self.history.pop()
            print(f"({err}; /reset starts over)", file=out)
            return
        print("bot> ", end="", file=out, flush=True)
        try:
            for piece in generation:
                print(piece, end="", file=out, flush=True)
        except KeyboardInterrupt:  # stop this reply, keep the session
            generation.cancel()
            generation.wait()
        print(f"\n({generation.stats.line()})", file=out)
        self.history.append({"role": "assistant", "content": generation.text})
