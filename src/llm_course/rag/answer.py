"""Grounded answers: retrieve chunks, ask the chat model to answer from them only and cite them, or abstain."""

from dataclasses import dataclass, field
from typing import Any

from llm_course.inference.engine import GenerationEngine, ReplyStats
from llm_course.inference.sampling import SamplingParams
from llm_course.rag.retrieve import Mode, Retrieval, Retriever

# Chosen by `llm-course bench rag` on the validation half of the evaluation set (notes/08): when the retrieval's
# support (Retrieval.support: the cosine, the coverage of the question's words, or their mean) is below MIN_SCORE,
# the notes are taken not to cover the question.
ABSTAIN_ON = "coverage"
DEFAULT_MIN_SCORE = 0.364
MIN_REPLY = 32  # tokens of answer to leave room for when the passages fill a small model's context
ABSTAIN = "The course notes do not cover this question, so I will not guess."
SYSTEM = (
    "You answer questions about a machine-learning course using only the numbered context passages from its notes. "
    "Answer in at most three sentences and cite the passages you use as [1], [2]. "
    "If the passages do not contain the answer, say that the notes do not cover it."
)


@dataclass
class Answer:
    question: str
    text: str
    abstained: bool
    retrieval: Retrieval
    stats: ReplyStats | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question, "answer": self.text, "abstained": self.abstained, "citations": self.sources,
            "best_dense_score": round(self.retrieval.best_dense, 4), "coverage": round(self.retrieval.coverage, 4),
            "retrieval_ms": round(self.retrieval.ms, 2),
            "generation_s": None if self.stats is None else round(self.stats.latency_s, 3),
            "generation": None if self.stats is None else self.stats.as_dict(),
        }  # fmt: skip

    def render(self) -> str:
        """The answer and its numbered sources, for a terminal."""
        lines = [self.text, ""] + [f"[{s['n']}] {s['citation']}  (score {s['score']:.3f})" for s in self.sources]
        return "\n".join(lines)


def sources_of(retrieval: Retrieval) -> list[dict[str, Any]]:
    return [{"n": n, "citation": h.chunk.citation(), "anchor": h.chunk.anchor, "file": h.chunk.file,
             "heading": h.chunk.heading, "lines": [h.chunk.start_line, h.chunk.end_line], "score": round(h.score, 4),
             "text": h.chunk.text} for n, h in enumerate(retrieval.hits, start=1)]  # fmt: skip


def grounded_messages(question: str, retrieval: Retrieval) -> list[dict[str, str]]:
    """The chat: instructions, then the numbered passages and the question."""
    context = "\n\n".join(f"[{n}] ({h.chunk.anchor})\n{h.chunk.text}" for n, h in enumerate(retrieval.hits, start=1))
    user = f"Context passages:\n\n{context}\n\nQuestion: {question}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


class NotesQA:
    """Question answering over an index with a chat model (Module 7's engine: base, or with a LoRA adapter)."""

    def __init__(self, retriever: Retriever, engine: GenerationEngine | None, mode: Mode = "hybrid", top_k: int = 3,
                 min_score: float = DEFAULT_MIN_SCORE, params: SamplingParams | None = None,
                 abstain_on: str = ABSTAIN_ON) -> None:  # fmt: skip
        self.retriever, self.engine, self.mode, self.top_k, self.min_score = retriever, engine, mode, top_k, min_score
        self.abstain_on = abstain_on
        self.params = params or SamplingParams(temperature=0, max_new_tokens=160, repetition_penalty=1.1)

    def retrieve(self, question: str) -> tuple[Retrieval, bool]:
        """The retrieval, and whether to abstain (its support is below ``min_score``)."""
        retrieval = self.retriever.search(question, self.mode, self.top_k)
        return retrieval, retrieval.support(self.abstain_on) < self.min_score

    def ask(self, question: str) -> Answer:
        retrieval, abstain = self.retrieve(question)
        sources = sources_of(retrieval)
        if abstain or self.engine is None:
            return Answer(question, ABSTAIN if abstain else "", abstain, retrieval, None, sources)
        messages, params = self.fit_context(question, retrieval)
        text, stats = self.engine.generate(messages, params)
        return Answer(question, text.strip(), False, retrieval, stats, sources)

    def fit_context(self, question: str, retrieval: Retrieval) -> tuple[list[dict[str, str]], SamplingParams]:
        """The grounded chat and sampling settings that fit the model's context: passages are dropped from the last
        while the prompt leaves fewer than ``MIN_REPLY`` tokens, and the reply is cut to what room is left."""
        from dataclasses import replace

        limit, hits = self.engine.context_length, list(retrieval.hits)
        while True:
            messages = grounded_messages(question, replace(retrieval, hits=hits))
            room = limit - len(self.engine.prompt_ids(messages))
            if room >= min(MIN_REPLY, self.params.max_new_tokens) or len(hits) <= 1:
                return messages, replace(self.params, max_new_tokens=max(1, min(self.params.max_new_tokens, room)))
            hits = hits[:-1]
