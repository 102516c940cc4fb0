"""Splitting Markdown and text files into retrievable chunks: by headings, then by token budget with an overlap.

Each chunk keeps its file, its heading path (``["Module 7: ...", "The KV cache, ..."]``) and its line range, so an
answer can cite ``notes/07_inference_deployment.md#the-kv-cache-and-why-the-first-token-is-slower (lines 80-112)``.
Lines inside code fences are never headings (a ``# comment`` in a Python block is code).
"""

import hashlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llm_course.errors import ConfigError, MissingFileError

SUFFIXES = (".md", ".markdown", ".txt")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass
class Chunk:
    file: str
    headings: list[str]
    start_line: int  # 1-based, inclusive
    end_line: int
    text: str

    @property
    def heading(self) -> str:
        """The deepest heading above the chunk ('' for text before any heading)."""
        return self.headings[-1] if self.headings else ""

    @property
    def anchor(self) -> str:
        """``file#slug`` of the heading, as GitHub renders Markdown links."""
        return f"{self.file}#{slug(self.heading)}" if self.heading else self.file

    def citation(self) -> str:
        return f"{self.anchor} (lines {self.start_line}-{self.end_line})"

    def for_embedding(self) -> str:
        """The text that is embedded and searched: the heading path gives a chunk its topic."""
        return " > ".join(self.headings) + "\n" + self.text if self.headings else self.text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def find_files(source: str | Path) -> list[Path]:
    """Markdown and text files under ``source`` (a folder, searched recursively, or one file), sorted.

    Raises:
        MissingFileError: ``source`` does not exist or holds no such file.
    """
    root = Path(source)
    if not root.exists():
        raise MissingFileError(f"--source {source}: no such file or folder; point it at a folder of notes (notes/)")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not files:
        raise MissingFileError(f"--source {source}: no Markdown or text files ({', '.join(SUFFIXES)}) in it")
    return files


def sections(lines: list[str], markdown: bool) -> list[tuple[list[str], int, int]]:
    """``(heading path, first line, last line)`` of each section (0-based, inclusive), headings outside code fences."""
    out, path, start, fenced = [], [], 0, False
    levels: list[int] = []
    for i, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
        match = None if fenced or not markdown else HEADING.match(line)
        if match is None:
            continue
        if i > start:
            out.append((list(path), start, i - 1))
        level = len(match.group(1))
        while levels and levels[-1] >= level:
            levels.pop()
            path.pop()
        levels.append(level)
        path.append(match.group(2).strip())
        start = i
    out.append((list(path), start, len(lines) - 1))
    return out


def split_file(file: str, text: str, count_tokens: Callable[[str], int], max_tokens: int = 200,
               overlap_tokens: int = 32) -> list[Chunk]:  # fmt: skip
    """Chunks of one file: each section whole when it fits ``max_tokens`` (heading path included), else windows of
    whole lines that fit, each starting with the last ``overlap_tokens`` worth of lines of the one before."""
    if not 0 <= overlap_tokens < max_tokens:
        raise ConfigError(f"--overlap_tokens={overlap_tokens} must be >= 0 and below --max_tokens={max_tokens}")
    lines = text.splitlines()
    chunks = []
    for path, first, last in sections(lines, markdown=not file.endswith(".txt")):
        budget = max_tokens - count_tokens(" > ".join(path))
        costs = {i: count_tokens(lines[i]) + 1 for i in range(first, last + 1)}
        window: list[int] = []
        used = 0  # tokens in ``window``
        for i in range(first, last + 1):
            if window and used + costs[i] > budget:
                chunks.append(_chunk(file, path, lines, window))
                keep: list[int] = []
                used = 0
                for j in reversed(window):  # the overlap: trailing lines of the window just closed
                    if used + costs[j] > overlap_tokens:
                        break
                    keep.insert(0, j)
                    used += costs[j]
                window = keep
            window.append(i)
            used += costs[i]
        if window:
            chunks.append(_chunk(file, path, lines, window))
    return [c for c in chunks if c.text.strip() and not _heading_only(c)]


def _chunk(file: str, path: list[str], lines: list[str], window: list[int]) -> Chunk:
    """The chunk of ``window`` (0-based line numbers), blank lines at either end left out of text and range."""
    filled = [i for i in window if lines[i].strip()] or window
    first, last = filled[0], filled[-1]
    return Chunk(file, list(path), first + 1, last + 1, "\n".join(lines[first : last + 1]))


def _heading_only(chunk: Chunk) -> bool:
    """Whether the chunk is nothing but its heading line (such chunks are dropped)."""
    lines = chunk.text.strip().splitlines()
    return len(lines) == 1 and HEADING.match(lines[0]) is not None
