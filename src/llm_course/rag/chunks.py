"""Splitting Markdown and text files into retrievable chunks: by headings, then by token budget with an overlap.

Each chunk keeps its file, its heading path (``["Module 7: ...", "The KV cache, ..."]``) and its line range, so an
answer can cite ``notes/07_inference_deployment.md#the-kv-cache-and-why-the-first-token-is-slower (lines 80-112)``.
Lines inside code fences are never headings (a ``# comment`` in a Python block is code).
"""

import hashlib
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llm_course.errors import ConfigError, MissingFileError

# Bump on any change to how files become chunks: the index keeps it in its settings, so an index built by older code
# is re-chunked on the next incremental run instead of reusing chunks the new code would cut differently.
CHUNKER_VERSION = 2
SUFFIXES = (".md", ".markdown", ".txt")
# CommonMark: closing #s count only after a space, so "# C#" is the heading "C#"
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
FENCE = re.compile(r"^\s*(```|~~~)")
TokenCounter = Callable[[str], int]


@dataclass
class Chunk:
    file: str
    headings: list[str]
    start_line: int  # 1-based, inclusive
    end_line: int
    text: str
    fragment: str | None = None  # the heading's anchor in its file (``example-1``); None: slug(heading)

    @property
    def heading(self) -> str:
        """The deepest heading above the chunk ('' for text before any heading)."""
        return self.headings[-1] if self.headings else ""

    @property
    def anchor(self) -> str:
        """``file#fragment`` of the heading, as GitHub renders Markdown links (``-1``, ``-2`` on repeated headings)."""
        if not self.heading:
            return self.file
        return f"{self.file}#{self.fragment if self.fragment is not None else slug(self.heading)}"

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


def unique_slug(base: str, seen: dict[str, int]) -> str:
    """GitHub's anchor for the next heading of one file whose slug is ``base``: ``base``, then ``base-1``,
    ``base-2``... skipping any already taken (by a heading "Example 1", say). ``seen`` counts them per file."""
    fragment = base
    while fragment in seen:
        seen[base] += 1
        fragment = f"{base}-{seen[base]}"
    seen[fragment] = 0
    return fragment


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def find_files(source: str | Path) -> list[Path]:
    """Markdown and text files under ``source`` (a folder, searched recursively, or one file), sorted.

    A link (file or folder) that leads outside ``source`` is skipped with a note on stderr: the index cites files of
    the notes folder only.

    Raises:
        MissingFileError: ``source`` does not exist or holds no such file.
    """
    root = Path(source)
    if not root.exists():
        raise MissingFileError(f"--source {source}: no such file or folder; point it at a folder of notes (notes/)")
    if root.is_file():
        return [root]
    files, inside = [], root.resolve()
    for path in sorted(root.rglob("*")):  # rglob does not descend into linked folders
        if path.suffix.lower() not in SUFFIXES and not path.is_dir():
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(inside):
            print(f"--source {source}: skipping {path}, a link to {path.resolve()} outside it", file=sys.stderr)
        elif path.is_file():  # not a folder that happens to be named x.md
            files.append(path)
    if not files:
        raise MissingFileError(f"--source {source}: no Markdown or text files ({', '.join(SUFFIXES)}) in it")
    return files


def split_lines(text: str) -> list[str]:
    """The lines of ``text`` as editors number them: broken at ``\\n`` (and ``\\r\\n``) only. ``str.splitlines``
    also breaks at ``\\x0c``, ``\\u2028`` and other separators, so its line numbers drift from the editor's."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no new one
    return [line.removesuffix("\r") for line in lines]


def sections(lines: list[str], markdown: bool) -> list[tuple[list[str], str | None, int, int]]:
    """``(heading path, anchor fragment, first line, last line)`` of each section (0-based, inclusive), headings
    outside code fences; the fragment is that of the section's own heading (None before the first heading)."""
    out, path, fragment, start, fenced = [], [], None, 0, False
    levels: list[int] = []
    seen: dict[str, int] = {}
    for i, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
        match = None if fenced or not markdown else HEADING.match(line)
        if match is None:
            continue
        if i > start:
            out.append((list(path), fragment, start, i - 1))
        level = len(match.group(1))
        while levels and levels[-1] >= level:
            levels.pop()
            path.pop()
        levels.append(level)
        path.append(match.group(2).strip())
        fragment, start = unique_slug(slug(path[-1]), seen), i
    out.append((list(path), fragment, start, len(lines) - 1))
    return out


