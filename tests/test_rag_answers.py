"""Module 8's answers: merged passages, evidence sentences, the support check, true citations, one path for the CLI
and the page, the RAFT data builder and the answer part of ``bench rag``."""

import asyncio
import gzip
import json

import pytest

from llm_course.rag.answer import ABSTAIN, NotesQA
from llm_course.rag.chunks import Chunk
from llm_course.rag.evidence import select_evidence, sentences_of
from llm_course.rag.index import RagIndex
from llm_course.rag.passages import GAP, Passage, merge_hits
from llm_course.rag.prompt import NOT_COVERED, cited, keep_markers
from llm_course.rag.retrieve import Hit, Retriever
from llm_course.rag.support import check_sentences, generated_sentences

SECTION = [f"line {i} of the section." for i in range(1, 13)]
NOTES = {
    "kitchen.md": """# Kitchen notes

## Boiling pasta

Bring salted water to a rolling boil, add the pasta and stir once.
Cook it for nine minutes, then drain it in a colander.

## Baking bread

Knead the dough for ten minutes, let it rise for an hour, and bake it at 220 degrees.
""",
    "garden.md": """# Garden notes

## Watering tomatoes

Tomatoes need deep watering twice a week; water the soil, not the leaves, early in the morning.
""",
}


@pytest.fixture
def notes(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for name, text in NOTES.items():
        (folder / name).write_text(text)
    return folder


def window(first: int, last: int, heading: str = "Long", file: str = "n.md") -> Chunk:
    return Chunk(file, ["T", heading], first, last, "\n".join(SECTION[first - 1 : last]))


def passage(text: str, n: int = 1, anchor: str = "n.md#s") -> Passage:
    lines = list(enumerate(text.split("\n"), start=1))
    return Passage(n, "n.md", ["S"], anchor, 1, len(lines), text, 0.0, lines)


def test_windows_of_one_section_merge_in_reading_order_and_the_next_section_takes_the_place():
    hits = [Hit(window(7, 10), 0.9, 0), Hit(window(1, 4), 0.8, 1), Hit(window(3, 5), 0.7, 2),
            Hit(window(1, 2, "Other"), 0.6, 3), Hit(window(1, 2, "Third"), 0.5, 4)]  # fmt: skip
    passages = merge_hits(hits, limit=2)
    assert [p.heading for p in passages] == ["Long", "Other"] and [p.n for p in passages] == [1, 2]
    merged = passages[0]
    assert merged.text == "\n".join(SECTION[0:5] + [GAP] + SECTION[6:10])  # lines 1-5, a gap, lines 7-10
    assert (merged.start_line, merged.end_line, merged.score) == (1, 10, 0.9) and len(merged.chunks) == 3
    assert merged.citation() == "n.md#long (lines 1-10)"


def test_a_gap_that_cuts_a_code_block_closes_and_reopens_its_fence():
    lines = ["## Code", "Prose before the code block.", "```python", "a = 1", "b = 2", "c = 3", "```",
             "Prose after the block."]  # fmt: skip
    section = [Chunk("n.md", ["Code"], 1, 8, "\n".join(lines))]  # the section, as the index holds it
    cut = [Hit(Chunk("n.md", ["Code"], first, last, "\n".join(lines[first - 1 : last])), 1.0, 0)
           for first, last in ((1, 4), (6, 8))]  # fmt: skip
    fenced = merge_hits(cut, 1, section)[0]
    assert fenced.text.split("\n") == lines[:4] + ["```", GAP, "```"] + lines[5:]
    assert [(s.text, s.kind) for s in sentences_of([fenced])] == [("Prose before the code block.", "prose"),
            ("a = 1", "code"), ("c = 3", "code"), ("Prose after the block.", "prose")]  # fmt: skip
    assert merge_hits(cut, 1)[0].text.split("\n") == lines[:4] + [GAP] + lines[5:]  # without the section: as is


def test_a_window_that_cuts_a_paragraph_gets_the_rest_of_it():
    lines = ["## Para", "", "One sentence starts on this line", "and ends on the next one.", "", "Another paragraph."]
    section = [Chunk("n.md", ["Para"], 1, 6, "\n".join(lines))]
    cut = [Hit(Chunk("n.md", ["Para"], 1, 3, "\n".join(lines[:3])), 1.0, 0)]  # the window ends mid-sentence
    whole = merge_hits(cut, 1, section)[0]
    assert whole.text.split("\n") == lines[:4] and whole.end_line == 4  # completed up to the blank line, no further
    assert [s.text for s in sentences_of([whole])] == ["One sentence starts on this line and ends on the next one."]
    assert merge_hits(cut, 1)[0].end_line == 3  # without the section: the window as retrieved


def test_code_lines_give_way_to_prose_that_answers_about_as_well(embedder):
    text = (
        "LoRA trains two small matrices and freezes the rest.\n\n```python\n"
        "print(trainable_parameters(model), 'trainable parameters')\n```"
    )
    question = "How many trainable parameters does LoRA have?"
    plain = select_evidence(question, [passage(text)], embedder, 1, code_penalty=0.0)
    assert plain[0].sentence.kind == "code"  # the code line shares more words with the question
    assert select_evidence(question, [passage(text)], embedder, 1)[0].sentence.kind == "prose"


def test_sentences_skip_headings_and_keep_table_rows_under_their_header_and_code_lines():
    text = """Intro text, e.g. this one, stays whole. A second sentence follows it here.
It wraps onto the next line of the file.

```python
x = 1  # Code is never a sentence here.
```
### A heading is not a sentence either

- A list item is a sentence of its own.

| setting | loss |
|---|---|
| bf16-mixed | 0.31 |
"""
    found = [(s.text, s.start_line, s.end_line) for s in sentences_of([passage(text)])]
    assert found == [
        ("Intro text, e.g. this one, stays whole.", 1, 1),
        ("A second sentence follows it here.", 1, 1),
        ("It wraps onto the next line of the file.", 2, 2),
        ("x = 1  # Code is never a sentence here.", 5, 5),  # a code line is a unit of its own, never joined
        ("A list item is a sentence of its own.", 9, 9),
        ("| setting | loss |\n| bf16-mixed | 0.31 |", 11, 13),
    ]
    assert [s.start_line for s in sentences_of([passage(text)], tables=False, code=False)] == [1, 1, 2, 9]


def test_evidence_is_the_best_sentence_and_deterministic(embedder):
    bread = passage("Knead the dough for ten minutes. Let it rise for an hour before baking.", 1, "k.md#bread")
    pasta = passage("Cook the pasta for nine minutes. Drain it in a colander afterwards.", 2, "k.md#pasta")
    question = "For how many minutes should the pasta cook?"
    first = select_evidence(question, [bread, pasta], embedder)
    assert first[0].sentence.text == "Cook the pasta for nine minutes." and first[0].sentence.n == 2
    assert first[0].render() == "[2] Cook the pasta for nine minutes."
    assert first[0].sentence.citation() == "k.md#pasta (lines 1-1)"
    assert all(e.score >= 0.5 * first[0].score for e in first) and len(first) <= 3
    assert select_evidence(question, [bread, pasta], embedder) == first


def test_markers_outside_the_given_passages_are_removed():
    assert keep_markers("A [1] and B [4] and C [2].", allowed=2) == "A [1] and B and C [2]."
    assert cited("x [2] y [1] z [2]") == [2, 1]


def test_the_support_check_passes_a_restated_sentence_and_drops_an_invented_one(embedder):
    given = [passage("Gradient clipping rescales the gradients when their norm exceeds a limit, so one bad batch "
                     "cannot blow up the weights.")]  # fmt: skip
    reply = (
        "Gradient clipping rescales the gradients when their norm exceeds a limit [1]. "
        "It was invented by creating a new batch of images per layer, called batch normalization."
    )
    sentences = generated_sentences(reply)
    assert len(sentences) == 2
    quoted, invented = check_sentences(sentences, given, embedder)
    assert quoted.supported and quoted.cites == (1,) and quoted.overlap == 1.0
    assert not invented.supported and invented.overlap < 0.5


def test_answer_modes_and_true_citations(notes, embedder, constant_llama):
    from llm_course.inference import GenerationEngine, SamplingParams

    index, _ = RagIndex.build(str(notes), embedder)
    engine = GenerationEngine.load(constant_llama, device="cpu")
    params = SamplingParams(temperature=0, max_new_tokens=3)
    question = "How long should I cook the pasta?"
    extractive = NotesQA(Retriever(index, embedder), None, top_k=2).ask(question)
    assert extractive.generated is None and extractive.stats is None
    assert "Cook it for nine minutes, then drain it in a colander. [1]" in extractive.text
    unchecked = NotesQA(Retriever(index, embedder), engine, top_k=2, params=params, answer="generate", check=False)
    shown = unchecked.ask(question)  # without the check, what the model said is shown, with the check's verdict
    assert shown.text == "ok ok ok" and shown.shown_generated == ["ok ok ok"] and not shown.checked[0].supported
    assert "NOT checked against the passages" in shown.render()
    # a context so small that only one passage fits: the citations are the passage the model got, nothing more
    engine.context_length = len(engine.prompt_ids(unchecked.prepare(question).messages)) - 5
    small = NotesQA(Retriever(index, embedder), engine, top_k=2, params=params, answer="both")
    prepared = small.prepare(question)
    assert len(prepared.passages) == 1 and "[2] (" not in prepared.messages[1]["content"]
    answer = small.finish(prepared, "Drain it [1], then boil it [2].", None)
    assert [c["n"] for c in answer.citations] == [1] and answer.generated == "Drain it [1], then boil it."
    with pytest.raises(ValueError, match="--answer=generate needs a chat model"):
        NotesQA(Retriever(index, embedder), None, answer="generate")
    refused = NotesQA(Retriever(index, embedder), None, top_k=2).ask("Which reward model does RLHF with PPO train?")
    assert refused.abstained and refused.text == ABSTAIN and refused.citations == []
    assert "Closest passages (not cited" in refused.render()


def test_the_page_and_the_cli_give_the_same_answer(notes, embedder, constant_llama):
    from llm_course.inference import GenerationEngine, SamplingParams
    from llm_course.inference.scheduler import Scheduler
    from llm_course.rag.webui import answer_markdown, answer_stream

    index, _ = RagIndex.build(str(notes), embedder)
    engine = GenerationEngine.load(constant_llama, device="cpu")
    qa = NotesQA(Retriever(index, embedder), engine, top_k=2, params=SamplingParams(temperature=0, max_new_tokens=4),
                 answer="both")  # fmt: skip
    question = "Do tomatoes need deep watering in the morning?"

    async def page() -> list[tuple[str, str, str]]:
        return [shown async for shown in answer_stream(qa, Scheduler(), question)]

    shown = asyncio.run(page())
    cli = qa.ask(question)
    assert shown[-1][0] == answer_markdown(cli) and "water the soil" in shown[-1][0]
    assert "(not checked yet)" in shown[-2][0] and "ok ok" in shown[-2][0]  # streamed, labelled until checked
    assert "garden.md#watering-tomatoes" in shown[-1][2]


@pytest.mark.parametrize("distractors", ["random", "retrieved"])
def test_raft_data_cites_the_right_passage_and_leaves_held_out_notes_out(notes, tmp_path, capsys, distractors):
    from conftest import run_cli

    alpaca = tmp_path / "alpaca.jsonl.gz"
    records = [{"instruction": f"Summarize text {i}.", "input": f"Text number {i} is about topic {i}.",
                "output": f"It is about topic {i}.", "status": "ok"} for i in range(12)]  # fmt: skip
    records.append({"instruction": "No input here.", "input": "", "output": "x", "status": "ok"})
    with gzip.open(alpaca, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    out = tmp_path / "raft"
    args = ["rag", "raft-data", "--source", notes, "--output_dir", out, "--alpaca_file", alpaca, "--held_out",
            f"[{notes}/garden.md]", "--none_share", "0.3", "--val_share", "0.2",
            "--distractors", distractors]  # fmt: skip
    run_cli(*args)
    summary = json.loads((out / "raft_data.json").read_text())
    rows = [json.loads(line) for name in ("train", "val") for line in (out / f"{name}.jsonl").read_text().splitlines()]
    assert summary["by_source"]["alpaca"] == 12 and summary["train"] + summary["val"] == len(rows)
    assert all("garden" not in json.dumps(r) for r in rows)  # the held-out note gives no question and no passage
    for row in rows:
        system, user, reply = (m["content"] for m in row["messages"])
        if not row["covered"]:
            assert reply == NOT_COVERED
            continue
        n = cited(reply)[-1]
        passage_text = user.split(f"[{n}] (")[1].split("\n", 1)[1]
        if row["source"] == "alpaca":
            assert user.split(f"[{n}] (")[1].startswith(f"alpaca_libre#record-{row['record']})")
            assert f"topic {row['record']}." in passage_text.split("\n\n")[0] and reply.endswith(f"[{n}]")
        else:
            assert reply.rsplit(" [", 1)[0].split(". ")[0] in passage_text  # a sentence of the right passage
    assert any(not r["covered"] for r in rows) and any(r["source"] == "notes" and r["covered"] for r in rows)
    run_cli(*args)  # seeded: the same files again
    again = [json.loads(line) for name in ("train", "val") for line in (out / f"{name}.jsonl").read_text().splitlines()]
    assert again == rows
    with pytest.raises(SystemExit):
        run_cli("rag", "raft-data", "--source", notes, "--output_dir", out, "--held_out", "[nope.md]")
    assert "--held_out ['nope.md'] are not files under --source" in capsys.readouterr().err


def test_bench_rag_scores_every_answer_mode_on_the_test_half(notes, tmp_path, constant_llama):
    from llm_course.rag.bench import bench_rag

    questions = tmp_path / "questions.jsonl"
    rows = [("How long should pasta cook?", "kitchen.md", "Boiling pasta", ["nine minutes"]),
            ("How long should I knead bread dough?", "kitchen.md", "Baking bread", ["ten minutes"]),
            ("How often should tomatoes be watered?", "garden.md", "Watering tomatoes", ["twice a week"]),
            ("What temperature do I bake bread at?", "kitchen.md", "Baking bread", ["220 degrees"])]  # fmt: skip
    lines = [{"id": f"q{i}", "question": q, "file": f, "heading": h, "keywords": k, "answerable": True}
             for i, (q, f, h, k) in enumerate(rows)]  # fmt: skip
    lines += [{"id": f"u{i}", "question": q, "file": None, "heading": None, "keywords": [], "answerable": False}
              for i, q in enumerate(["Which reward model does RLHF with PPO train?",
                                     "How do I deploy Kubernetes operators on AWS?"])]  # fmt: skip
    questions.write_text("".join(json.dumps(r) + "\n" for r in lines))
    bench_rag(str(tmp_path / "bench"), str(notes), str(questions), constant_llama, adapter=None, max_new_tokens=3)
    result = json.loads((tmp_path / "bench" / "rag.json").read_text())
    test = result["answers"]["test"]
    assert set(test) == {"extractive", "base generate", "base generate, no check", "base both"}
    assert test["base generate, no check"]["all"]["keyword_hit_rate"] == 0.0  # "ok ok ok" holds no key word
    generated = test["base generate"]["all"]
    assert generated["supported_share"] == 0.0 and generated["generated_sentences"] > 0
    assert test["extractive"]["all"]["cites_given_passage_rate"] == 1.0
    assert result["targets"]["default_answer_mode"] in ("extractive", "base both")
    assert result["support_check"]["chosen_on"].startswith("validation") and (tmp_path / "bench" / "rag.png").is_file()


def test_the_lora_curve_is_read_back_from_the_run(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from llm_course.errors import MissingFileError
    from llm_course.rag.lora_curve import bench_rag_lora

    run = tmp_path / "run"
    with SummaryWriter(str(run)) as writer:
        for step, loss in ((10, 0.5), (20, 0.4)):
            writer.add_scalar("val/loss", loss, step)
    paths = bench_rag_lora(str(run), str(tmp_path / "out"))
    result = json.loads(open(paths["json"]).read())
    assert result["curves"]["val/loss"] == [[10, 0.5], [20, pytest.approx(0.4)]] and result["val_loss_last"] < 0.41
    with pytest.raises(MissingFileError, match="no TensorBoard event file"):
        bench_rag_lora(str(tmp_path), str(tmp_path / "out"))
