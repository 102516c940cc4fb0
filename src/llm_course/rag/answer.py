"""Grounded answers: evidence sentences from the retrieved passages first, then (optionally) the model's own
sentences, each checked against the passages; or an abstention when the notes do not cover the question.

One path for every caller: :meth:`NotesQA.prepare` (retrieve, merge, fit the context, pick the evidence) and
:meth:`NotesQA.finish` (clean the markers, check the generated sentences, compose), with the generation between
them done by ``ask`` (the CLI, the benchmark) or streamed through the server's scheduler (the page).
"""

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from llm_course.errors import ConfigError
from llm_course.inference.engine import GenerationEngine, ReplyStats
from llm_course.inference.sampling import SamplingParams
from llm_course.rag.evidence import Evidence, select_evidence
from llm_course.rag.passages import Passage, merge_hits
from llm_course.rag.prompt import grounded_messages, keep_markers
from llm_course.rag.retrieve import Mode, Retrieval, Retriever
from llm_course.rag.support import MIN_OVERLAP, MIN_SIMILARITY, Checked, check_sentences, generated_sentences

AnswerMode = Literal["extractive", "generate", "both"]
ANSWER_MODES = ("extractive", "generate", "both")
# Chosen by `llm-course bench rag` on the validation half of the evaluation set (notes/08).
DEFAULT_ANSWER: AnswerMode = "extractive"
ABSTAIN_ON = "coverage"
DEFAULT_MIN_SCORE = 0.383
POOL = 3  # hits retrieved per passage wanted: windows of one section merge, the next sections fill the places
MIN_REPLY = 32  # tokens of answer to leave room for when the passages fill a small model's context
ABSTAIN = "The course notes do not cover this question, so I will not guess."
NO_EVIDENCE = "No sentence of the passages answers this directly; the passages below are the closest the notes come."


@dataclass
class Prepared:
    """Everything decided before generation."""

    question: str
    retrieval: Retrieval
    abstained: bool
    passages: list[Passage]  # exactly the passages given to the model (and cited)
    evidence: list[Evidence]
    messages: list[dict[str, str]] | None = None  # None: nothing to generate
    params: SamplingParams | None = None


@dataclass
class Answer:
    question: str
    mode: str
    text: str  # what is shown as the answer
    abstained: bool
    retrieval: Retrieval
    passages: list[Passage] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    generated: str | None = None  # the model's raw reply (markers of passages it was not given removed)
    checked: list[Checked] = field(default_factory=list)
    stats: ReplyStats | None = None
    check: bool = True  # whether generated sentences that fail the support check are left out

    @property
    def shown_generated(self) -> list[str]:
        """The generated sentences shown: those that passed the check (all of them with the check off)."""
        return [c.text for c in self.checked if c.supported or not self.check]

    @property
    def citations(self) -> list[dict[str, Any]]:
        """The passages the answer rests on: those given to the model; none for an abstention."""
        return [] if self.abstained else [p.as_dict() for p in self.passages]

    def as_dict(self) -> dict[str, Any]:
        out = {
            "question": self.question, "answer_mode": self.mode, "answer": self.text, "abstained": self.abstained,
            "evidence": [e.as_dict() for e in self.evidence], "citations": self.citations,
            "generated": None if self.generated is None else {
                "text": self.generated, "sentences": [c.as_dict() for c in self.checked],
                "shown": self.shown_generated,
                "not_in_notes": [c.text for c in self.checked if not c.supported]},
            "best_dense_score": round(self.retrieval.best_dense, 4), "coverage": round(self.retrieval.coverage, 4),
            "retrieval_ms": round(self.retrieval.ms, 2),
            "generation_s": None if self.stats is None else round(self.stats.latency_s, 3),
            "generation": None if self.stats is None else self.stats.as_dict(),
        }  # fmt: skip
        if self.abstained:
            out["closest_passages_not_cited"] = [p.as_dict() for p in self.passages]
        return out

    def render(self) -> str:
        """The answer for a terminal: evidence with sources, the checked model sentences, the passages."""
        if self.abstained:
            closest = [f"  {p.citation()}" for p in self.passages]
            return "\n".join([self.text, "", "Closest passages (not cited: below the abstention threshold):", *closest])
        lines = ["Evidence from the notes:"]
        lines += [f"  [{e.sentence.n}] {e.sentence.text}\n      — {e.sentence.citation()}" for e in self.evidence]
        if self.generated is not None:
            shown = " ".join(self.shown_generated)
            title = "each sentence checked against the passages" if self.check else "NOT checked against the passages"
            lines += [
                "",
                f"Model's answer ({title}):",
                f"  {shown}" if shown else "  (no sentence of it is supported by the passages: evidence only)",
            ]
            dropped = [c.text for c in self.checked if not c.supported]
            label = "not in the notes, dropped" if self.check else "not in the notes (shown: --check false)"
            lines += [f"  {label}: {d}" for d in dropped]
        lines += ["", "Passages given to the model:"] + [f"  [{p.n}] {p.citation()}" for p in self.passages]
        return "\n".join(lines)


def evidence_text(evidence: list[Evidence]) -> str:
    return " ".join(f"{e.sentence.text} [{e.sentence.n}]" for e in evidence)