def split_file(file: str, text: str, count_tokens: TokenCounter, max_tokens: int = 200,
               overlap_tokens: int = 32) -> list[Chunk]:  # fmt: skip
    """Chunks of one file: each section whole when it fits ``max_tokens`` (heading path included), else windows of
    whole lines that fit, each starting with the last ``overlap_tokens`` worth of lines of the one before. A line
    longer than the budget is cut into pieces (at spaces, else inside a word) that each fit."""
    if not 0 <= overlap_tokens < max_tokens:
        raise ConfigError(f"--overlap_tokens={overlap_tokens} must be >= 0 and below --max_tokens={max_tokens}")
    lines = split_lines(text)
    chunks = []
    for path, fragment, first, last in sections(lines, markdown=not file.endswith(".txt")):
        # a heading path that fills most of the budget may not starve the text (the chunk then runs over)
        budget = max(max_tokens - count_tokens(" > ".join(path)), max_tokens // 2)
        units = _units(lines, first, last, count_tokens, budget)
        window: list[int] = []  # indices into ``units``
        used = 0  # tokens in ``window``
        for k, (_, _, cost) in enumerate(units):
            if window and used + cost > budget:
                chunks.append(_chunk(file, path, fragment, units, window))
                keep: list[int] = []
                used = 0
                for j in reversed(window):  # the overlap: trailing lines of the window just closed
                    if used + units[j][2] > overlap_tokens:
                        break
                    keep.insert(0, j)
                    used += units[j][2]
                window = keep
            window.append(k)
            used += cost
        if window:
            chunks.append(_chunk(file, path, fragment, units, window))
    return [c for c in chunks if c.text.strip() and not _heading_only(c)]


def _units(lines: list[str], first: int, last: int, count_tokens: TokenCounter,
           budget: int) -> list[tuple[int, str, int]]:  # fmt: skip
    """``(line number, text, tokens)`` of the lines ``first..last``, one per line, or several pieces of one line
    where it alone exceeds ``budget``; a line's tokens count its line break too."""
    units = []
    for i in range(first, last + 1):
        cost = count_tokens(lines[i]) + 1
        if cost <= budget:
            units.append((i, lines[i], cost))
        else:
            units += [(i, piece, count_tokens(piece) + 1) for piece in _pieces(lines[i], count_tokens, budget - 1)]
    return units


def _pieces(line: str, count_tokens: TokenCounter, limit: int) -> list[str]:
    """``line`` cut into pieces of at most ``limit`` tokens, at spaces where it can, else inside a word (a long
    URL); joined, the pieces give the line back."""
    pieces, current = [], ""
    for word in re.findall(r"\S+\s*|\s+", line):
        if count_tokens(current + word) <= limit:  # ``current`` stays under ``limit``: each count is cheap
            current += word
            continue
        if current:
            pieces.append(current)
        current = word
        while len(current) > 1 and count_tokens(current) > limit:
            cut = _fitting_prefix(current, count_tokens, limit)
            pieces.append(current[:cut])
            current = current[cut:]
    return pieces + [current] if current else pieces


def _fitting_prefix(text: str, count_tokens: TokenCounter, limit: int) -> int:
    """The length of the longest prefix of ``text`` within ``limit`` tokens (at least 1 character), by bisection."""
    low, high = 1, len(text) - 1  # ``text`` as a whole does not fit
    while low < high:
        mid = (low + high + 1) // 2
        if count_tokens(text[:mid]) <= limit:
            low = mid
        else:
            high = mid - 1
    return low


def _chunk(file: str, path: list[str], fragment: str | None, units: list[tuple[int, str, int]],
           window: list[int]) -> Chunk:  # fmt: skip
    """The chunk of ``window`` (indices into ``units``), blank lines at either end left out of text and range;
    pieces of one line join without a break."""
    filled = [k for k in window if units[k][1].strip()] or window
    first, last = filled[0], filled[-1]
    text = units[first][1]
    for k in range(first + 1, last + 1):
        text += ("" if units[k][0] == units[k - 1][0] else "\n") + units[k][1]
    return Chunk(file, list(path), units[first][0] + 1, units[last][0] + 1, text, fragment)


def _heading_only(chunk: Chunk) -> bool:
    """Whether the chunk is nothing but its heading line (such chunks are dropped)."""
    lines = chunk.text.strip().split("\n")
    return len(lines) == 1 and HEADING.match(lines[0]) is not None
