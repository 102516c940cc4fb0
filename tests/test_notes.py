"""The notes are runnable: each note's ```python blocks execute in order, in one namespace."""

import re
from pathlib import Path

import pytest

NOTES = sorted((Path(__file__).resolve().parents[1] / "notes").glob("[0-9][0-9]_*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_every_module_note_has_code():
    assert NOTES
    for note in NOTES:
        assert BLOCK.findall(note.read_text()), f"{note.name} has no python block"


@pytest.mark.parametrize("note", NOTES, ids=lambda p: p.stem)
def test_note_code_runs(note, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    namespace: dict = {"__name__": f"note_{note.stem}"}
    for i, code in enumerate(BLOCK.findall(note.read_text())):
        exec(compile(code, f"{note.name}[block {i}]", "exec"), namespace)
