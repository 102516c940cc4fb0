"""The agent loop: the model calls tools until it gives a final answer, bounded in steps and in seconds.

Each step: the policy chooses a call; ``final_answer`` ends the run; any other call runs through the
:class:`~llm_course.agent.tools.ToolBox` (an error or a timeout comes back as a result the model reads) and its
result is added to the conversation. The run also ends when the model repeats a call it already made (its result
would not change: a loop that would not end), after ``max_steps`` calls, or once ``max_seconds`` have passed; then
the answer is the last tool result, said as such.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from llm_course.agent.messages import FINAL, render_call, result_message, short
from llm_course.agent.policy import Decision, Policy
from llm_course.agent.tools import Tool, ToolBox, tool

Stop = Literal["answer", "max_steps", "max_seconds", "repeated_call"]


def final_answer(answer: str) -> str:
    """Give the final answer to the task and stop.

    Args:
        answer: the answer, in one or two sentences, with the numbers or sources the tools returned.
    """
    return answer


FINAL_TOOL: Tool = tool(final_answer, name=FINAL)


@dataclass
class Step:
    """One call: what the model asked for, what came back, and the time of each part."""

    n: int
    decision: Decision
    result: Any = None
    error: str | None = None
    tool_s: float = 0.0

    @property
    def tool(self) -> str | None:
        return self.decision.name

    def line(self) -> str:
        """``[2] calculate {"expression": "3*4"} → 12  (model 0.84 s, tool 0.00 s)``"""
        d = self.decision
        call = f"{d.name} {json.dumps(d.arguments, ensure_ascii=False)}" if d.valid else f"invalid call {d.raw!r}"
        shown = f"error: {self.error}" if self.error else short(self.result, 200)
        return f"[{self.n}] {call} → {shown}  (model {d.seconds:.2f} s, tool {self.tool_s:.2f} s)"

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.n, "tool": self.tool, "arguments": self.decision.arguments, "result": self.result,
                "error": self.error, "model_s": round(self.decision.seconds, 3), "tool_s": round(self.tool_s, 3),
                "call": self.decision.as_dict()}  # fmt: skip


@dataclass
class AgentRun:
    task: str
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None
    stopped: Stop = "max_steps"
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "answer": self.answer, "stopped": self.stopped, "seconds": round(self.seconds, 3),
                "steps": [s.as_dict() for s in self.steps]}  # fmt: skip


def run_agent(task: str, policy: Policy, toolbox: ToolBox, max_steps: int = 4, max_seconds: float = 60.0,
              on_step: Callable[[Step], None] | None = None) -> AgentRun:  # fmt: skip
    """Let ``policy`` call the tools of ``toolbox`` (and ``final_answer``) to do ``task``.

    Args:
        task: what the user asked.
        policy: chooses each call (a model, constrained or not, or a keyword rule).
        toolbox: the tools; each call is bounded by its timeout and by the seconds left.
        max_steps: most calls, ``final_answer`` included.
        max_seconds: wall-clock budget of the whole run, model time included (a reply still being generated at
            the deadline is cut there).
        on_step: called after each step (the CLI prints it).
    """
    start, run = time.perf_counter(), AgentRun(task)
    history: list[dict[str, str]] = [{"role": "user", "content": task}]
    seen: set[str] = set()
    last_ok: Any = None
    for n in range(1, max_steps + 1):
        left = max_seconds - (time.perf_counter() - start)
        if left <= 0:
            run.stopped = "max_seconds"
            break
        decision = policy.decide(history, max_seconds=left)
        step = Step(n, decision)
        if not decision.valid:
            step.error = "invalid call: " + "; ".join(decision.problems or ["no call"])
            history += [{"role": "assistant", "content": decision.raw},
                        {"role": "user", "content": f"{step.error}. Write one valid JSON call."}]  # fmt: skip
        elif decision.name == FINAL:
            run.answer, run.stopped, step.result = decision.arguments.get("answer", ""), "answer", "(final answer)"
        else:
            key = json.dumps([decision.name, decision.arguments], sort_keys=True)
            if key in seen:
                step.error, run.stopped = "repeated call: its result is above", "repeated_call"
            else:
                seen.add(key)
                left = max_seconds - (time.perf_counter() - start)
                result = toolbox.call(decision.name, decision.arguments, timeout=min(toolbox.timeout, max(left, 0)))
                step.result, step.error, step.tool_s = result.value, result.error, result.seconds
                last_ok = result.value if result.ok else last_ok
                history += [{"role": "assistant", "content": render_call(decision.name, decision.arguments)},
                            result_message(decision.name, result.for_model())]  # fmt: skip
        run.steps.append(step)
        if on_step is not None:
            on_step(step)
        if run.stopped in ("answer", "repeated_call"):
            break
    else:
        run.stopped = "max_steps"
    if run.answer is None and last_ok is not None:
        run.answer = f"(no final answer; the last tool result) {short(last_ok, 400)}"
    run.seconds = time.perf_counter() - start
    return run
