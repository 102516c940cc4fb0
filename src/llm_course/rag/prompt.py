"""The grounded chat a model answers from: instructions, numbered passages, the question.

One place for the format, shared by the answers (:mod:`llm_course.rag.answer`) and the data the grounded-answer
LoRA is trained on (:mod:`llm_course.rag.raft`), so the adapter sees at inference exactly what it learned from.
"""

import re

SYSTEM = (
    "You answer questions about a machine-learning course using only the numbered context passages from its notes. "
    "Answer in at most three sentences and cite the passages you use as [1], [2]. "
    "If the passages do not contain the answer, say that the notes do not cover it."
)
NOT_COVERED = "The passages do not cover this question."
MARKER = re.compile(r"\s?\[(\d+)\]")


def grounded_messages(question: str, passages: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The chat for ``question`` over ``passages``, given as ``(source, text)`` pairs numbered from 1."""
    context = "\n\n".join(f"[{n}] ({source})\n{text}" for n, (source, text) in enumerate(passages, start=1))
    user = f"Context passages:\n\n{context}\n\nQuestion: {question}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def cited(text: str) -> list[int]:
    """The passage numbers ``[n]`` that ``text`` cites, in order of first mention."""
    return list(dict.fromkeys(int(m.group(1)) for m in MARKER.finditer(text)))


def keep_markers(text: str, allowed: int) -> str:
    """``text`` with every ``[n]`` outside ``1..allowed`` removed (a marker of a passage the model was not given)."""
    return MARKER.sub(lambda m: m.group(0) if 1 <= int(m.group(1)) <= allowed else "", text)
