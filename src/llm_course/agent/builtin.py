"""The tools ``llm-course agent`` ships: search_notes (Module 8's retriever over the course notes, with citations),
classify_sentiment (Module 3's classifier or the desk's fallback), calculate (safe arithmetic) and the support
desk's tools; the prompt that introduces them; and the keyword-rule baseline agent."""

import re
import time
from typing import Any

from llm_course.agent.calculate import calculate
from llm_course.agent.loop import FINAL, FINAL_TOOL, result_message
from llm_course.agent.policy import Decision, Example, rule_decision
from llm_course.agent.tools import MAX_STRING, Tool, tool

INTRO = ("You are an assistant that uses tools. For each task call the tool that helps, read its result, then "
         f"give the answer with {FINAL}. Use calculate for arithmetic and search_notes for questions about the "
         "course notes.")  # fmt: skip
EXAMPLES: list[Example] = [  # written for the prompt; none is an evaluation task
    ("What is 15 * 4 + 2?", "calculate", {"expression": "15 * 4 + 2"}),
    (result_message("calculate", 62)["content"], FINAL, {"answer": "15 * 4 + 2 = 62"}),
    ("What do the course notes say about seeding?", "search_notes", {"query": "seeding and reproducibility"}),
    (result_message("search_notes", {"answer": "Seed every random generator with one call [1].",
                                     "citations": ["[1] notes/01_pytorch_basics.md#seeding-and-reproducibility"]})
     ["content"], FINAL, {"answer": "Seed every random generator with one call (notes/01_pytorch_basics.md)."}),
    ("Is this review positive: 'The kettle broke after a day.'?", "classify_sentiment",
     {"text": "The kettle broke after a day."}),
    ("Where is order 1003?", "lookup_order", {"order_id": 1003}),
]  # fmt: skip


def notes_tool(qa: Any) -> Tool:
    """``search_notes`` over a :class:`~llm_course.rag.answer.NotesQA` (extractive answers, with citations)."""

    def search_notes(query: str) -> dict[str, Any]:
        """Search the course notes; returns the sentences that answer, with their sources.

        Args:
            query: what to look for in the notes.
        """
        answer = qa.ask(query)
        cited = [] if answer.abstained else [f"[{p.n}] {p.citation()}" for p in answer.passages]
        return {"answer": answer.text, "abstained": answer.abstained, "citations": cited}

    return tool(search_notes)


def sentiment_tool(classifier: Any) -> Tool:
    """``classify_sentiment`` with a desk classifier (``predict(texts) -> list[Sentiment]``)."""

    def classify_sentiment(text: str) -> dict[str, Any]:
        """Classify the sentiment of a text (positive, neutral, negative or angry), with the confidence.

        Args:
            text: the text to classify.
        """
        s = classifier.predict([text])[0]
        return {"label": s.label, "confidence": round(s.confidence, 3), "classifier": s.classifier}

    return tool(classify_sentiment)


CALCULATE: Tool = tool(calculate)


def agent_tools(qa: Any, classifier: Any, desk: list[Tool]) -> list[Tool]:
    """Every tool of the agent, ``final_answer`` last."""
    return [notes_tool(qa), CALCULATE, sentiment_tool(classifier), *desk, FINAL_TOOL]


ARITHMETIC = re.compile(r"[-+(]*\d[\d.,\s]*(?:\s*(?:[-+*/^x×%]|\*\*)\s*[-+(]*\d[\d.]*\)*)+")
QUOTED = re.compile(r"['\"“‘](.+?)['\"”’]")


class KeywordAgent:
    """The keyword-rule baseline: an arithmetic expression in the task → calculate it; "order N" → look it up;
    a quoted text with "positive"/"negative"/"sentiment" → classify it; anything else → search the notes with the
    task itself. After one result, it answers with that result."""

    label = "keyword rules"

    def decide(self, history: list[dict[str, str]], max_seconds: float | None = None) -> Decision:
        start, last = time.perf_counter(), history[-1]["content"]
        if last.startswith("Result of "):
            return rule_decision(FINAL, {"answer": last.partition(": ")[2].split("\nCall another tool")[0]}, start)
        if match := ARITHMETIC.search(last):
            expression = match.group(0).replace("x", "*").replace(",", "").strip()
            return rule_decision("calculate", {"expression": expression}, start)
        if order := re.search(r"\border\D{0,8}(\d{3,6})", last, re.I):
            return rule_decision("lookup_order", {"order_id": int(order.group(1))}, start)
        if (quoted := QUOTED.search(last)) and re.search(r"positive|negative|sentiment|angry", last, re.I):
            return rule_decision("classify_sentiment", {"text": quoted.group(1)}, start)
        return rule_decision("search_notes", {"query": last[:MAX_STRING]}, start)
