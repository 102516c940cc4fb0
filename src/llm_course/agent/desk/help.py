"""The help centre: the desk's Markdown pages, indexed and searched with Module 8's retriever.

Answers are Module 8's extractive answers (the pages' own sentences, each with its ``[n]`` and its source), cited as
``returns.md#the-return-window``. How well the pages match a message (Module 8's abstention signals: the best
cosine, the IDF-weighted coverage of its words, or their mean) is what the "not covered" hand-over rule reads.
"""

from importlib import resources
from pathlib import Path
from typing import Any

from llm_course.rag.answer import NotesQA
from llm_course.rag.commands import refresh_index
from llm_course.rag.index import RagIndex
from llm_course.rag.passages import Passage
from llm_course.rag.retrieve import Retriever

INDEX_DIR = "outputs/support_desk/help_index"


def pages_dir() -> Path:
    """The folder of the help-centre pages shipped with the package."""
    return Path(str(resources.files("llm_course.agent.desk").joinpath("pages")))


def page_of(anchor_or_file: str) -> str:
    """``returns.md#the-return-window`` for an anchor under any folder (citations name the page, not the path)."""
    return Path(anchor_or_file).name


class HelpCentre:
    """Search over the help pages.

    Args:
        embedder: the MiniLM sentence-transformers model (Module 8's).
        pages: the pages folder (default: the shipped pages).
        index_dir: where the index is kept and refreshed (``None``: built in memory each time).
        top_k: passages an answer draws on.
    """

    def __init__(self, embedder: Any, pages: str | Path | None = None, index_dir: str | Path | None = INDEX_DIR,
                 top_k: int = 2) -> None:  # fmt: skip
        source = str(pages or pages_dir())
        if index_dir is None:
            index, _ = RagIndex.build(source, embedder)
        else:
            index, _ = refresh_index(source, str(index_dir), embedder)
        # min_score 0: the search always answers with the closest pages; the desk's own rule decides "not covered"
        self.qa = NotesQA(Retriever(index, embedder), None, top_k=top_k, min_score=0.0, max_evidence=2)
        self.index, self.embedder, self._scope = index, embedder, None

    def support(self, text: str) -> dict[str, float]:
        """How well the best pages match ``text``, by each of Module 8's signals: ``dense`` (the best cosine),
        ``coverage`` (the IDF-weighted share of its words they contain) and ``mean``; and ``off_topic``, the scope
        head's probability that no page is about what it asks (:meth:`off_topic`)."""
        found = self.qa.retrieve(text)[0]
        signals = {signal: found.support(signal) for signal in ("dense", "coverage", "mean")}
        return signals | {"off_topic": self.off_topic([text])[0]}

    def off_topic(self, texts: list[str]) -> list[float]:
        """P(not covered) for each text, by a softmax head on MiniLM embeddings of ``scope_train.jsonl`` (requests a
        shop's help centre covers, and ones it does not: jobs, visits, partnerships, custom work, unrelated
        questions; written for the desk, disjoint from the evaluation messages), fitted on first use in about a
        second."""
        if self._scope is None:
            from llm_course.agent.desk.sentiment import EmbeddingHead, training_rows

            self._scope = EmbeddingHead(self.embedder, training_rows("scope_train.jsonl"),
                                        labels=("covered", "not_covered"), source="scope head")  # fmt: skip
        return [s.scores["not_covered"] for s in self._scope.predict(texts)]

    def pages_for(self, query: str, k: int = 3) -> list[str]:
        """The pages of the ``k`` best passages for ``query``, best first."""
        self.qa.top_k, top_k = k, self.qa.top_k
        try:
            return [page_of(p.file) for p in self.qa.retrieve(query)[1]]
        finally:
            self.qa.top_k = top_k

    def search(self, query: str) -> dict[str, Any]:
        """What the ``search_help`` tool returns: the pages' sentences that answer ``query``, numbered, and the
        sections they come from."""
        answer = self.qa.ask(query)
        return {"answer": answer.text, "citations": [cite(p) for p in answer.passages],
                "coverage": round(answer.retrieval.coverage, 3)}  # fmt: skip

    def section(self, page: str, heading: str) -> dict[str, Any] | None:
        """One section of a page, by its heading (case-insensitive): its text and citation."""
        for chunk in self.index.chunks:
            if page_of(chunk.file) == page and chunk.heading.lower() == heading.lower():
                lines = [line.strip() for line in chunk.text.splitlines()]
                text = " ".join(line for line in lines if line and not line.startswith("#"))
                return {"text": text, "citation": f"{page}#{chunk.anchor.partition('#')[2]}"}
        return None


def cite(passage: Passage) -> str:
    """``[1] returns.md#the-return-window (lines 5-9)``"""
    return f"[{passage.n}] {page_of(passage.anchor)} (lines {passage.start_line}-{passage.end_line})"
