"""``llm-course tour``: every module in a short run, one progress line per step, then the report.

Each step's own output (Lightning's, the subprocesses') goes to ``<output_dir>/logs/<step>.log``; the terminal gets a
line when a step starts and one when it ends, with its status, time and headline. A step that fails is reported (a
user error by its message alone, any other error with its traceback in the log) and the tour goes on; a step that
needs a failed one is skipped, saying which.
"""

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from llm_course.errors import ConfigError

STEPS: dict[str, str] = {  # name: title, in the order they run
    "m1_linreg": "Module 1 · linear regression, a hand-written loop and the Trainer",
    "m2_cnn": "Module 2 · a CNN on the embedded MNIST digits",
    "m3_text": "Module 3 · sentiment classification with MiniLM",
    "m4_training": "Module 4 · precision auto, gradient clipping and accumulation",
    "m5_ddp": "Module 5 · DDP on 2 CPU processes (gloo)",
    "m6_lora": "Module 6 · LoRA fine-tune of SmolLM2, then merge",
    "m7_serve": "Module 7 · the merged model behind the OpenAI-compatible API",
    "m7_onnx": "Module 7 · ONNX export of the Module 3 classifier",
    "m8_rag": "Module 8 · a question over the notes, answered with citations",
}
TINY_TITLES = {"m3_text": "Module 3 · sentiment classification with a tiny BERT",
               "m6_lora": "Module 6 · LoRA fine-tune of a tiny Llama, then merge"}  # fmt: skip


@dataclass
class StepResult:
    name: str
    title: str
    status: Literal["ok", "failed", "skipped"]
    seconds: float
    headline: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    plot: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    log: str = ""


@contextlib.contextmanager
def captured(log: Path, enabled: bool = True) -> Iterator[None]:
    """Send everything written to stdout and stderr (Python's, C libraries', subprocesses') to ``log``."""
    if not enabled:
        yield
        return
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a", encoding="utf-8") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
        finally:
            for stream in (sys.__stdout__, sys.__stderr__, f):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def attempt(step: Callable[[Any], dict[str, Any]], tour: Any) -> tuple[str, dict[str, Any], str | None]:
    """Run one step: ``(status, its dict, error)``. A traceback, where there is one, goes to the step's log."""
    from llm_course.cli import user_error_in
    from llm_course.tour.processes import StepError
    from llm_course.tour.steps import Skipped

    try:
        result = step(tour)
    except Skipped as err:
        return "skipped", {}, str(err)
    except SystemExit as err:  # a command line jsonargparse refused: it printed why (to the log)
        return "failed", {}, f"a command line did not parse (exit code {err.code}); the log says why"
    except Exception as err:
        mistake = user_error_in(err)
        if mistake is not None or isinstance(err, StepError):
            print(f"error: {mistake or err}", file=sys.stderr)
            return "failed", {}, str(mistake or err)
        traceback.print_exc()
        return "failed", {}, f"{type(err).__name__}: {err} (traceback in the log)"
    return "ok", result, None


def run_tour(
    output_dir: str | Path = "outputs/tour",
    tiny: bool = False,
    imdb_dir: str | None = None,
    steps: list[str] | None = None,
    verbose: bool = False,
) -> list[StepResult]:
    """Run the steps in order, print a line as each starts and ends, write the report, and return the results.

    Raises:
        ConfigError: ``steps`` names a step that does not exist.
    """
    from llm_course.tour import report
    from llm_course.tour import steps as library

    unknown = sorted(set(steps or []) - set(STEPS))
    if unknown:
        raise ConfigError(f"--steps: {unknown} are not steps of the tour; steps: {', '.join(STEPS)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizers' threads and the DDP step's fork
    out = Path(output_dir).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    tour = library.Tour(out, tiny, imdb_dir)
    chosen = [name for name in STEPS if steps is None or name in steps]
    results: list[StepResult] = []
    started = time.perf_counter()
    for i, name in enumerate(chosen, 1):
        title = TINY_TITLES.get(name, STEPS[name]) if tiny else STEPS[name]
        log = out / "logs" / f"{name}.log"
        log.write_text("")
        say(f"[{i}/{len(chosen)}] {title} (log: {relative(log)})")
        start = time.perf_counter()
        # each step is the function of steps.py named after the prefix: m1_linreg -> steps.linreg
        with captured(log, enabled=not verbose):
            status, found, error = attempt(getattr(library, name.split("_", 1)[1]), tour)
        parts = {k: found[k] for k in ("headline", "metrics", "plot", "files") if k in found}
        seconds = round(time.perf_counter() - start, 1)
        result = StepResult(name, title, status, seconds, error=error, log=str(log), **parts)
        if status == "ok":
            tour.done[name] = found
        say(f"      {status:<7} {result.seconds:6.1f} s  {result.headline or error}")
        results.append(result)
    total = time.perf_counter() - started
    page = report.write(out, results, {"mode": "tiny" if tiny else "default", "imdb_dir": imdb_dir,
                                       "total_seconds": round(total, 1)})  # fmt: skip
    ok = sum(r.status == "ok" for r in results)
    say(f"tour: {ok} of {len(results)} steps ok in {total / 60:.1f} min; report: {relative(page)} (and report.md)")
    return results


def say(line: str) -> None:
    print(line, flush=True)


def relative(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def tour(
    output_dir: str = "outputs/tour",
    tiny: bool = False,
    imdb_dir: str | None = None,
    steps: list[str] | None = None,
    verbose: bool = False,
) -> None:
    """Run every module of the course in a short mode; write OUTPUT_DIR/report.html (figures inline) and report.md.

    Module 1 linear regression (a hand-written loop and the Trainer agree),
    2 a CNN on the embedded MNIST digits, 3 MiniLM sentiment classification, 4 precision auto with gradient clipping
    and accumulation, 5 DDP on 2 CPU processes, 6 a LoRA fine-tune of SmolLM2 and its merge, 7 the merged model
    served and asked with the openai client, and an ONNX export of the Module 3 classifier, 8 a question over the
    notes answered with evidence and citations. The target: 15 minutes on 2 CPU cores; --tiny true: about 2.
    A failing step is reported and the tour goes on; the exit code is 1 when any step did not succeed.

    Args:
        output_dir: where the runs, the logs (logs/STEP.log), tour.json and the report go.
        tiny: tiny models built on the fly (a 2-layer BERT and Llama) and a few steps each: checks that every
            module runs, in about 3 minutes.
        imdb_dir: a folder with the IMDb files (train.jsonl[.gz] + test.jsonl[.gz], e.g. ../shared/data/imdb, or an
            aclImdb/ folder): Module 3 trains on a seeded sample of 2,000 of its reviews (200 for validation) and
            tests on 500. None: the tour's own rule-written reviews (llm_course/tour/reviews.py), which need
            nothing outside the package.
        steps: run only these steps (m1_linreg, m2_cnn, m3_text, m4_training, m5_ddp, m6_lora, m7_serve, m7_onnx,
            m8_rag); a step that needs one left out (m7_serve needs m6_lora, m7_onnx m3_text) is skipped.
        verbose: show each step's own output instead of writing it to logs/STEP.log.
    """
    results = run_tour(output_dir, tiny, imdb_dir, steps, verbose)
    if any(r.status != "ok" for r in results):
        raise SystemExit(1)


def as_dict(result: StepResult) -> dict[str, Any]:
    return {k: v for k, v in asdict(result).items() if k != "plot"}
