"""The passages a model is given: retrieved windows of one section merged into one passage, in reading order.

A long section is indexed as overlapping windows, so one question often retrieves two or three windows of the same
section (the demo's "first token" question got three windows of one section, two of them code). Given to a model
as separate passages they repeat each other and crowd out the other sections; merged, the model reads the section's
prose and code once, in order, and the next-best section takes the freed place.
"""

from dataclasses import dataclass, field

from llm_course.rag.chunks import Chunk
from llm_course.rag.retrieve import Hit

GAP = "[…]"  # stands for the lines between two retrieved windows of a section that do not touch


@dataclass
class Passage:
    """One section's retrieved text, numbered ``[n]`` as the model sees it."""

    n: int
    file: str
    headings: list[str]
    anchor: str
    start_line: int
    end_line: int
    text: str
    score: float  # the best hit's retrieval score
    lines: list[tuple[int, str]] = field(repr=False, default_factory=list)  # (1-based line number, text)
    chunks: list[Chunk] = field(repr=False, default_factory=list)  # the retrieved windows it was merged from

    @property
    def heading(self) -> str:
        return self.headings[-1] if self.headings else ""

    def citation(self) -> str:
        return f"{self.anchor} (lines {self.start_line}-{self.end_line})"

    def as_dict(self) -> dict:
        return {"n": self.n, "citation": self.citation(), "anchor": self.anchor, "file": self.file,
                "heading": self.heading, "lines": [self.start_line, self.end_line], "score": round(self.score, 4),
                "text": self.text}  # fmt: skip


def chunk_lines(chunk: Chunk) -> list[tuple[int, str]]:
    """``(line number, text)`` of each line of a chunk (its text is its file's lines start..end, joined by \\n)."""
    return list(enumerate(chunk.text.split("\n"), start=chunk.start_line))


def merge_hits(hits: list[Hit], limit: int) -> list[Passage]:
    """The first ``limit`` sections among ``hits`` (best first), each one passage: the union of its retrieved
    windows' lines in file order, with :data:`GAP` where two windows do not touch."""
    groups: dict[tuple[str, str, tuple[str, ...]], list[Hit]] = {}
    for hit in hits:
        key = (hit.chunk.file, hit.chunk.anchor, tuple(hit.chunk.headings))
        if key not in groups and len(groups) == limit:
            continue
        groups.setdefault(key, []).append(hit)
    passages = []
    for n, members in enumerate(groups.values(), start=1):
        lines: dict[int, str] = {}
        for number, text in (line for hit in members for line in chunk_lines(hit.chunk)):
            if len(text) > len(lines.get(number, "")):  # a window may hold only a piece of an over-long line
                lines[number] = text
        ordered = sorted(lines.items())
        parts: list[str] = []
        for i, (number, text) in enumerate(ordered):
            if i and number != ordered[i - 1][0] + 1:
                parts.append(GAP)
            parts.append(text)
        first = members[0].chunk
        passages.append(Passage(n, first.file, list(first.headings), first.anchor, ordered[0][0], ordered[-1][0],
                                "\n".join(parts), members[0].score, ordered, [h.chunk for h in members]))  # fmt: skip
    return passages
