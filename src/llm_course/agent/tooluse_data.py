"""Training data for a tool-use LoRA: ``llm-course agent-data`` writes chat records in exactly the format that
:class:`~llm_course.agent.policy.ModelPolicy` sends at inference, for Module 6's pipeline (``configs/agent_lora.yaml``).

Each record's ``messages`` are the system prompt (:func:`~llm_course.agent.messages.system_prompt` of the agent's
INTRO and tools, or of the desk's), in a few records the few-shot turns the policy can prepend, the conversation so
far (the task; for a second step also the first call, rendered by ``render_call``, and the tool's result as
``result_message`` words it), and last the target: one call, rendered by ``render_call``. The loss is on that last
reply only (``data.loss_on: last_reply``). Kinds and their shares are :data:`MIX`: arithmetic → ``calculate`` with
the expression, then ``final_answer`` with its value; questions on the notes (topics from the headings of
``notes/*.md``) → ``search_notes``, then ``final_answer`` quoting the answer and its file; quoted texts →
``classify_sentiment``; order numbers → ``lookup_order``, while calculations whose numbers look like order numbers
still go to ``calculate``; shop questions → ``search_help`` with the message; anger, payment details and requests
out of scope → ``hand_over``. Every task is unique and none is the text, or a near copy, of an evaluation task
(``agent_tasks.jsonl``) or message (``desk/messages.jsonl``): see :func:`too_close`.
"""

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llm_course.agent import tooluse_templates as T
from llm_course.agent.calculate import calculate
from llm_course.agent.messages import FINAL, render_call, result_message, system_prompt
from llm_course.agent.policy import Example, example_turns
from llm_course.agent.tools import MAX_STRING, Tool
from llm_course.errors import ConfigError, MissingFileError

Context = Literal["agent", "desk"]
MIX: dict[str, float] = {  # kind → share of the records; "_answer" kinds are the step after the tool's result
    "calculate": 0.24, "calculate_answer": 0.10, "search_notes": 0.20, "notes_answer": 0.08,
    "classify_sentiment": 0.06, "sentiment_answer": 0.02, "lookup_order": 0.06, "order_answer": 0.02,
    "search_help": 0.04, "desk_search_help": 0.08, "desk_lookup_order": 0.05, "desk_hand_over": 0.05,
}  # fmt: skip
CONTRAST_SHARE = 0.25  # of the arithmetic tasks: numbers in 1001-1100 (and sometimes the word "order")
OFF_NOTES_SHARE = 0.15  # of the notes answers: the notes abstain, and the answer says so
MAX_JACCARD = 0.6  # word-set overlap with an evaluation text above which a task is a near copy
SKIP_HEADINGS = {"results", "the demo", "measured", "measured here", "how it grows"}


@dataclass(frozen=True)
class Topic:
    """A section of the notes: the words a learner would ask about, and what ``search_notes`` would return."""

    query: str
    file: str  # notes/04_training_optimization.md
    citation: str  # notes/04_training_optimization.md#gradient-clipping (lines 126-146)
    sentence: str | None  # the section's first sentence of prose


def note_topics(notes: str) -> list[Topic]:
    """One topic per ``##``-or-deeper heading of the numbered notes (``NN_*.md``) under ``notes``.

    Raises:
        MissingFileError: ``notes`` is not a folder with numbered notes.
    """
    from llm_course.rag.chunks import sections, split_lines

    files = sorted(Path(notes).glob("[0-9][0-9]_*.md"))
    if not files:
        raise MissingFileError(f"--notes {notes}: no numbered notes (NN_*.md) in it; point it at the course's notes/")
    topics = []
    for path in files:
        lines = split_lines(path.read_text(encoding="utf-8"))
        name = f"{Path(notes).name}/{path.name}"  # notes/NN_*.md as the index cites it, wherever notes/ is
        for headings, fragment, start, end in sections(lines, markdown=True):
            query = re.sub(r"^Measured\w*:\s*|\s*\(.*\)|`", "", headings[-1] if len(headings) > 1 else "").strip()
            if not query or query.lower() in SKIP_HEADINGS or len(query) > 70:
                continue
            first = query.split(" ", 1)[0]
            query = query[0].lower() + query[1:] if first[1:].islower() or len(first) == 1 else query
            citation = f"{name}#{fragment} (lines {start + 1}-{end + 1})"
            topics.append(Topic(query, name, citation, first_sentence(lines[start + 1 : end + 1])))
    return topics


