"""Module 8: chunking, the incremental index, retrieval modes, abstention and grounded answers with citations."""

import json

import numpy as np
import pytest

from conftest import run_cli
from llm_course.rag.answer import ABSTAIN, DEFAULT_MIN_SCORE, NotesQA
from llm_course.rag.bench import abstention, choose_threshold, first_gold_rank, retrieval_metrics
from llm_course.rag.chunks import Chunk, slug, split_file
from llm_course.rag.index import RagIndex
from llm_course.rag.retrieve import Retriever, reciprocal_rank_fusion

NOTES = {
    "01_cooking.md": """# Cooking notes

Intro line about the kitchen.

## Boiling pasta

Bring salted water to a rolling boil, add the pasta and stir.
Cook it for nine minutes, then drain it in a colander.

## Baking bread

Knead the dough for ten minutes, let it rise for an hour, bake at 220 degrees.

```python
# not a heading: a comment inside a code block
oven = 220
```
""",
    "02_garden.md": """# Garden notes

## Watering tomatoes

Tomatoes need deep watering twice a week; water the soil, not the leaves, early in the morning.

### Pests

Aphids gather under tomato leaves; spray them off with water or release ladybirds.
""",
}


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture
def notes(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for name, text in NOTES.items():
        (folder / name).write_text(text)
    return folder


def test_split_follows_headings_not_code_comments_and_keeps_lines():
    chunks = split_file("notes/01_cooking.md", NOTES["01_cooking.md"], words, max_tokens=200)
    assert [c.headings for c in chunks] == [["Cooking notes"], ["Cooking notes", "Boiling pasta"],
                                            ["Cooking notes", "Baking bread"]]  # fmt: skip
    bread = chunks[2]
    assert "# not a heading" in bread.text and (bread.start_line, bread.end_line) == (10, 17)
    lines = NOTES["01_cooking.md"].splitlines()
    assert bread.text == "\n".join(lines[bread.start_line - 1 : bread.end_line]).strip("\n")
    assert bread.anchor == "notes/01_cooking.md#baking-bread"
    assert chunks[1].citation() == "notes/01_cooking.md#boiling-pasta (lines 5-8)"


def test_long_sections_split_within_budget_with_overlap():
    text = "# T\n\n## Long\n\n" + "\n".join(f"line {i} has five words" for i in range(40)) + "\n"
    chunks = split_file("long.md", text, words, max_tokens=40, overlap_tokens=12)
    assert len(chunks) > 3
    for c in chunks:
        assert sum(words(line) + 1 for line in c.text.splitlines()) + words("T > Long") <= 40
    for a, b in zip(chunks[1:], chunks[2:], strict=False):
        assert a.end_line >= b.start_line  # each window starts with the tail of the one before
        assert a.text.splitlines()[-1] in b.text.splitlines()
    covered = set().union(*(range(c.start_line, c.end_line + 1) for c in chunks))
    assert set(range(5, 45)) <= covered  # every body line is in some chunk
    with pytest.raises(ValueError, match="--overlap_tokens=40 must be >= 0 and below --max_tokens=40"):
        split_file("x.md", text, words, max_tokens=40, overlap_tokens=40)


def test_slug_matches_github_anchors():
    assert slug("The KV cache, and why the first token is slower") == "the-kv-cache-and-why-the-first-token-is-slower"
    assert slug("Measured: `bench serve`") == "measured-bench-serve"


def test_index_is_incremental_and_drops_deleted_files(notes, tmp_path, embedder):
    first, stats = RagIndex.build(str(notes), embedder)
    assert stats == {"files_embedded": 2, "files_reused": 0, "files_removed": 0, "chunks_embedded": len(first.chunks)}
    assert np.allclose(np.linalg.norm(first.embeddings, axis=1), 1, atol=1e-5)
    first.save(tmp_path / "idx")
    loaded = RagIndex.load(tmp_path / "idx")
    assert [c.as_dict() for c in loaded.chunks] == [c.as_dict() for c in first.chunks]
    (notes / "02_garden.md").write_text(NOTES["02_garden.md"].replace("twice a week", "every other day"))
    second, stats = RagIndex.build(str(notes), embedder, previous=loaded)
    assert (stats["files_embedded"], stats["files_reused"]) == (1, 1)
    cooking = [i for i, c in enumerate(second.chunks) if c.file.endswith("01_cooking.md")]
    assert np.array_equal(second.embeddings[cooking], first.embeddings[cooking])  # reused, not re-embedded
    (notes / "01_cooking.md").unlink()
    third, stats = RagIndex.build(str(notes), embedder, previous=second)
    assert stats["files_removed"] == 1 and all(c.file.endswith("02_garden.md") for c in third.chunks)
    assert len(third.embeddings) == len(third.chunks)
    changed, stats = RagIndex.build(str(notes), embedder, max_tokens=100, previous=third)
    assert stats["files_reused"] == 0  # other settings: everything is embedded again


def test_modes_find_the_right_section_and_faiss_equals_exact(notes, embedder):
    index, _ = RagIndex.build(str(notes), embedder)
    retriever = Retriever(index, embedder)
    for mode in ("dense", "bm25", "hybrid"):
        hits = retriever.search("How long should spaghetti cook before draining?", mode, 2).hits
        assert hits[0].chunk.heading == "Boiling pasta", mode
    query = retriever.embed("insects on my tomato plants")
    exact = index.dense_search(query, len(index.chunks))
    fast = index.dense_search(query, len(index.chunks), backend="faiss")
    assert [i for i, _ in exact] == [i for i, _ in fast]
    assert np.allclose([s for _, s in exact], [s for _, s in fast], atol=1e-5)
    assert exact[0][0] == next(i for i, c in enumerate(index.chunks) if c.heading == "Pests")
    with pytest.raises(ValueError, match="--mode='sparse' is not one of: dense, bm25, hybrid"):
        retriever.search("x", "sparse")


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=60)
    assert [doc for doc, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


def test_coverage_is_low_for_words_the_notes_never_use(notes, embedder):
    index, _ = RagIndex.build(str(notes), embedder)
    retriever = Retriever(index, embedder)
    covered = retriever.search("Do tomatoes need deep watering?", "hybrid", 3)
    missing = retriever.search("How do I configure Kubernetes autoscaling for sourdough?", "hybrid", 3)
    assert covered.coverage > 0.9 and missing.coverage < 0.3
    assert covered.support("mean") == pytest.approx((covered.best_dense + covered.coverage) / 2)


def test_threshold_chosen_with_at_most_ten_percent_false_abstentions():
    scores = [0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.2, 0.1]
    answerable = [True] * 10 + [False] * 2
    t = choose_threshold(scores, answerable)
    rates = abstention(scores, answerable, t)
    assert rates["false_abstention_rate"] <= 0.10 and rates["correct_abstention_rate"] == 1.0
    assert 0.2 < t <= 0.325  # as high as allowed: one answerable question (0.3) may fall below it


def test_retrieval_metrics_and_gold_rank():
    gold = {"file": "notes/a.md", "heading": "H"}

    class Hit:
        def __init__(self, heading):
            self.chunk = Chunk("notes/a.md", ["T", heading], 1, 2, "x")

    assert first_gold_rank([Hit("X"), Hit("H")], gold) == 2 and first_gold_rank([Hit("X")], gold) is None
    metrics = retrieval_metrics([1, 2, None, 4])
    assert metrics == {"recall@1": 0.25, "recall@3": 0.5, "recall@5": 0.75, "mrr@10": round((1 + 0.5 + 0.25) / 4, 4)}


def test_answers_cite_numbered_passages_and_abstain_when_uncovered(notes, embedder, constant_llama):
    from llm_course.inference import GenerationEngine, SamplingParams

    index, _ = RagIndex.build(str(notes), embedder)
    engine = GenerationEngine.load(constant_llama, device="cpu")
    qa = NotesQA(Retriever(index, embedder), engine, top_k=2, params=SamplingParams(temperature=0, max_new_tokens=3),
                 answer="generate")  # fmt: skip
    answer = qa.ask("Should I knead the dough for ten minutes when baking bread?")
    assert not answer.abstained and answer.generated == "ok ok ok" and answer.stats.completion_tokens == 3
    # "ok ok ok" is not in the passages: dropped, and the answer falls back to the evidence
    assert [c.supported for c in answer.checked] == [False]
    assert answer.text.startswith("Knead the dough for ten minutes") and answer.text.endswith("[1]")
    assert answer.citations[0]["n"] == 1 and answer.citations[0]["heading"] == "Baking bread"
    assert answer.citations[0]["citation"].startswith(f"{notes}/01_cooking.md#baking-bread (lines ")
    assert answer.as_dict()["generated"]["not_in_notes"] == ["ok ok ok"] and answer.shown_generated == []
    refused = qa.ask("What reward model does RLHF with PPO use for alignment?")
    assert refused.abstained and refused.text == ABSTAIN and refused.stats is None
    assert refused.citations == [] and refused.as_dict()["closest_passages_not_cited"]  # labelled, not cited


def test_rag_commands_index_search_and_ask_json(notes, tmp_path, constant_llama, capsys):
    index_dir = tmp_path / "idx"
    run_cli("rag", "index", "--source", notes, "--index_dir", index_dir)
    assert "5 chunks from 2 files (2 embedded, 0 unchanged, 0 removed)" in capsys.readouterr().out
    run_cli("rag", "index", "--source", notes, "--index_dir", index_dir)
    assert "(0 embedded, 2 unchanged, 0 removed)" in capsys.readouterr().out
    run_cli("rag", "search", "--query", "aphids on tomatoes", "--source", notes, "--index_dir", index_dir)
    assert "#pests (lines" in capsys.readouterr().out.splitlines()[1]
    run_cli("rag", "ask", "--question", "How long should pasta cook?", "--source", notes, "--index_dir", index_dir,
            "--json", "true")  # fmt: skip
    result = json.loads(capsys.readouterr().out)  # extractive by default: no chat model is loaded
    assert "Cook it for nine minutes, then drain it in a colander. [1]" in result["answer"] and not result["abstained"]
    assert {e["citation"].split("#")[1] for e in result["evidence"]} == {"boiling-pasta (lines 7-7)",
                                                                         "boiling-pasta (lines 8-8)"}  # fmt: skip
    assert result["citations"][0]["heading"] == "Boiling pasta" and result["retrieval_ms"] > 0
    assert result["generation"] is None and result["coverage"] >= DEFAULT_MIN_SCORE  # "long" is not in the notes
    run_cli("rag", "ask", "--question", "How long should pasta cook?", "--source", notes, "--index_dir", index_dir,
            "--model", constant_llama, "--device", "cpu", "--answer", "both", "--json", "true")  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert "Cook it for nine minutes" in result["answer"] and result["generated"]["text"].startswith("ok ok")
    assert result["generated"]["shown"] == [] and result["generation"]["completion_tokens"] > 0
    with pytest.raises(SystemExit):
        run_cli("rag", "ask", "--question", "x", "--source", "null", "--index_dir", tmp_path / "none")
    assert "no index there" in capsys.readouterr().err


def test_a_local_cross_encoder_reorders_the_candidates(notes, embedder, tmp_path):
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from llm_course.assets import minilm_dir

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(tmp_path / "cross")
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(tmp_path / "cross")
    cross = CrossEncoder(str(tmp_path / "cross"))
    index, _ = RagIndex.build(str(notes), embedder)
    hits = Retriever(index, embedder, reranker=cross, candidates=5).search("tomato pests", "hybrid", 5).hits
    expected = cross.predict([("tomato pests", index.chunks[h.index].for_embedding()) for h in hits])
    assert [h.score for h in hits] == pytest.approx(sorted(map(float, expected), reverse=True), abs=1e-6)
    assert len(hits) == len(index.chunks)  # every candidate re-scored (5 chunks)


def test_ask_keeps_the_settings_the_index_was_built_with(notes, tmp_path, capsys):
    index_dir = tmp_path / "idx"
    run_cli("rag", "index", "--source", notes, "--index_dir", index_dir, "--max_tokens", "60")
    capsys.readouterr()
    run_cli("rag", "search", "--query", "aphids on tomatoes", "--source", notes, "--index_dir", index_dir)
    assert "#pests (lines" in capsys.readouterr().out.splitlines()[1]
    assert RagIndex.load(index_dir).settings["max_tokens"] == 60  # not rebuilt with the default 200


def test_open_index_keeps_an_index_settings_and_needs_one_without_a_source(notes, tmp_path):
    """``rag ask/search`` and ``serve --notes`` share it: an existing index is refreshed with its own settings."""
    from llm_course.errors import MissingFileError
    from llm_course.rag.commands import open_index

    index_dir = tmp_path / "idx"
    with pytest.raises(MissingFileError, match="no index there"):
        open_index(None, str(index_dir))
    run_cli("rag", "index", "--source", notes, "--index_dir", index_dir, "--max_tokens", "60", "--overlap_tokens", "8")
    built, embedder = open_index(notes, str(index_dir))
    assert (built.settings["max_tokens"], built.settings["overlap_tokens"]) == (60, 8)
    assert RagIndex.load(index_dir).settings["max_tokens"] == 60  # refreshed in place, not rebuilt with defaults
    loaded, _ = open_index(None, str(index_dir))
    assert [c.text for c in loaded.chunks] == [c.text for c in built.chunks]
    assert embedder.encode(["aphids"]).shape[1] == built.settings["dimension"]
