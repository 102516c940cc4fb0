"""Module 8's index on disk (atomic, locked saves; loads that check the parts agree) and the chunker's edge cases.

The indexes here are built with a hashed bag-of-words stand-in for MiniLM: fast, and enough to tell rows apart.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
import zlib
from pathlib import Path

import numpy as np
import pytest

from llm_course.errors import ConfigError, IndexCorruptError
from llm_course.rag.chunks import CHUNKER_VERSION, Chunk, find_files, split_file
from llm_course.rag.index import BM25_DIR, EMBEDDINGS, MANIFEST, STOPWORDS, RagIndex, load_for_refresh, words

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


class HashEmbedder:
    """The part of a SentenceTransformer the index uses: one token per word, a hashed bag of words, L2-normalized."""

    def __init__(self, dimension: int = 16) -> None:
        self.dimension = dimension

    def tokenizer(self, text: str, add_special_tokens: bool = False) -> dict[str, list[str]]:
        return {"input_ids": text.split()}

    def get_embedding_dimension(self) -> int:
        return self.dimension

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        rows = np.full((len(texts), self.dimension), 1e-3, np.float32)
        for i, text in enumerate(texts):
            for word in words(text):
                rows[i, zlib.crc32(word.encode()) % self.dimension] += 1
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def write_notes(folder: Path, sections: int) -> Path:
    """``a.md`` with ``sections`` sections and ``b.md`` with one: ``sections + 1`` chunks."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.md").write_text("".join(f"## Topic {i}\n\nWord{i} text about topic {i}.\n\n" for i in range(sections)))
    (folder / "b.md").write_text("# Other\n\nA note about something else.\n")
    return folder


def build(folder: Path, sections: int) -> RagIndex:
    return RagIndex.build(str(write_notes(folder, sections)), HashEmbedder())[0]


def same(a: RagIndex, b: RagIndex) -> bool:
    chunks = [c.as_dict() for c in a.chunks] == [c.as_dict() for c in b.chunks]
    return chunks and np.array_equal(a.embeddings, b.embeddings)


def leftovers(index_dir: Path) -> list[Path]:
    return sorted(index_dir.parent.glob(f".{index_dir.name}-*"))


# ---- the index on disk -------------------------------------------------------------------------------------------
def test_a_save_that_fails_halfway_leaves_the_previous_index(tmp_path, monkeypatch):
    import bm25s

    old = build(tmp_path / "notes", 3)
    old.save(tmp_path / "idx")
    new = build(tmp_path / "notes2", 7)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bm25s.BM25, "save", crash)  # after embeddings.npy was written
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "idx")
    assert same(RagIndex.load(tmp_path / "idx"), old) and leftovers(tmp_path / "idx") == []


KILLED_WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import bm25s
from test_rag_index import build

def stall(self, folder, **kwargs):
    Path({marker!r}).touch()
    time.sleep(120)

