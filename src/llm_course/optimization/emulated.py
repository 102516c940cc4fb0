"""What ``llm-course bench precision`` does about bf16 on a CPU that emulates it, and how long it expects to run.

Without AVX512-BF16 or AMX units oneDNN emulates bf16 matmuls: on an AVX2-only AMD EPYC a bf16 training step of
MiniLM took 8 to 19 times an fp32 one, and the benchmark ran about an hour without a word. :class:`EmulatedBf16` decides
the steps of those rows (``--emulated_bf16``: ``fewer``, ``skip`` or ``full``) and says why in the JSON;
:class:`Clock` prints the plan before the first run and the expected duration after it.
"""

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llm_course.optimization.rows import Row

EMULATED = "bf16 is emulated on this CPU (no AVX512-BF16/AMX units)"


def bf16_matmul_slowdown(seconds: float = 0.25) -> float:
    """How many times as long a bf16 matmul takes as an fp32 one here: a probe of about ``2 × seconds``.

    The shapes are a MiniLM feed-forward matmul on 512 tokens. About 1 (or less) where bf16 runs in hardware; on a
    CPU that emulates bf16 (no AVX512-BF16/AMX) it is the first hint of how slow the bf16 rows will be.
    """
    import torch

    x, w = torch.randn(512, 384), torch.randn(384, 1536)

    def per_call(a: torch.Tensor, b: torch.Tensor) -> float:
        a @ b  # the first call pays for oneDNN's kernel choice
        calls, start = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < seconds:
            a @ b
            calls += 1
        return (time.perf_counter() - start) / calls

    return per_call(x.bfloat16(), w.bfloat16()) / per_call(x, w)


@dataclass(frozen=True)
class EmulatedBf16:
    """The bf16 rows' steps on a CPU that emulates bf16 (where it does not, every row runs ``steps``).

    Args:
        emulated: this run is on a CPU without bf16 units.
        mode: ``fewer`` (a quarter of ``steps``, at least two timed steps), ``skip`` or ``full``.
        steps: the other rows' optimizer steps.
        warmup_steps: steps left out of the throughput.
        slowdown: a bf16 matmul's time over an fp32 one's here (:func:`bf16_matmul_slowdown`; 1.0 where it was
            not probed).
    """

    emulated: bool
    mode: str
    steps: int
    warmup_steps: int
    slowdown: float = 1.0

    @property
    def few(self) -> int:
        return min(self.steps, max(self.warmup_steps + 2, math.ceil(self.steps / 4)))

    @property
    def row_steps(self) -> int | None:
        """The emulated rows' steps (0: skipped), ``None`` where nothing is emulated."""
        return None if not self.emulated else 0 if self.mode == "skip" else self.steps_of(Row("lightning", "bf16-true"))

    def applies(self, row: Row) -> bool:
        return self.emulated and row.precision.startswith("bf16")

    def steps_of(self, row: Row) -> int:
        return self.few if self.applies(row) and self.mode == "fewer" else self.steps

    def settings(self, row: Row, c: dict[str, Any]) -> dict[str, Any]:
        """The run settings of ``row``: its steps, and one epoch of that many batches (so that it still validates)."""
        n = self.steps_of(row)
        return {**c, "steps": n, "samples": n * c["batch_size"]}

    def skip_reason(self, row: Row) -> str | None:
        """Why ``row`` is not run (``--emulated_bf16=skip``), or ``None``."""
        if self.applies(row) and self.mode == "skip":
            return f"{EMULATED}, a matmul {self.slowdown:.1f}x slower than fp32 here: not run (--emulated_bf16=skip)"
        return None

    def steps_reason(self, row: Row) -> str | None:
        """The JSON's ``steps_reason`` of an emulated row: its steps and what they mean for its numbers."""
        if not self.applies(row):
            return None
        if self.mode == "skip":
            return self.skip_reason(row)
        if self.mode == "full":
            return f"{EMULATED}: all {self.steps} steps (--emulated_bf16=full)"
        return (f"{EMULATED}: {self.few} of {self.steps} steps (--emulated_bf16=fewer), so its speed comes from "
                f"{self.few - self.warmup_steps} timed steps and its F1 and loss, after {self.few} steps, do not "
                f"compare with the {self.steps}-step rows")  # fmt: skip

    def plan_text(self, plan: list[list[Row]], compiled_runs: int, rows: list[Row]) -> str:
        """The lines printed before the first run: the runs, their steps, and which rows are emulated bf16."""
        counts = Counter(row.name for rnd in plan for row in rnd)
        runs = ", ".join(f"{n} ×{k}" if k > 1 else n for n, k in counts.items())
        then = f", then the compiled fastest row ×{compiled_runs}" if compiled_runs else ""
        text = f"bench precision: {sum(counts.values()) + compiled_runs} runs of {self.steps} steps: {runs}{then}."
        emulated = [row.name for row in rows if self.applies(row)]
        if emulated:
            what = {"fewer": f"run {self.few} of {self.steps} steps (--emulated_bf16=fewer; =full runs them all, "
                             "=skip none)",
                    "full": f"run all {self.steps} steps (--emulated_bf16=full; =fewer would run {self.few})",
                    "skip": "are left out (--emulated_bf16=skip)"}[self.mode]  # fmt: skip
            text += (f"\n{EMULATED}: a bf16 matmul took {self.slowdown:.1f}x the fp32 time here; "
                     f"{', '.join(emulated)} {what}.")  # fmt: skip
        return text + "\nThe time estimate follows the first run."


@dataclass
class Clock:
    """How long the benchmark expects to take, from the first (fp32) run's record: its time outside training
    (start, data, validation) once per run, plus its mean step time for every planned step, an emulated-bf16 step
    counted ``slowdown`` times. Said after the first run, and again after the first emulated row, whose measured step
    time then replaces the matmul probe's guess.

    Args:
        cost: per planned run, its steps and whether they are emulated bf16.
        slowdown: an emulated step's cost in fp32 steps (the probe's, until one is measured).
    """

    cost: list[tuple[int, bool]]
    slowdown: float
    start: float = field(default_factory=time.perf_counter)
    probed: bool = True

    def after(self, record: dict[str, Any], first: dict[str, Any], emulated: bool, done: int) -> str | None:
        """The line to print after run number ``done`` (``record``), or ``None``."""
        if done > 1:
            if not (emulated and self.probed and record.get("timing") and first.get("timing")):
                return None
            self.probed = False
            self.slowdown = record["timing"]["median_step_seconds"] / first["timing"]["median_step_seconds"]
        return self.text(first, time.perf_counter() - self.start)

    def text(self, first: dict[str, Any], elapsed: float) -> str:
        t = first.get("timing")
        if not t:
            return f"no time estimate: the first run did not finish ({first.get('status')})"
        step = t["train_seconds"] / len(first["step_end_seconds"])
        fixed = max(first["wall_seconds"] - t["train_seconds"], 0.0)
        total = sum(fixed + k * step * (self.slowdown if slow else 1.0) for k, slow in self.cost)
        basis = f"the first run took {first['wall_seconds']:.0f} s, {step:.2f} s a step"
        if any(slow for _, slow in self.cost):
            source = "from the matmul probe" if self.probed else "as measured"
            basis += f"; an emulated bf16 step counted {self.slowdown:.1f}x, {source}"
        label = "time estimate" if self.probed else "time estimate revised"
        return (f"{label}: about {minutes(total)} in all, {minutes(max(total - elapsed, 0.0))} left ({basis}; "
                "compile time not counted)")  # fmt: skip


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
