"""Evidence first: the sentences of the given passages that best answer the question, verbatim, with their source.

Sentences come from the passages' prose (a paragraph's wrapped lines joined, a list item a sentence of its own;
headings and images left out), and two kinds of lines count as sentences too: a table row, under its header, and a
line of code. Each sentence keeps its passage number and
its own line range. A sentence's score is its MiniLM cosine to the question, plus ``lexical_weight`` × its BM25
score over the candidate sentences (scaled to [0, 1]), plus a prior for its passage (``passage_weight`` × the
passage's cosine to the question, and ``first_bonus`` for passage [1]), or a cross-encoder's score when one is
given; ties go to the earlier passage and line, so the choice is deterministic. The weights were chosen on the
validation half of ``bench rag``'s questions (key words in the evidence: 0.60 for the cosine alone, 0.65 with BM25
and the tables, 0.675 with the passage prior, 0.737 of the answered questions with code lines; notes/08).

Sentence splitting is done here rather than by a library (pysbd, nltk's punkt): the notes are Markdown, and what
counts is knowing fences, tables, list items and inline code, which those splitters do not.
"""

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_course.rag.passages import Passage

FENCE = re.compile(r"^\s*(```|~~~)")
SKIP = re.compile(r"^\s*(#{1,6}\s|\||!\[|<|\[…\]$|---+\s*$|===+\s*$)")  # headings, tables, images, HTML, rules, gaps
ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
# A sentence ends at . ! ? (closing quotes, brackets or emphasis may follow), then space and a capital, digit,
# backtick, quote, bracket or emphasis; abbreviations are checked apart.
BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]*_]*\s+(?=[A-Z0-9`\"'(\[*_])")
ABBREVIATIONS = ("e.g.", "i.e.", "vs.", "etc.", "cf.", "approx.", "fig.", "no.", "e.g.,", "al.")
MIN_WORDS = 4
TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}")


@dataclass(frozen=True)
class Sentence:
    n: int  # the passage's number, [n]
    text: str  # verbatim, wrapped lines joined by a space
    start_line: int
    end_line: int
    anchor: str
    kind: str = "prose"  # prose, table (a row under its header) or code (a line inside a fence)

    def citation(self) -> str:
        return f"{self.anchor} (lines {self.start_line}-{self.end_line})"


@dataclass(frozen=True)
class Evidence:
    sentence: Sentence
    score: float

    def as_dict(self) -> dict[str, Any]:
        s = self.sentence
        return {"n": s.n, "text": s.text, "citation": s.citation(), "lines": [s.start_line, s.end_line],
                "score": round(self.score, 4)}  # fmt: skip

    def render(self) -> str:
        return f"[{self.sentence.n}] {self.sentence.text}"


def paragraphs(lines: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """Runs of prose lines: a blank line, a list item, or a skipped line (code, table, heading) ends one."""
    out: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    fenced = False
    for number, line in lines:
        if FENCE.match(line):
            fenced = not fenced
            line = ""
        if fenced or not line.strip() or SKIP.match(line) or ITEM.match(line):
            if current:
                out.append(current)
            current = []
            if not fenced and ITEM.match(line) and not SKIP.match(line):
                current = [(number, ITEM.sub("", line, count=1))]
            continue
        current.append((number, line.strip()))
    if current:
        out.append(current)
    return out


def split_sentences(paragraph: list[tuple[int, str]]) -> list[tuple[str, int, int]]:
    """``(sentence, first line, last line)`` of a paragraph whose wrapped lines are joined by spaces."""
    text, starts = "", []
    for number, line in paragraph:
        if text:
            text += " "
        starts.append((len(text), number))
        text += line

    def line_at(offset: int) -> int:
        return max(number for start, number in starts if start <= offset)

    out, begin = [], 0
    for match in BOUNDARY.finditer(text):
        piece = text[begin : match.start()].strip()
        if piece.lower().endswith(ABBREVIATIONS) or piece.count("`") % 2:  # an abbreviation, or inside `code`
            continue
        out.append((piece, line_at(begin), line_at(match.start() - 1)))
        begin = match.end()
    if text[begin:].strip():
        out.append((text[begin:].strip(), line_at(begin), line_at(len(text) - 1)))
    return out


def table_rows(lines: list[tuple[int, str]]) -> list[tuple[str, int, int]]:
    """``(header line + row, header's line, row's line)`` of each body row of the Markdown tables outside code: a
    row's numbers mean something only under its header."""
    out, header, fenced = [], None, False
    for i, (number, line) in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
        if fenced or not TABLE_ROW.match(line):
            header = None
            continue
        if header is None:
            following = lines[i + 1][1] if i + 1 < len(lines) else ""
            header = (number, line.strip()) if TABLE_RULE.match(following) else None
        elif not TABLE_RULE.match(line):
            out.append((f"{header[1]}\n{line.strip()}", header[0], number))
    return out


def code_lines(lines: list[tuple[int, str]]) -> list[tuple[str, int, int]]:
    """``(line, its number, its number)`` of each line inside code fences that holds at least three words and is not
    a comment: a command or a call is the answer to many questions ("which flag ...?")."""
    out, fenced = [], False
    for number, line in lines:
        if FENCE.match(line):
            fenced = not fenced
        elif fenced and len(line.split()) >= 3 and not line.lstrip().startswith(("#", "//")):
            out.append((line.strip(), number, number))
    return out


def sentences_of(passages: list[Passage], tables: bool = True, code: bool = True) -> list[Sentence]:
    """Every prose sentence of at least :data:`MIN_WORDS` words in the passages, every table row under its header
    (``tables``) and every code line of three words or more (``code``), in passage and reading order."""
    out = []
    for passage in passages:
        prose = [u for paragraph in paragraphs(passage.lines) for u in split_sentences(paragraph)]
        units = [(*u, "prose") for u in prose if len(u[0].split()) >= MIN_WORDS]
        units += [(*u, "table") for u in table_rows(passage.lines)] if tables else []
        units += [(*u, "code") for u in code_lines(passage.lines)] if code else []
        out += [Sentence(passage.n, text, first, last, passage.anchor, kind)
                for text, first, last, kind in sorted(units, key=lambda u: u[1:3])]  # fmt: skip
    return out


def bm25_scores(question: str, texts: list[str]) -> np.ndarray:
    """BM25 of the question against each text (bm25s, English stop words), scaled so the best is 1."""
    import bm25s

    query = bm25s.tokenize([question], stopwords="en", show_progress=False)
    corpus = bm25s.tokenize(texts, stopwords="en", show_progress=False)
    if not query.vocab or not corpus.vocab:
        return np.zeros(len(texts))
    model = bm25s.BM25()
    model.index(corpus, show_progress=False)
    words = [w for w in query.vocab if w in corpus.vocab]
    if not words:
        return np.zeros(len(texts))
    scores = np.asarray(model.get_scores(words), dtype=np.float64)
    top = scores.max()
    return scores / top if top > 0 else scores


def select_evidence(question: str, passages: list[Passage], embedder: Any, max_sentences: int = 3,
                    lexical_weight: float = 0.25, passage_weight: float = 0.3, first_bonus: float = 0.2,
                    keep_ratio: float = 0.5, tables: bool = True, code: bool = True, code_penalty: float = 0.1,
                    cross_encoder: Any | None = None) -> list[Evidence]:  # fmt: skip
    """The 1 to ``max_sentences`` sentences of ``passages`` that best answer ``question``, best first.

    A sentence after the first is kept only if its score is at least ``keep_ratio`` × the best one's, so a clear
    answer is not padded with weak sentences.

    Args:
        question: the question.
        passages: the passages the answer may use.
        embedder: the index's sentence-transformers model.
        max_sentences: the most sentences returned.
        lexical_weight: weight of the scaled BM25 score beside the cosine.
        passage_weight: weight of the cosine between the question and the sentence's whole passage (a sentence of
            the passage that is about the question is more likely its answer).
        first_bonus: added for sentences of passage [1], the best retrieved one.
        keep_ratio: a further sentence needs at least this share of the best score.
        tables: table rows (under their header) are candidates too.
        code: code lines are candidates too.
        code_penalty: subtracted from a code line's score, so prose that answers about as well comes first.
        cross_encoder: a sentence-transformers ``CrossEncoder`` that scores (question, sentence) pairs instead.
    """
    candidates = sentences_of(passages, tables, code)
    if not candidates:
        return []
    texts = [s.text for s in candidates]
    if cross_encoder is not None:
        scores = np.asarray(cross_encoder.predict([(question, t) for t in texts]), dtype=np.float64)
    else:
        vectors = embedder.encode([question, *texts, *(p.text for p in passages)], normalize_embeddings=True,
                                  convert_to_numpy=True)  # fmt: skip
        cosines = vectors[1:] @ vectors[0]
        of_passage = dict(zip((p.n for p in passages), cosines[len(texts) :], strict=True))
        prior = np.array([passage_weight * of_passage[c.n] + first_bonus * (c.n == passages[0].n)
                          - code_penalty * (c.kind == "code") for c in candidates])  # fmt: skip
        scores = cosines[: len(texts)] + lexical_weight * bm25_scores(question, texts) + prior
    order = sorted(range(len(candidates)), key=lambda i: (-round(float(scores[i]), 6), i))
    best = float(scores[order[0]])
    chosen = [order[0]] + [i for i in order[1:max_sentences] if best > 0 and scores[i] >= keep_ratio * best]
    return [Evidence(candidates[i], float(scores[i])) for i in chosen]