bm25s.BM25.save = stall
build(Path({notes!r}), 7).save({index!r})
"""


def test_a_writer_killed_halfway_leaves_the_previous_index_and_the_next_save_clears_its_leftover(tmp_path):
    index_dir, marker = tmp_path / "idx", tmp_path / "stalled"
    old = build(tmp_path / "notes", 3)
    old.save(index_dir)
    paths = {"tests": TESTS, "marker": marker, "notes": tmp_path / "notes2", "index": index_dir}
    code = KILLED_WRITER.format(**{k: str(v) for k, v in paths.items()})
    writer = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert writer.poll() is None, writer.stderr.read()
            assert time.monotonic() < deadline, "the writer never reached the BM25 save"
            time.sleep(0.05)
    finally:
        os.kill(writer.pid, signal.SIGKILL)  # no finally clause of its own runs
        writer.wait(timeout=30)
    assert [p.suffix for p in leftovers(index_dir)] == [".tmp"]
    assert same(RagIndex.load(index_dir), old)
    newer = build(tmp_path / "notes3", 5)
    newer.save(index_dir)
    assert same(RagIndex.load(index_dir), newer) and leftovers(index_dir) == []


def test_two_writers_at_once_leave_one_complete_index_and_readers_never_see_a_mix(tmp_path):
    index_dir = tmp_path / "idx"
    small, large = build(tmp_path / "small", 3), build(tmp_path / "large", 40)
    small.save(index_dir)
    errors: list[BaseException] = []
    loads = 0

    def guarded(work):
        def run():
            try:
                work()
            except BaseException as err:  # re-raised in the test's thread
                errors.append(err)

        return threading.Thread(target=run)

    def write(index):
        for _ in range(6):
            index.save(index_dir)

    def read():
        nonlocal loads
        while any(w.is_alive() for w in writers):
            loaded = RagIndex.load(index_dir)
            assert same(loaded, small) or same(loaded, large)
            loads += 1

    writers = [guarded(lambda: write(small)), guarded(lambda: write(large))]
    reader = guarded(read)
    for thread in [*writers, reader]:
        thread.start()
    for thread in [*writers, reader]:
        thread.join(timeout=120)
    assert not errors, errors
    final = RagIndex.load(index_dir)
    assert (same(final, small) or same(final, large)) and loads > 0 and leftovers(index_dir) == []


def _short_rows(folder: Path) -> None:
    np.save(folder / EMBEDDINGS, np.load(folder / EMBEDDINGS)[:-2])


def _other_width(folder: Path) -> None:
    np.save(folder / EMBEDDINGS, np.zeros((len(json.loads((folder / MANIFEST).read_text())["chunks"]), 8)))


def _bm25_of_another_index(folder: Path) -> None:
    import shutil

    other = build(folder.parent / "other_notes", 9)
    other.save(folder.parent / "other")
    shutil.rmtree(folder / BM25_DIR)
    shutil.copytree(folder.parent / "other" / BM25_DIR, folder / BM25_DIR)


def _truncated_embeddings(folder: Path) -> None:
    data = (folder / EMBEDDINGS).read_bytes()
    (folder / EMBEDDINGS).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_short_rows, "embeddings.npy holds 4 rows for the 6 chunks of manifest.json"),
        (_other_width, "embeddings.npy rows are 8 wide, the settings say 16"),
        (_bm25_of_another_index, "bm25/ counts 10 documents for the 6 chunks"),
        (_truncated_embeddings, "it cannot be read"),
    ],
)
def test_an_inconsistent_index_is_refused_on_load_and_rebuilt_by_the_refresh(tmp_path, capsys, corrupt, message):
    from llm_course.rag.commands import refresh_index  # imported here: the killed writer imports this module

    notes, index_dir = write_notes(tmp_path / "notes", 5), tmp_path / "idx"
    built, _ = refresh_index(str(notes), str(index_dir), HashEmbedder(), max_tokens=60, overlap_tokens=8)
    corrupt(index_dir)
    with pytest.raises(IndexCorruptError, match=message) as err:
        RagIndex.load(index_dir)
    assert f"rebuild it: llm-course rag index --source notes/ --index_dir {index_dir}" in str(err.value)
    previous = load_for_refresh(index_dir)
    assert previous is not None and previous.chunks == [] and previous.settings == built.settings  # settings kept
    assert message in capsys.readouterr().err
    rebuilt, stats = refresh_index(str(notes), str(index_dir), HashEmbedder(), previous=previous,
                                   **{k: built.settings[k] for k in ("max_tokens", "overlap_tokens")})  # fmt: skip
    assert stats["files_embedded"] == 2 and stats["files_reused"] == 0
    assert same(RagIndex.load(index_dir), built) and same(rebuilt, built)


def test_an_unreadable_manifest_is_rebuilt_from_scratch_and_a_missing_index_is_none(tmp_path, capsys):
    index_dir = tmp_path / "idx"
    assert load_for_refresh(index_dir) is None
    build(tmp_path / "notes", 3).save(index_dir)
    (index_dir / MANIFEST).write_text('{"settings": {"embedder"')  # cut short
    with pytest.raises(IndexCorruptError, match="it cannot be read"):
        RagIndex.load(index_dir)
    assert load_for_refresh(index_dir) is None and "re-embedding every file" in capsys.readouterr().err


def test_a_change_of_chunking_code_rechunks_every_file(tmp_path, capsys):
    notes, index_dir = write_notes(tmp_path / "notes", 3), tmp_path / "idx"
    first, _ = RagIndex.build(str(notes), HashEmbedder())
    assert first.settings["chunker_version"] == CHUNKER_VERSION
    first.save(index_dir)
    manifest = json.loads((index_dir / MANIFEST).read_text())
    del manifest["settings"]["chunker_version"]  # as written before the version was recorded
    for chunk in manifest["chunks"]:
        del chunk["fragment"]  # older chunks load too
    (index_dir / MANIFEST).write_text(json.dumps(manifest))
    previous = load_for_refresh(index_dir)
    assert f"chunker_version None, now {CHUNKER_VERSION}" in capsys.readouterr().err
    _, stats = RagIndex.build(str(notes), HashEmbedder(), previous=previous)
    assert (stats["files_embedded"], stats["files_reused"]) == (2, 0)
    _, stats = RagIndex.build(str(notes), HashEmbedder(), previous=first)
    assert (stats["files_embedded"], stats["files_reused"]) == (0, 2)


def test_a_save_never_replaces_a_folder_of_other_files(tmp_path):
    notes = write_notes(tmp_path / "notes", 2)
    with pytest.raises(ConfigError, match=f"--index_dir {notes} is a file or a folder with other files"):
        build(tmp_path / "n", 2).save(notes)
    assert sorted(p.name for p in notes.iterdir()) == ["a.md", "b.md"]


# ---- coverage and packaging ----------------------------------------------------------------------------------------
def test_bm25_and_coverage_drop_the_same_stop_words():
    from bm25s.stopwords import STOPWORDS_EN

    assert STOPWORDS >= frozenset(STOPWORDS_EN) and {"how", "which", "should"} <= STOPWORDS
    chunks = [Chunk("a.md", [], 1, 1, "which tomatoes need water"), Chunk("b.md", [], 1, 1, "soil for beans")]
    index = RagIndex(chunks, np.zeros((2, 2)), {})
    assert index.bm25_search("which", 2) == [] and index.bm25_search("which tomatoes", 2)[0][0] == 0
    assert index.coverage("which tomatoes", chunks[:1]) == 1.0  # "which" counts in neither
    assert index.coverage("are these there", chunks) == 0.0  # nothing but stop words
    assert 0 < index.coverage("tomatoes beans", chunks[:1]) < 1
    assert index.coverage("watered tomato", chunks[:1]) == 1.0  # compared by stem: "water", "tomatoes"


def test_every_data_file_of_the_package_is_in_package_data():
    """A non-editable install ships only what package-data lists: bench rag reads rag/eval_questions.jsonl."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    covered = {path for package, patterns in package_data.items() for pattern in patterns
               for path in (ROOT / "src" / package.replace(".", "/")).glob(pattern)}  # fmt: skip
    data = {p for p in (ROOT / "src" / "llm_course").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}  # fmt: skip
    assert ROOT / "src/llm_course/rag/eval_questions.jsonl" in data
    assert data - covered == set(), "add these to [tool.setuptools.package-data]"


