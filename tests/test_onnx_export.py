"""Module 7: ``llm-course export onnx``: the ONNX graph computes what PyTorch does, int8 is smaller, scoring works."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import NEGATIVE, POSITIVE, review_rows, write_jsonl
from llm_course.cli import main
from llm_course.errors import ConfigError, MissingDependencyError, MissingFileError, UserError
from llm_course.export import onnx_check as check
from llm_course.export.onnx import classifier_folder, onnx
from llm_course.export.onnx_check import ExportMismatchError, fidelity, raise_on_mismatch, read_check_file
from llm_course.export.onnx_classifier import OnnxClassifier, predict
from llm_course.truncation import encode_texts as encode

WORDS = sorted({w for text in POSITIVE + NEGATIVE for w in text.replace(",", " ").split()} | {"a", "number"})
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ","] + WORDS + [*"0123456789"] + [f"##{d}" for d in range(10)]
LONG = " ".join(["a wonderful film"] * 10 + ["terrible acting and a dull plot"])  # 36 words: truncated at 24 tokens
# /proc/cpuinfo of the AVX2-only AMD EPYC (Zen 2) where 8-bit int8 weights gave max |Δlogit| 0.709 (issue 24)
AVX2_CPUINFO = "processor\t: 0\nmodel name\t: AMD EPYC 7R32\nflags\t\t: fpu sse4_2 avx f16c fma bmi2 avx2 sha_ni\n\n"
NO_VNNI = {"reduce_range": True, "reason": "CPU has no AVX512-VNNI/AVX-VNNI/AMX: 7-bit weights avoid u8s8 saturation"}


def tiny_classifier(folder) -> str:
    """A 2-layer, 32-wide BERT with labels neg/pos and a word-level vocabulary, trained until it separates
    conftest's positive and negative reviews (so accuracies mean something)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)})
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, id2label={0: "neg", 1: "pos"},
                        label2id={"neg": 0, "pos": 1})  # fmt: skip
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    rows = review_rows(32)
    batch = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([r["label"] for r in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return tiny_classifier(tmp_path_factory.mktemp("run") / "hf_model")


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory) -> tuple[dict, str]:
    """One export, checked on 17 labelled reviews (labels as names, one long), 24 tokens head+tail, timed 3 times."""
    tmp = tmp_path_factory.mktemp("export")
    rows = [{"text": r["text"], "label": ["neg", "pos"][r["label"]]} for r in review_rows(16)]
    check_file = write_jsonl(tmp / "held.jsonl.gz", rows + [{"text": LONG, "label": "neg"}])
    out = tmp / "onnx"
    return onnx(model_dir, str(out), check_file=str(check_file), max_length=24, batch_size=8, repeats=3), str(out)


def torch_model(model_dir: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def test_export_matches_pytorch_and_int8_is_smaller(exported, model_dir):
    results, out = exported
    saved = json.loads((Path(out) / "export.json").read_text())
    assert saved["variants"] == results["variants"] and "machine" in saved and "onnxruntime" in saved["onnx_versions"]
    assert results["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert results["labels"] == ["neg", "pos"]
    assert results["check"] == {"source": str(Path(out).parent / "held.jsonl.gz"), "texts": 17, "labelled": True,
                                "atol": 1e-4, "passed": True}  # fmt: skip
    torch_row, fp32, int8 = (results["variants"][k] for k in ("pytorch", "onnx_fp32", "onnx_int8"))
    assert torch_row["accuracy"] >= 16 / 17  # the trained tiny model separates the reviews, so labels line up
    assert fp32["max_abs_logit_diff"] <= 1e-4 and fp32["agreement"] == 1.0 and fp32["accuracy"] == torch_row["accuracy"]
    assert 0 < int8["max_abs_logit_diff"] < 0.5 and abs(int8["accuracy"] - torch_row["accuracy"]) <= 2 / 17
    assert saved["int8"] == results["int8"] == check.int8_weight_range("auto")  # what this CPU needs, and why
    assert int8["size_mb"] < fp32["size_mb"]
    assert results["latency"]["batch_shape"][0] == 8 and results["latency"]["threads"][-1] == 1
    for row in results["variants"].values():
        assert set(row["latency_ms"]) == {str(n) for n in results["latency"]["threads"]}
        assert all(ms > 0 for ms in row["latency_ms"].values())
    written = {p.name for p in Path(out).iterdir()}
    assert {"model.onnx", "model.int8.onnx", "config.json", "tokenizer.json", "export.json"} <= written


def test_onnx_graph_takes_any_batch_and_length(exported, model_dir):
    """Dynamic axes: a batch of 3 texts of other lengths (one padded) gives PyTorch's logits."""
    import onnxruntime as ort

    _, out = exported
    model, tokenizer = torch_model(model_dir)
    batch = tokenizer(["a", LONG, "I loved every minute number 7"], padding=True, return_tensors="np")
    session = ort.InferenceSession(f"{out}/model.onnx", providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {k: v.astype(np.int64) for k, v in batch.items()})[0]
    with torch.no_grad():
        reference = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    assert onnx_logits.shape == (3, 2) and batch["input_ids"].shape[1] > 24
    assert np.abs(onnx_logits - reference).max() <= 1e-4


def test_onnx_classifier_predicts_what_torch_does(exported, model_dir):
    _, out = exported
    texts = [r["text"] for r in review_rows(12)] + [LONG]
    clf = OnnxClassifier(out)
    assert (clf.max_length, clf.truncation) == (24, "head_tail")  # read back from export.json
    assert clf.inputs([LONG])["input_ids"].shape == (1, 24)
    model, tokenizer = torch_model(model_dir)
    ids = encode(tokenizer, texts, 24, "head_tail")
    with torch.no_grad():
        probs = [model(input_ids=torch.tensor([i])).logits.softmax(-1)[0] for i in ids]
    predictions = clf.predict(texts, batch_size=5)
    assert [p["label"] for p in predictions] == [["neg", "pos"][int(p.argmax())] for p in probs]
    assert [p["score"] for p in predictions] == pytest.approx([float(p.max()) for p in probs], abs=1e-4)
    assert [p["label"] for p in predictions[:12]] == [["neg", "pos"][r["label"]] for r in review_rows(12)]
    int8 = OnnxClassifier(out, "model.int8.onnx").predict(texts)
    assert sum(a["label"] == b["label"] for a, b in zip(int8, predictions, strict=True)) >= 12


def test_predict_writes_jsonl_in_input_order(exported, tmp_path):
    _, out = exported
    (tmp_path / "texts.txt").write_text("a boring, awful mess\n\nbrilliant fun\n")
    rows = predict(out, texts=["great acting and a clever plot"], input_file=str(tmp_path / "texts.txt"),
                   output_file=str(tmp_path / "p.jsonl"))  # fmt: skip
    assert [r["text"] for r in rows] == ["great acting and a clever plot", "a boring, awful mess", "brilliant fun"]
    assert [r["label"] for r in rows] == ["pos", "neg", "pos"] and all(0.5 <= r["score"] <= 1 for r in rows)
    assert [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()] == rows
    with pytest.raises(ConfigError, match="nothing to classify"):
        predict(out)


def test_encode_keeps_the_head_or_head_and_tail(model_dir):
    _, tokenizer = torch_model(model_dir)
    head, tail = encode(tokenizer, [LONG], 12, "head")[0], encode(tokenizer, [LONG], 12, "head_tail")[0]
    assert tokenizer.decode(head) == "[CLS] a wonderful film a wonderful film a wonderful film a [SEP]"
    # head_tail: round(0.25 * 10) tokens from the start, the other 8 from the end
    assert tokenizer.decode(tail) == "[CLS] a wonderful wonderful film terrible acting and a dull plot [SEP]"


def test_missing_onnx_packages_say_how_to_install(model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'onnxruntime, not installed: pip install -e "\.\[onnx\]"'):
        onnx(model_dir, str(tmp_path / "out"))
    with pytest.raises(MissingDependencyError, match="onnxruntime"):
        OnnxClassifier(tmp_path)
    assert issubclass(MissingDependencyError, UserError) and not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    monkeypatch.delitem(sys.modules, "onnxruntime")
    with pytest.raises(MissingDependencyError, match="onnxscript, not installed: pip install onnxscript, or use --exp"):
        onnx(model_dir, str(tmp_path / "out"), exporter="dynamo")


def test_bad_model_dir_names_the_path_and_what_to_pass(model_dir, tmp_path):
    from transformers import BertConfig

    with pytest.raises(MissingFileError, match=r"--model_dir .*nope does not exist; pass the hf_model folder of a "
                                               r"Module 3 run, <run>/hf_model, which `llm-course fit --config "
                                               r"configs/imdb.yaml` saves"):  # fmt: skip
        onnx(str(tmp_path / "nope"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match=r"--model_dir .*empty has no config.json; pass .*<run>/hf_model"):
        onnx(str(tmp_path / "empty"), str(tmp_path / "out"))
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               architectures=["BertForMaskedLM"]).save_pretrained(tmp_path / "mlm")  # fmt: skip
    with pytest.raises(ConfigError, match=r"mlm holds a BertForMaskedLM, not a sequence classifier; pass .*hf_model"):
        onnx(str(tmp_path / "mlm"), str(tmp_path / "out"))
    assert classifier_folder(str(Path(model_dir).parent)) == Path(model_dir)  # a run folder holding hf_model/
    with pytest.raises(ConfigError, match="--max_length 65 is more than the model's 64 positions"):
        onnx(model_dir, str(tmp_path / "out"), max_length=65)


def test_check_helpers():
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    logits = reference + np.array([[0, 0], [0, 0], [-2, 0], [0, 1e-5]])  # the third prediction flips
    assert fidelity(reference, logits, np.array([0, 1, 0, 0])) == {"max_abs_logit_diff": 2.0, "agreement": 0.75,
                                                                   "accuracy": 0.5}  # fmt: skip
    raise_on_mismatch({"max_abs_logit_diff": 1e-5, "agreement": 1.0}, 1e-4, "m.onnx")  # within: no error
    with pytest.raises(ExportMismatchError, match=r"max \|logit difference\| 2 \(allowed 0.0001\).*75.00%"):
        raise_on_mismatch(fidelity(reference, logits, None), 1e-4, "m.onnx")


def test_read_check_file(tmp_path):
    rows = [{"text": f"t{i}", "label": ["neg", "pos"][i % 2] if i % 3 else i % 2} for i in range(50)]
    texts, labels = read_check_file(str(write_jsonl(tmp_path / "a.jsonl", rows)), ["neg", "pos"], max_samples=10)
    assert len(texts) == 10 and texts == sorted(texts, key=lambda t: int(t[1:]))  # a subset, in file order
    assert labels.tolist() == [int(t[1:]) % 2 for t in texts]
    assert read_check_file(str(write_jsonl(tmp_path / "b.jsonl", [{"text": "x"}])), ["neg", "pos"]) == (["x"], None)
    with pytest.raises(ConfigError, match=r"label 'meh' is not an id in \[0, 2\) nor one of the model's labels"):
        read_check_file(str(write_jsonl(tmp_path / "c.jsonl", [{"text": "x", "label": "meh"}])), ["neg", "pos"])
    with pytest.raises(ConfigError, match="row 1 has no 'text' string"):
        read_check_file(str(write_jsonl(tmp_path / "d.jsonl", [{"review": "x"}])), ["neg", "pos"])
    with pytest.raises(MissingFileError, match="--check_file: .*nope.jsonl does not exist"):
        read_check_file(str(tmp_path / "nope.jsonl"), ["neg", "pos"])


def test_cli_export_onnx(model_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    main(["export", "onnx", "--model_dir", model_dir, "--output_dir", str(out), "--quantize", "false",
          "--repeats", "2", "--max_length", "32"])  # fmt: skip
    table = capsys.readouterr().out
    assert "onnx_fp32" in table and "onnx_int8" not in table and not (out / "model.int8.onnx").exists()
    report = json.loads((out / "export.json").read_text())
    assert report["check"]["source"] == "built-in sentences" and not report["check"]["labelled"]
    assert report["variants"]["onnx_fp32"]["max_abs_logit_diff"] <= 1e-4
    assert "accuracy" not in report["variants"]["pytorch"]
    assert report["tokenization"]["max_length"] == 32
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "onnx", "--model_dir", str(tmp_path / "nope"), "--output_dir", str(out)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith(f"error: --model_dir {tmp_path / 'nope'} does not exist; pass")


def test_dynamo_exporter_matches_pytorch(model_dir, tmp_path):
    results = onnx(model_dir, str(tmp_path / "dynamo"), exporter="dynamo", quantize=False, repeats=1, max_length=32)
    assert results["variants"]["onnx_fp32"]["max_abs_logit_diff"] <= 1e-4
    assert results["variants"]["onnx_fp32"]["agreement"] == 1.0


def test_int8_weight_range_follows_the_cpu(tmp_path):
    def choice(cpuinfo: str | None, arch: str = "x86_64") -> dict:
        file = tmp_path / "cpuinfo"
        file.unlink(missing_ok=True)
        if cpuinfo is not None:
            file.write_text(cpuinfo)
        return check.int8_weight_range("auto", arch=arch, cpuinfo=file)

    assert choice(AVX2_CPUINFO) == choice(AVX2_CPUINFO.replace("avx2", "avx512f avx512bw avx512vl")) == NO_VNNI
    assert choice(AVX2_CPUINFO.replace("avx2", "avx2 avx512_vnni")) == {
        "reduce_range": False, "reason": "CPU has avx512_vnni: 8-bit weights, int8 products add in int32"}  # fmt: skip
    assert not choice(AVX2_CPUINFO.replace("avx2", "avx2 avx_vnni"))["reduce_range"]  # Alder Lake and later
    assert not choice(AVX2_CPUINFO.replace("avx2", "amx_bf16 amx_int8"))["reduce_range"]
    for unreadable in (None, "processor\t: 0\nmodel name\t: a container that hides its flags\n"):
        assert choice(unreadable) == {"reduce_range": True,
                                      "reason": f"no CPU flags readable from {tmp_path / 'cpuinfo'}: 7-bit "
                                                "weights, safe on every x86 CPU"}  # fmt: skip
    assert choice(None, arch="AMD64")["reduce_range"]  # Windows: no /proc/cpuinfo, the safe choice
    arm = {"reduce_range": False, "reason": "aarch64 CPU: 8-bit weights, as onnxruntime advises for ARM"}
    assert choice(None, arch="aarch64") == arm and not choice(None, arch="arm64")["reduce_range"]  # Linux, macOS
    unknown = "unknown CPU architecture 'riscv64': 7-bit weights, the safe choice"
    assert choice(None, "riscv64") == {"reduce_range": True, "reason": unknown}
    explicit = check.int8_weight_range(False, arch="x86_64", cpuinfo=tmp_path / "cpuinfo")
    assert explicit == {"reduce_range": False, "reason": "set by --reduce_range false"}  # the given value wins
    with pytest.raises(ConfigError, match="--reduce_range 'maybe' is not one of: auto, true, false"):
        check.int8_weight_range("maybe")


def avx2_logits(int8_file: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """What ``int8_file`` computes on an x86 CPU without VNNI: onnxruntime's AVX2 u8×s8 kernel (``vpmaddubsw``)
    adds each pair of products into an int16 that saturates. Runs in onnx's reference evaluator, MatMulInteger
    replaced by that arithmetic."""
    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class MatMulInteger(OpRun):
        def _run(self, a, b, a_zero_point=None, b_zero_point=None):
            assert a.dtype == np.uint8 and b.dtype == np.int8 and not np.any(b_zero_point) and a.shape[-1] % 2 == 0
            a, b = a.astype(np.int32), b.astype(np.int32)
            pairs = np.clip(a[..., 0::2, None] * b[0::2] + a[..., 1::2, None] * b[1::2], -(2**15), 2**15 - 1)
            return ((pairs.sum(-2) - int(a_zero_point) * b.sum(0)).astype(np.int32),)

    model = onnx.load(int8_file)
    for opset in model.opset_import:  # the evaluator has DequantizeLinear from opset 19 on; 19 only added types
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 19)
    return ReferenceEvaluator(model, new_ops=[MatMulInteger]).run(["logits"], inputs)[0]


def test_cpu_without_vnni_gets_7bit_weights_that_do_not_saturate(exported, model_dir, tmp_path, monkeypatch, capsys):
    """Auto on an AVX2-only x86 CPU (faked): 7-bit weights, recorded in export.json; run as that CPU's kernel runs
    them, they give what onnxruntime gives here, while 8-bit weights saturate past the 0.5 bound."""
    results, _ = exported
    (cpuinfo := tmp_path / "cpuinfo").write_text(AVX2_CPUINFO)
    monkeypatch.setattr(check, "CPUINFO", cpuinfo)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    out = tmp_path / "avx2"
    main(["export", "onnx", "--model_dir", model_dir, "--output_dir", str(out), "--check_file",
          results["check"]["source"], "--max_length", "24", "--batch_size", "8", "--repeats", "1"])  # fmt: skip
    assert "int8: reduce_range true (CPU has no AVX512-VNNI/AVX-VNNI/AMX" in capsys.readouterr().out
    report = json.loads((out / "export.json").read_text())
    assert report["int8"] == NO_VNNI
    int8, torch_row = report["variants"]["onnx_int8"], report["variants"]["pytorch"]
    assert 0 < int8["max_abs_logit_diff"] < 0.5 and abs(int8["accuracy"] - torch_row["accuracy"]) <= 2 / 17

    fp32 = OnnxClassifier(out)
    inputs = fp32.inputs([r["text"] for r in review_rows(16)] + [LONG])
    reference, here = fp32.run(inputs), OnnxClassifier(out, "model.int8.onnx").run(inputs)
    assert np.abs(avx2_logits(out / "model.int8.onnx", inputs) - here).max() <= 1e-4  # 2 × 255 × 64 < 2**15
    eight_bit = check.quantize_int8(out / "model.onnx", tmp_path / "eight_bit.onnx", reduce_range=False)
    assert np.abs(avx2_logits(eight_bit, inputs) - reference).max() > 0.5  # issue 24's 0.709 on an AVX2 EPYC
