"""The ``llm-course`` command: a table of subcommands, each imported only when it runs.

``fit/validate/test/predict`` go to LightningCLI (:mod:`llm_course.trainer_cli`); the others are typed
functions parsed by jsonargparse (so ``--config`` works for them too), named here by import path. The top-level
help and the commands that do not train import neither Lightning nor the training code.
"""

import importlib
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from llm_course.bench import BENCHMARKS
from llm_course.errors import UserError

TRAINER_COMMANDS = {
    "fit": "train a task from its YAML config (llm-course fit --config configs/linreg.yaml)",
    "validate": "score a checkpoint on the validation split",
    "test": "score a checkpoint on the test split, writing metrics.json",
    "predict": "run a checkpoint on new inputs",
}
COMMANDS: dict[str, str | dict[str, str]] = {
    "env": "llm_course.envinfo:env",
    "merge": "llm_course.sft.lora:merge",
    "generate": "llm_course.inference.commands:generate",
    "chat": "llm_course.inference.commands:chat",
    "serve": "llm_course.inference.serve:serve",
    "rag": {
        "index": "llm_course.rag.commands:index",
        "search": "llm_course.rag.commands:search",
        "ask": "llm_course.rag.commands:ask",
        "raft-data": "llm_course.rag.raft:raft_data",
    },
    "export": {"onnx": "llm_course.export.onnx:onnx", "predict": "llm_course.export.onnx_classifier:predict"},
    "agent": "llm_course.agent.commands:agent",
    "support": "llm_course.agent.commands:support",
    "agent-data": "llm_course.agent.tooluse_data:agent_data",
    "tour": "llm_course.tour.command:tour",
    "bench": BENCHMARKS,
}
HELP = {
    "env": "machine report: Python, torch, CUDA/cuDNN, devices, library versions, threads, memory, seed",
    "merge": "fold a LoRA adapter into its base model and save a plain Hugging Face folder",
    "generate": "answer one prompt with a chat model, streaming, with its timings (--json for a machine)",
    "chat": "chat with a model in the terminal (/reset, /params, /quit; Ctrl-C stops a reply)",
    "serve": "serve a model: a Gradio chat page and an OpenAI-compatible API on 127.0.0.1",
    "export": "export onnx: the Module 3 classifier as ONNX, checked with onnxruntime; export predict: score with it",
    "rag": "questions over the course notes: rag index (chunk + embed), rag search, rag ask (answer with citations), "
    "rag raft-data (training data for the grounded-answer LoRA)",
    "agent": "do a task with tools (search_notes, calculate, classify_sentiment, desk tools), printing each step",
    "support": "the support desk of a fictional shop: sentiment, tool trace, cited reply or hand-over to a person",
    "agent-data": "training data for a tool-use LoRA in the agent's and the desk's chat format (agent_lora.yaml)",
    "tour": "every module in a short run on the embedded assets, with a Markdown and a self-contained HTML report",
    "bench": f"run a benchmark, writing JSON and a figure: {', '.join(BENCHMARKS)}",
}


def load(target: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` and return the function."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def usage() -> str:
    rows = {**TRAINER_COMMANDS, **HELP}
    width = max(map(len, rows))
    lines = "\n".join(f"  {name:<{width}}  {text}" for name, text in rows.items())
    return (
        "usage: llm-course COMMAND [options]\n\n"
        "An offline-first PyTorch Lightning course through the LLM pipeline: data, model, train, infer, deploy.\n\n"
        f"commands:\n{lines}\n\n"
        "Every command takes --help (llm-course fit --help lists every option of every task) and --config FILE."
    )


def run_function_command(argv: list[str]) -> Any:
    """Parse ``argv`` for one of :data:`COMMANDS` with jsonargparse, importing only what runs."""
    from jsonargparse import auto_cli

    name, target = argv[0], COMMANDS[argv[0]]
    if isinstance(target, dict):  # a group: import only the chosen member, or all of them for help
        chosen = argv[1] if len(argv) > 1 and argv[1] in target else None
        members = {chosen: target[chosen]} if chosen else target
        functions: dict[str, Any] = {name: {k: load(v) for k, v in members.items()}}
    else:
        functions = {name: load(target)}
    return auto_cli(functions, args=argv, as_positional=False)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``llm-course``; ``args`` defaults to ``sys.argv[1:]`` (tests pass a list).

    A :class:`~llm_course.errors.UserError` (a mistake the message explains) prints in one line; any other
    exception is a bug and keeps its traceback. ``LLM_COURSE_DEBUG=1`` shows tracebacks for both.
    """
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own use of a deprecated torch API
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    try:
        if argv[0] in TRAINER_COMMANDS:
            from llm_course.trainer_cli import CourseCLI

            CourseCLI(args=None if args is None else argv)
        elif argv[0] in COMMANDS:
            run_function_command(argv)
        else:
            raise UserError(f"unknown command {argv[0]!r}; commands: {', '.join([*TRAINER_COMMANDS, *COMMANDS])}")
    except Exception as err:
        mistake = user_error_in(err)
        if mistake is None or os.environ.get("LLM_COURSE_DEBUG"):
            raise
        print(f"error: {mistake}\n(set LLM_COURSE_DEBUG=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def user_error_in(err: BaseException) -> UserError | None:
    """The :class:`UserError` that ``err`` is or wraps: jsonargparse re-raises an error from a class's
    ``__init__`` as its own ``ValueError``, with the original as the cause."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    main()
