"""The passages a model is given: retrieved windows of one section merged into one passage, in reading order.

A long section is indexed as overlapping windows, so one question often retrieves two or three windows of the same
section (the demo's "first token" question got three windows of one section, two of them code). Given to a model
as separate passages they repeat each other and crowd out the other sections; merged, the model reads the section's
prose and code once, in order, and the next-best section takes the freed place.
"""

from dataclasses import dataclass, field
from typing import Any

from llm_course.rag.chunks import FENCE, Chunk
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


def section_key(chunk: Chunk) -> tuple[str, str, tuple[str, ...]]:
    return chunk.file, chunk.anchor, tuple(chunk.headings)


def union_lines(chunks: list[Chunk]) -> dict[int, str]:
    """Line number → text of the lines ``chunks`` cover (a window may hold only a piece of an over-long line: the
    longest piece is kept)."""
    lines: dict[int, str] = {}
    for number, text in (line for chunk in chunks for line in chunk_lines(chunk)):
        if number not in lines or len(text) > len(lines[number]):
            lines[number] = text
    return lines


def open_fences(lines: dict[int, str]) -> dict[int, bool]:
    """For each of a section's ``lines``: is a code block open after it?"""
    after, fenced = {}, False
    for number in sorted(lines):
        fenced ^= bool(FENCE.match(lines[number]))
        after[number] = fenced
    return after


def without_empty_blocks(lines: list[Any]) -> list[Any]:
    """``lines`` less each fence line directly followed by another (a passage that starts on a closing fence)."""
    text = [line if isinstance(line, str) else line[1] for line in lines]
    empty = {i for i in range(len(lines) - 1) if FENCE.match(text[i]) and FENCE.match(text[i + 1])}
    return [line for i, line in enumerate(lines) if i not in empty and i - 1 not in empty]


def whole_paragraphs(lines: dict[int, str], section: dict[int, str], fences: dict[int, bool]) -> dict[int, str]:
    """``lines`` with the rest of each prose paragraph they cut into, from the ``section``'s lines: a window that
    ends or starts inside a paragraph would otherwise cut its sentence in two."""

    def prose(number: int) -> bool:
        text = section.get(number, "")
        return bool(text.strip()) and not FENCE.match(text) and not fences.get(number - 1, False)

    out = dict(lines)
    for number in sorted(lines):
        for step in (-1, 1):
            n = number
            while prose(n) and prose(n + step) and n + step not in out:
                n += step
                out[n] = section[n]
    return out


def merge_hits(hits: list[Hit], limit: int, sections: list[Chunk] | None = None) -> list[Passage]:
    """The first ``limit`` sections among ``hits`` (best first), each one passage: the union of its retrieved
    windows' lines in file order, with :data:`GAP` where two windows do not touch.

    A window may start or end inside a paragraph or a code block. Given ``sections`` (all the index's chunks), a cut
    paragraph is completed, and a fence line is put back wherever the passage or a gap in it cuts a code block, so
    the model, and the evidence step, see whole sentences and code as code (in ``lines`` a fence carries the number
    of the line next to it)."""
    groups: dict[tuple[str, str, tuple[str, ...]], list[Hit]] = {}
    for hit in hits:
        key = section_key(hit.chunk)
        if key not in groups and len(groups) == limit:
            continue
        groups.setdefault(key, []).append(hit)
    passages = []
    for n, members in enumerate(groups.values(), start=1):
        lines, fences = union_lines([hit.chunk for hit in members]), {}
        if sections is not None:
            key = section_key(members[0].chunk)
            section = union_lines([c for c in sections if section_key(c) == key])
            fences = open_fences(section)
            lines = whole_paragraphs(lines, section, fences)
        ordered = sorted(lines.items())
        parts: list[str] = []
        kept: list[tuple[int, str]] = []  # the lines, with a blank one where a gap ends a paragraph
        for i, (number, text) in enumerate(ordered):
            before = ordered[i - 1][0] if i else None
            if before is not None and number != before + 1:  # a gap: close, then reopen, a code block it cuts
                close = fences.get(before, False)
                parts += ["```"] * close + [GAP]
                kept += [(before, "```")] * close + [(before, "")]
            if (before is None or number != before + 1) and fences.get(number - 1, False):
                parts.append("```")
                kept.append((number, "```"))
            parts.append(text)
            kept.append((number, text))
        if fences.get(ordered[-1][0], False):
            parts.append("```")
            kept.append((ordered[-1][0], "```"))
        ordered, parts = without_empty_blocks(kept), without_empty_blocks(parts)
        first = members[0].chunk
        passages.append(Passage(n, first.file, list(first.headings), first.anchor, ordered[0][0], ordered[-1][0],
                                "\n".join(parts), members[0].score, ordered, [h.chunk for h in members]))  # fmt: skip
    return passages