class NotesQA:
    """Question answering over an index: evidence sentences, and a chat model's answer (Module 7's engine: base,
    or with the grounded-answer LoRA) checked sentence by sentence.

    Args:
        retriever: the index and its embedder.
        engine: the chat model (``None``: extractive answers only).
        mode: dense, bm25 or hybrid retrieval.
        top_k: passages (sections) given to the model.
        min_score: abstain when the retrieval's support is below it.
        params: sampling settings of the generated answer.
        abstain_on: the support signal (coverage, dense, mean).
        answer: ``extractive`` (the evidence is the answer), ``generate`` (the model's supported sentences, the
            evidence when none is), or ``both``.
        check: drop generated sentences the passages do not support (off: show them all, for comparison).
        max_evidence: most evidence sentences.
        support: the support check's thresholds (similarity, overlap), as calibrated by ``bench rag``.
    """

    def __init__(self, retriever: Retriever, engine: GenerationEngine | None, mode: Mode = "hybrid", top_k: int = 3,
                 min_score: float = DEFAULT_MIN_SCORE, params: SamplingParams | None = None,
                 abstain_on: str = ABSTAIN_ON, answer: AnswerMode = DEFAULT_ANSWER, check: bool = True,
                 max_evidence: int = 3,
                 support: tuple[float, float] = (MIN_SIMILARITY, MIN_OVERLAP)) -> None:  # fmt: skip
        if answer not in ANSWER_MODES:
            raise ConfigError(f"--answer={answer!r} is not one of: {', '.join(ANSWER_MODES)}")
        if answer != "extractive" and engine is None:
            raise ConfigError(f"--answer={answer} needs a chat model (--model); --answer extractive needs none")
        self.retriever, self.engine, self.mode, self.top_k, self.min_score = retriever, engine, mode, top_k, min_score
        self.abstain_on, self.answer, self.check, self.max_evidence = abstain_on, answer, check, max_evidence
        self.support = support
        self.params = params or SamplingParams(temperature=0, max_new_tokens=160, repetition_penalty=1.1)

    def retrieve(self, question: str) -> tuple[Retrieval, list[Passage], bool]:
        """The retrieval, its hits merged into ``top_k`` passages, and whether to abstain (the support of those
        passages is below ``min_score``)."""
        retrieval = self.retriever.search(question, self.mode, self.top_k * POOL)
        passages = merge_hits(retrieval.hits, self.top_k, self.retriever.index.chunks)
        chunks = [c for p in passages for c in p.chunks]
        retrieval = replace(retrieval, coverage=self.retriever.index.coverage(question, chunks))
        return retrieval, passages, retrieval.support(self.abstain_on) < self.min_score

    def prepare(self, question: str) -> Prepared:
        retrieval, passages, abstain = self.retrieve(question)
        if abstain:
            return Prepared(question, retrieval, True, passages, [])
        messages = params = None
        if self.answer != "extractive":
            messages, params, passages = self.fit_context(question, passages)
        evidence = select_evidence(question, passages, self.retriever.embedder, self.max_evidence,
                                   cross_encoder=self.retriever.reranker)  # fmt: skip
        return Prepared(question, retrieval, False, passages, evidence, messages, params)

    def finish(self, prepared: Prepared, generated: str | None = None, stats: ReplyStats | None = None) -> Answer:
        """The answer: markers of passages the model was not given removed, each generated sentence checked."""
        p = prepared
        if p.abstained:
            return Answer(p.question, self.answer, ABSTAIN, True, p.retrieval, p.passages)
        checked: list[Checked] = []
        if generated is not None:
            generated = keep_markers(generated.strip(), len(p.passages))
            sentences = generated_sentences(generated)
            checked = check_sentences(sentences, p.passages, self.retriever.embedder, *self.support)
        evidence = evidence_text(p.evidence) or NO_EVIDENCE
        model = " ".join(c.text for c in checked if c.supported or not self.check)
        text = {"extractive": evidence, "generate": model or evidence,
                "both": f"{evidence}\n\n{model}".strip()}[self.answer]  # fmt: skip
        return Answer(p.question, self.answer, text, False, p.retrieval, p.passages, p.evidence, generated, checked,
                      stats, self.check)  # fmt: skip

    def ask(self, question: str) -> Answer:
        prepared = self.prepare(question)
        if prepared.messages is None:
            return self.finish(prepared)
        text, stats = self.engine.generate(prepared.messages, prepared.params)
        return self.finish(prepared, text, stats)

    def fit_context(self, question: str,
                    passages: list[Passage]) -> tuple[list[dict[str, str]], SamplingParams, list[Passage]]:  # fmt: skip
        """The grounded chat, its sampling settings and the passages in it: passages are dropped from the last
        while the prompt leaves fewer than ``MIN_REPLY`` tokens, and the reply is cut to what room is left."""
        limit, kept = self.engine.context_length, list(passages)
        while True:
            messages = grounded_messages(question, [(p.anchor, p.text) for p in kept])
            room = limit - len(self.engine.prompt_ids(messages))
            if room >= min(MIN_REPLY, self.params.max_new_tokens) or len(kept) <= 1:
                reply = max(1, min(self.params.max_new_tokens, room))
                return messages, replace(self.params, max_new_tokens=reply), kept
            kept = kept[:-1]