# ---- the chunker ---------------------------------------------------------------------------------------------------
def count_words(text: str) -> int:
    return len(text.split())


def test_line_numbers_count_newlines_only_as_editors_do():
    text = "# T\r\n\r\nform\x0cfeed and\u2028line separator\r\n\r\n## Next\n\nlast line\n"
    chunks = split_file("a.md", text, count_words)
    assert [(c.heading, c.start_line, c.end_line) for c in chunks] == [("T", 1, 3), ("Next", 5, 7)]
    assert chunks[0].text == "# T\n\nform\x0cfeed and\u2028line separator" and "\r" not in chunks[1].text


def test_an_overlong_line_is_cut_into_pieces_within_the_budget():
    line = " ".join(f"w{i}" for i in range(300))
    chunks = split_file("a.md", f"# T\n\n{line}\n", count_words, max_tokens=40, overlap_tokens=0)
    assert len(chunks) >= 8 and all(count_words(c.for_embedding()) + 1 <= 40 for c in chunks)
    assert [w for c in chunks for w in c.text.split()] == line.split()  # in order, once each
    assert {(c.start_line, c.end_line) for c in chunks} == {(3, 3)}
    one_word = "x" * 500  # no space to cut at: cut inside the word, by characters here
    pieces = split_file("b.txt", one_word, len, max_tokens=64, overlap_tokens=0)
    assert "".join(c.text for c in pieces) == one_word and max(len(c.text) for c in pieces) <= 63


def test_closing_hashes_need_a_space_before_them():
    text = "# C#\n\nAbout C sharp.\n\n## F# ##\n\nAbout F sharp.\n\n## Title #\n\nMore.\n"
    assert [c.headings for c in split_file("a.md", text, count_words)] == [["C#"], ["C#", "F#"], ["C#", "Title"]]


def test_repeated_headings_get_githubs_numbered_anchors():
    text = "# Guide\n\n## Example\n\none\n\n## Example\n\ntwo\n\n## Example 1\n\nthree\n\n## Example\n\nfour\n"
    anchors = [c.anchor for c in split_file("g.md", text, count_words)]
    assert anchors == ["g.md#example", "g.md#example-1", "g.md#example-1-1", "g.md#example-2"]
    assert Chunk("g.md", ["Guide", "Example"], 1, 2, "x").anchor == "g.md#example"  # a chunk of an older manifest


def test_find_files_keeps_files_only_and_skips_links_that_leave_the_folder(tmp_path, capsys):
    notes, outside = write_notes(tmp_path / "notes", 1), tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "secret.md").write_text("# Secret\n")
    (outside / "deep" / "more.md").write_text("# More\n")
    (notes / "folder.md").mkdir()
    (notes / "leak.md").symlink_to(outside / "secret.md")
    (notes / "leakdir").symlink_to(outside / "deep")
    (notes / "alias.md").symlink_to(notes / "b.md")  # inside the folder: kept
    assert [p.name for p in find_files(notes)] == ["a.md", "alias.md", "b.md"]
    err = capsys.readouterr().err
    assert f"skipping {notes / 'leak.md'}, a link to {outside / 'secret.md'} outside it" in err
    assert f"skipping {notes / 'leakdir'}" in err


def test_every_eval_question_points_at_a_heading_its_note_has():
    """bench rag scores retrieval by each question's gold heading: a heading renamed in the notes must be renamed in
    rag/eval_questions.jsonl too, or the question can never be found (q030 was, silently, for a while)."""
    stale = []
    for line in (ROOT / "src/llm_course/rag/eval_questions.jsonl").read_text().splitlines():
        q = json.loads(line)
        if q.get("answerable"):
            lines = (ROOT / q["file"]).read_text().splitlines()
            headings = {h.lstrip("#").strip() for h in lines if h.startswith("#")}
            stale += [] if q["heading"] in headings else [(q["id"], q["file"], q["heading"])]
    assert stale == []