def first_sentence(lines: list[str], limit: int = 150) -> str | None:
    """The first sentence of the first prose paragraph (no code, table, list, quote or heading), markup removed."""
    paragraph, fenced = [], False
    for line in lines:
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        text = line.strip()
        if fenced or not text or text.startswith(("#", "|", "!", "<", ">", "-", "*", "$")) or text[0].isdigit():
            if paragraph:
                break
            continue
        paragraph.append(text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", " ".join(paragraph)).replace("**", "").replace("`", "")
    sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)[0] if text else ""
    if len(sentence) > limit:
        sentence = sentence[: sentence.rfind(" ", 0, limit)] + "…"
    return sentence or None


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def evaluation_texts() -> list[str]:
    """The evaluation tasks and customer messages of ``bench agent`` (every split)."""
    from llm_course.agent.scoring import load_jsonl

    return [t["task"] for t in load_jsonl("agent_tasks.jsonl")] + [
        m["message"] for m in load_jsonl("messages.jsonl", package="llm_course.agent.desk")]  # fmt: skip


def too_close(text: str, evaluation: list[str]) -> str | None:
    """The evaluation text that ``text`` copies (the same lower-cased, or word-set Jaccard above
    :data:`MAX_JACCARD`), or None."""
    mine = words(text)
    for other in evaluation:
        theirs = words(other)
        if text.strip().lower() == other.strip().lower() or len(mine & theirs) / len(mine | theirs) > MAX_JACCARD:
            return other
    return None


def contexts() -> dict[Context, tuple[str, list[Example], list[Tool]]]:
    """The intro, few-shot examples and tools of the agent (``llm-course agent``, ``bench agent``'s tasks) and of
    the support desk: what their :class:`~llm_course.agent.policy.ModelPolicy` is built with. Tool functions are
    never called here: they only give their signatures."""
    from llm_course.agent.builtin import EXAMPLES, INTRO, agent_tools
    from llm_course.agent.desk import desk

    desk_tools = desk.desk_tools(None, None)  # type: ignore[arg-type]
    tools = agent_tools(None, None, desk_tools)
    return {"agent": (INTRO, EXAMPLES, tools), "desk": (desk.INTRO, desk.EXAMPLES, desk_tools)}


Turns = list[dict[str, str]]
Made = tuple[Context, Turns, str, dict[str, Any], float | None]  # context, conversation, tool, arguments, value


def make(kind: str, rng: random.Random, topics: list[Topic]) -> Made:
    """One example of ``kind``: the conversation before the target call, and the call."""
    if kind.startswith("calculate"):
        maker = T.CONTRAST if rng.random() < CONTRAST_SHARE else rng.choice(T.ARITHMETIC)
        task, expression, stated = maker(rng)
        value = calculate(expression)
        if value != stated:
            raise AssertionError(f"{expression!r} = {value} by calculate, {stated} by its template")
        if kind == "calculate":
            return "agent", user(task), "calculate", {"expression": expression}, float(value)
        shown = json.dumps(value)
        answer = rng.choice([f"{expression} = {shown}", f"The answer is {shown}.", f"It comes to {shown}."])
        return "agent", step(task, "calculate", {"expression": expression}, value), FINAL, {"answer": answer}, value
    if kind in ("search_notes", "notes_answer"):
        off = rng.random() < (OFF_NOTES_SHARE if kind == "notes_answer" else 0.05)
        topic = None if off else rng.choice([t for t in topics if t.sentence] if kind == "notes_answer" else topics)
        query = rng.choice(T.OFF_NOTES) if topic is None else topic.query
        task = rng.choice(T.NOTES_QUESTIONS).format(t=query)
        if kind == "search_notes":
            return "agent", user(task), "search_notes", {"query": query}, None
        from llm_course.rag.answer import ABSTAIN

        if topic is None:
            result: dict[str, Any] = {"answer": ABSTAIN, "abstained": True, "citations": []}
            answer = "The course notes do not cover this."
        else:
            result = {"answer": f"{topic.sentence} [1]", "abstained": False, "citations": [f"[1] {topic.citation}"]}
            answer = f"{topic.sentence} ({topic.file})"
        return "agent", step(task, "search_notes", {"query": query}, result), FINAL, {"answer": answer}, None
    if kind in ("classify_sentiment", "sentiment_answer"):
        label = rng.choice(list(T.COMMENTS))
        comment = rng.choice(T.COMMENTS[label])
        text = f"{rng.choice(T.SUBJECTS)} {comment}" + ("" if comment[-1] in ".!?" else ".")
        task = rng.choice(T.SENTIMENT_QUESTIONS).format(x=text)
        if kind == "classify_sentiment":
            return "agent", user(task), "classify_sentiment", {"text": text}, None
        from llm_course.agent.desk.sentiment import FALLBACK

        confidence = round(rng.uniform(0.55, 0.98), 3)
        result = {"label": label, "confidence": confidence, "classifier": FALLBACK}
        answer = f"The text is {label} (confidence {confidence:.2f})."
        return "agent", step(task, "classify_sentiment", {"text": text}, result), FINAL, {"answer": answer}, None
    if kind in ("lookup_order", "order_answer", "desk_lookup_order"):
        number = rng.randint(1001, 1100) if rng.random() < 0.9 else rng.randint(1101, 9999)
        task = polite(rng, rng.choice(T.ORDER_QUESTIONS).format(n=number))
        context: Context = "desk" if kind.startswith("desk") else "agent"
        if kind != "order_answer":
            return context, user(task), "lookup_order", {"order_id": number}, None
        result, answer = order_result(number)
        return "agent", step(task, "lookup_order", {"order_id": number}, result), FINAL, {"answer": answer}, None
    if kind in ("search_help", "desk_search_help"):
        task = polite(rng, rng.choice(T.HELP_QUESTIONS).format(c=rng.choice(T.COUNTRIES), p=rng.choice(T.PRODUCTS),
                                                                d=rng.randint(10, 40)))  # fmt: skip
        context = "desk" if kind.startswith("desk") else "agent"
        return context, user(task), "search_help", {"query": task[:MAX_STRING]}, None
    if kind == "desk_hand_over":
        reason = rng.choice(["angry", "payment", "not_covered"])
        bank = {"angry": T.ANGRY, "payment": T.PAYMENT, "not_covered": T.NOT_COVERED}[reason]
        task = rng.choice(bank).format(k=rng.randint(3, 9), p=rng.choice(T.PRODUCTS), y=rng.randint(27, 31),
                                       cvv=rng.randint(100, 999), c=rng.choice(T.COUNTRIES))  # fmt: skip
        task = task if reason == "angry" else polite(rng, task)
        return "desk", user(task), "hand_over", {"reason": reason}, None
    raise ConfigError(f"kind {kind!r} is not one of: {', '.join(MIX)}")


def user(task: str) -> Turns:
    return [{"role": "user", "content": task}]


def step(task: str, name: str, arguments: dict[str, Any], result: Any) -> Turns:
    """The conversation after one call, as the agent loop builds it."""
    return [*user(task), {"role": "assistant", "content": render_call(name, arguments)}, result_message(name, result)]


def polite(rng: random.Random, text: str) -> str:
    """``text`` with a greeting before it (or none) and thanks after it (or none)."""
    greeting = rng.choice(T.GREETINGS)
    text = text[0].lower() + text[1:] if greeting.endswith(", ") and not text.startswith(("I ", "I'")) else text
    return greeting + text + rng.choice(T.THANKS)


def order_result(number: int) -> tuple[dict[str, Any], str]:
    """What ``lookup_order`` returns for ``number`` in the seeded orders database, and an answer from it."""
    from llm_course.agent.desk.orders import FIRST, LAST, seed_rows

    if not FIRST <= number <= LAST:
        error = f"there is no order {number}; order numbers run from {FIRST} to {LAST}"
        return {"found": False, "order_id": number, "error": error}, f"There is no order {number}: {error}."
    keys = ["id", "customer", "placed_on", "status", "items", "total_cents", "carrier", "tracking", "expected_on",
            "delivered_on"]  # fmt: skip
    row = dict(zip(keys, seed_rows()[number - FIRST], strict=True))
    row["total"] = f"€{row.pop('total_cents') / 100:.2f}"
    answer = f"Order {number} ({row['items']}) is {row['status']}."
    if row["expected_on"] and row["status"] in ("processing", "shipped", "out for delivery", "delayed"):
        answer += f" Expected delivery: {row['expected_on']}."
    return {"found": True, **{k: v for k, v in row.items() if v is not None}}, answer


def counts(n: int) -> dict[str, int]:
    """Records per kind: ``n`` split by :data:`MIX`, largest remainders first."""
    exact = {k: n * share for k, share in MIX.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: out[k] - exact[k])[: n - sum(out.values())]:
        out[k] += 1
    return out


def build_examples(n: int = 600, seed: int = 0, notes: str = "notes", few_shot: float = 0.1) -> list[dict[str, Any]]:
    """``n`` records, in a seeded order: ``messages`` (ending with the target call), ``kind``, ``context``,
    ``tool``, ``shots`` (few-shot examples shown) and ``value`` (a calculation's value, else null).

    Raises:
        ConfigError: ``n`` is too small, or too many tasks of one kind came out equal or too close to the evaluation.
    """
    if n < len(MIX):
        raise ConfigError(f"--n={n} is below the {len(MIX)} kinds of examples; ask for at least {len(MIX)}")
    rng, topics, evaluation, prompts = random.Random(seed), note_topics(notes), evaluation_texts(), contexts()
    seen: set[str] = set()
    rows = []
    for kind, k in counts(n).items():
        for _ in range(k):
            for _attempt in range(200):
                context, turns, name, arguments, value = make(kind, rng, topics)
                task = turns[0]["content"]
                if task.lower() not in seen and too_close(task, evaluation) is None:
                    break
            else:
                raise ConfigError(f"could not write {k} distinct {kind} tasks that differ from the evaluation; "
                                  "lower --n")  # fmt: skip
            seen.add(task.lower())
            intro, examples, tools = prompts[context]
            shots = example_turns(examples) if rng.random() < few_shot else []
            messages = [{"role": "system", "content": system_prompt(intro, tools)}, *shots, *turns,
                        {"role": "assistant", "content": render_call(name, arguments)}]  # fmt: skip
            rows.append({"messages": messages, "kind": kind, "context": context, "tool": name,
                         "shots": sum(m["role"] == "assistant" for m in shots),
                         "value": None if value is None else float(value)})  # fmt: skip
    rng.shuffle(rows)
    return rows


def agent_data(output_dir: str = "outputs/tooluse", n: int = 600, seed: int = 0, notes: str = "notes",
               val_share: float = 0.1, few_shot: float = 0.1) -> dict[str, Any]:  # fmt: skip
    """Write the tool-use training data: ``train.jsonl``, ``val.jsonl`` (held out from the same generated
    records, never the evaluation messages) and ``tooluse_data.json`` (the counts).

    Args:
        output_dir: where the files go (``configs/agent_lora.yaml`` reads ``outputs/tooluse``).
        n: records in all.
        seed: seeds every choice; the same seed and notes give the same files.
        notes: the course notes whose headings give the topics of the notes questions.
        val_share: share of the records held out for the validation loss.
        few_shot: share of the records that show the policy's few-shot examples before the task (the rest: none).
    """
    from llm_course.reports import atomic_write_text

    if not 0 < val_share < 1:
        raise ConfigError(f"--val_share={val_share} must be between 0 and 1")
    rows = build_examples(n, seed, notes, few_shot)
    n_val = max(1, round(n * val_share))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("val", rows[:n_val]), ("train", rows[n_val:])):
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    summary = {"n": n, "seed": seed, "notes": notes, "train": n - n_val, "val": n_val,
               "kinds": dict(Counter(r["kind"] for r in rows)), "tools": dict(Counter(r["tool"] for r in rows)),
               "few_shot": sum(r["shots"] > 0 for r in rows)}  # fmt: skip
    atomic_write_text(out / "tooluse_data.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary
