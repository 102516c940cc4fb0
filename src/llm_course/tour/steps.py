"""The tour's steps: one function per module, each running the module's real entry points on a short setting.

Training goes through the course's LightningCLI (:class:`~llm_course.trainer_cli.CourseCLI`, as ``llm-course fit``
and the benchmarks run it), the other commands through the CLI's own dispatcher (``merge``, ``serve``, ``export
onnx``, ``rag index/ask``), Module 5 and the server in subprocesses. Each step returns a dict: ``headline`` (one
line), ``metrics`` (the numbers the report lists and the test checks), ``plot`` (data for its figure, drawn by
report.py) and ``files`` (what it wrote, for the report and for later steps).
"""

import contextlib
import copy
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from llm_course.errors import MissingFileError
from llm_course.tour import reviews
from llm_course.tour.processes import StepError, run_process, serving

QUESTION = "What does gradient clipping protect against?"


class Skipped(Exception):
    """The step needs the result of an earlier step that failed or was left out."""


@dataclass
class Tour:
    """What the steps share: where to write, the mode, the course folder and the results of finished steps."""

    output_dir: Path
    tiny: bool = False
    imdb_dir: str | None = None
    root: Path = field(default_factory=lambda: course_root())
    done: dict[str, dict[str, Any]] = field(default_factory=dict)

    def config(self, name: str) -> str:
        return str(self.root / "configs" / name)

    def folder(self, name: str) -> Path:
        path = self.output_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def need(self, step: str, what: str) -> dict[str, Any]:
        if step not in self.done:
            raise Skipped(f"needs {what} from step {step}, which did not complete in this run")
        return self.done[step]

    def tiny_model(self, kind: str) -> str:
        from llm_course import tiny

        return {"bert": tiny.tiny_bert, "llama": tiny.tiny_lm}[kind](self.output_dir / "tiny_models" / kind)


def course_root() -> Path:
    """The course folder with ``configs/`` and ``notes/``: the working directory, else the source checkout."""
    for folder in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (folder / "configs" / "linreg.yaml").is_file() and (folder / "notes").is_dir():
            return folder
    raise MissingFileError("llm-course tour reads the course's configs/ and notes/: run it from the repository root "
                           "(the folder with README.md)")  # fmt: skip


def fit_and_test(args: list[str], before_fit: Any = None) -> Any:
    from llm_course.bench import fit_then_test

    return fit_then_test([str(a) for a in args], before_fit)


def command(*args: Any) -> Any:
    """One ``llm-course`` command that is not a trainer command, dispatched as ``llm_course.cli.main`` does it."""
    from llm_course.cli import run_function_command

    return run_function_command([str(a) for a in args])


def printed(*args: Any) -> str:
    """What :func:`command` prints on stdout."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        command(*args)
    return buffer.getvalue()


def curve(history: list[dict[str, float]], *keys: str) -> list[dict[str, float]]:
    return [{k: e[k] for k in ("epoch", "step", *keys) if k in e} for e in history]


def linreg(tour: Tour) -> dict[str, Any]:
    """Module 1: the same linear regression by a hand-written loop and by the Trainer, from the same weights."""
    import torch
    from torch.nn import functional as F

    from llm_course.trainer_cli import CourseCLI

    epochs, root = (3 if tour.tiny else 10), tour.folder("m1_linreg")
    cli = CourseCLI(["--config", tour.config("linreg.yaml"), f"--trainer.default_root_dir={root}",
                     f"--trainer.max_epochs={epochs}"], run=False)  # fmt: skip
    data, task = cli.datamodule, cli.model
    data.setup("fit")
    net = copy.deepcopy(task.net)  # the starting weights, for the hand loop
    cli.trainer.fit(task, datamodule=data)
    trained = [p.detach().clone() for p in task.net.parameters()]

    optimizer = task.optimizer(list(net.parameters()))  # the optimizer of the YAML: SGD, lr 0.05, momentum 0.9
    loader = data.train_dataloader()
    net.train()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # the epoch's order, as the Trainer sets it
        for x, y in loader:
            loss = F.mse_loss(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    diff = max(float((a - b).abs().max()) for a, b in zip(net.parameters(), trained, strict=True))

    test = cli.trainer.test(task, datamodule=data, ckpt_path="best", verbose=False)[0]
    true = [*data.true_weight.tolist(), data.true_bias]
    hand, lit = (torch.cat([p.detach().reshape(-1) for p in params]).tolist() for params in (net.parameters(), trained))
    error = max(abs(a - b) for a, b in zip(lit, true, strict=True))
    steps = cli.trainer.global_step
    return {
        "headline": f"hand loop = Trainer to {diff:.1e} after {steps} SGD steps; test R² {test['test/r2']:.4f}, "
        f"weights within {error:.3f} of the true ones",
        "metrics": {"epochs": epochs, "optimizer_steps": steps, "max_abs_diff_hand_vs_trainer": diff,
                    "max_abs_error_vs_true_weights": error, "test_mse": test["test/loss"], "test_r2": test["test/r2"]},
        "plot": {"true": true, "hand": hand, "trainer": lit},
        "files": {"run": cli.trainer.log_dir},
    }  # fmt: skip


def cnn(tour: Tour) -> dict[str, Any]:
    """Module 2: the small CNN of configs/mnist.yaml on the 5,000 embedded MNIST digits, a few epochs."""
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=8", "--trainer.limit_val_batches=2"]
    run = fit_and_test(["--config", tour.config("mnist.yaml"), f"--trainer.default_root_dir={tour.folder('m2_cnn')}",
                        *(short if tour.tiny else ["--trainer.max_epochs=5"])])  # fmt: skip
    data, cm = run.cli.datamodule, run.cli.model.confusion_matrix
    acc, n, epochs = run.test["test/acc"], int(cm.sum()), len(run.history)
    return {
        "headline": f"test accuracy {acc:.4f} on {n} held-out digits after {epochs} epoch{'s' * (epochs != 1)} on "
        f"{len(data.train_set):,} training digits ({run.train_seconds:.0f} s)",
        "metrics": {"test_acc": acc, "test_f1_macro": run.test["test/f1"], "epochs": len(run.history),
                    "train_digits": len(data.train_set), "test_digits": n,
                    "train_seconds": round(run.train_seconds, 1)},
        "plot": {"history": curve(run.history, "val/acc", "val/f1"), "confusion": cm.tolist(),
                 "classes": list(data.class_names)},
        "files": {"run": run.cli.trainer.log_dir},
    }  # fmt: skip


def text(tour: Tour) -> dict[str, Any]:
    """Module 3: fine-tune the MiniLM classifier of configs/imdb.yaml (a tiny BERT with ``--tiny``)."""
    train, test, source = reviews.text_files(tour.folder("data"), tour.tiny, tour.imdb_dir)
    root = tour.folder("m3_text")
    args = ["--config", tour.config("imdb.yaml"), f"--trainer.default_root_dir={root}",
            f"--data.init_args.train_file={train}", f"--data.init_args.test_file={test}",
            "--data.init_args.val_fraction=0.1", f"--data.init_args.cache={root / 'cache'}",
            "--trainer.val_check_interval=1.0",
            f"--trainer.max_epochs={1 if tour.imdb_dir else 2}"]  # fmt: skip
    if tour.tiny:
        args += [f"--model.init_args.model_name_or_path={tour.tiny_model('bert')}", "--data.init_args.batch_size=16"]
    run = fit_and_test(args)
    trainer, cm, labels = run.cli.trainer, run.cli.model.confusion_matrix, run.cli.datamodule.label_names
    f1, acc, n = run.test["test/f1"], run.test["test/acc"], int(cm.sum())
    trained = len(run.cli.datamodule.splits["train"])
    return {
        "headline": f"test F1 {f1:.3f}, accuracy {acc:.3f} on {n} reviews after {trained} training reviews "
        f"({trainer.precision}, {run.train_seconds:.0f} s)",
        "metrics": {"data": source, "model": run.cli.model.hparams.model_name_or_path, "test_f1": f1, "test_acc": acc,
                    "test_reviews": n, "train_reviews": trained,
                    "precision": str(trainer.precision), "train_seconds": round(run.train_seconds, 1)},
        "plot": {"history": curve(run.history, "val/f1", "val/acc"), "confusion": cm.tolist(), "classes": labels},
        "files": {"run": trainer.log_dir, "hf_model": str(Path(trainer.log_dir) / "hf_model"), "check_file": str(test)},
    }  # fmt: skip


def training(tour: Tour) -> dict[str, Any]:
    """Module 4: ``precision: auto`` and a run with gradient clipping and accumulation, on the Module 2 CNN."""
    from llm_course.trainer_cli import auto_precision

    clip, accumulate, probe = 0.5, 4, GradNorms()
    short = ["--trainer.limit_train_batches=16", "--trainer.limit_val_batches=2"] if tour.tiny else []
    root = tour.folder("m4_training")
    run = fit_and_test(["--config", tour.config("mnist.yaml"), f"--trainer.default_root_dir={root}",
                        "--trainer.precision=auto", f"--trainer.gradient_clip_val={clip}",
                        f"--trainer.accumulate_grad_batches={accumulate}", "--trainer.max_epochs=1", *short],
                       before_fit=lambda cli: cli.trainer.callbacks.append(probe))  # fmt: skip
    trainer = run.cli.trainer
    batches, steps = int(trainer.num_training_batches), trainer.global_step
    reason = auto_precision("auto")[1]  # what auto chose, and why
    before, after = max(probe.before), max(probe.after)
    return {
        "headline": f"precision auto → {trainer.precision}; {steps} optimizer steps for {batches} batches "
        f"(accumulate {accumulate}); gradient norm ≤ {after:.3f} after clipping at {clip} (up to {before:.2f} before)",
        "metrics": {"precision": str(trainer.precision), "precision_reason": reason, "batches": batches,
                    "accumulate_grad_batches": accumulate, "optimizer_steps": steps, "gradient_clip_val": clip,
                    "max_grad_norm_before_clip": before, "max_grad_norm_after_clip": after,
                    "test_acc": run.test["test/acc"]},
        "plot": {"before": probe.before, "after": probe.after, "clip": clip},
        "files": {"run": trainer.log_dir},
    }  # fmt: skip


class GradNorms(L.Callback):
    """The total gradient norm of each optimizer step before clipping (where the NaN guard logs it) and after (the
    gradients the optimizer stepped with, still there at the end of the batch that stepped)."""

    def __init__(self) -> None:
        self.before: list[float] = []
        self.after: list[float] = []
        self._step = 0

    @staticmethod
    def norm(module: L.LightningModule) -> float:
        import torch

        grads = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.before.append(self.norm(pl_module))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step != self._step:
            self._step = trainer.global_step
            self.after.append(self.norm(pl_module))


def next_version(root: Path) -> int:
    versions = [int(p.name.split("_")[1]) for p in (root / "tensorboard_logs").glob("version_*")]
    return max(versions, default=-1) + 1


def ddp(tour: Tour) -> dict[str, Any]:
    """Module 5: fit and test linreg on 2 CPU processes (DDP over gloo), then test the checkpoint on 1 process."""
    import torch

    from llm_course.trainer_cli import CourseCLI

    root, epochs = tour.folder("m5_ddp"), (1 if tour.tiny else 3)
    common = ["--config", tour.config("linreg.yaml"), f"--trainer.default_root_dir={root}",
              "--trainer.accelerator=cpu", "--trainer.precision=32-true"]  # fmt: skip
    two = [*common, "--trainer.devices=2", "--trainer.strategy=ddp"]
    version = next_version(root)
    fit_run, test_run = (root / "tensorboard_logs" / f"version_{version + i}" for i in (0, 1))
    best = fit_run / "checkpoints" / "best.ckpt"
    stages = root / "stages.json"
    commands = [["fit", *two, f"--trainer.max_epochs={epochs}"], ["test", *two, f"--ckpt_path={best}"]]
    stages.write_text(json.dumps(commands))
    # one thread per process: two processes on two cores
    run_process([sys.executable, "-m", "llm_course.tour.stages", str(stages)], 600, {"OMP_NUM_THREADS": "1"})
    two_test = json.loads((test_run / "metrics.json").read_text())
    steps = torch.load(fit_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"]

    one = CourseCLI(["test", *common, "--trainer.devices=1", f"--ckpt_path={best}"])
    one_test = {k: float(v) for k, v in one.trainer.callback_metrics.items() if k.startswith("test/")}
    diff = max(abs(two_test[k] - v) for k, v in one_test.items())
    one_steps = math.ceil(len(one.datamodule.train_set) / one.datamodule.hparams.batch_size)
    return {
        "headline": f"2 processes: {steps // epochs} optimizer steps per epoch (1 process: {one_steps}); test metrics "
        f"on 2 processes = 1 process (max |Δ| {diff:.1e}), every test row counted once",
        "metrics": {"processes": 2, "backend": "gloo", "epochs": epochs, "steps_per_epoch_2_processes": steps // epochs,
                    "steps_per_epoch_1_process": one_steps, "test_loss_2_processes": two_test["test/loss"],
                    "test_loss_1_process": one_test["test/loss"], "max_abs_diff_test_metrics": diff},
        "files": {"fit_run": str(fit_run), "test_run": str(test_run)},
    }  # fmt: skip


def lora(tour: Tour) -> dict[str, Any]:
    """Module 6: LoRA on SmolLM2-135M (a tiny Llama with ``--tiny``) to answer a review's sentiment, then merge."""
    root = tour.folder("m6_lora")
    held, steps = (8, 4) if tour.tiny else (16, 16)
    rows = reviews.instructions(reviews.reviews(4 * steps + 2 * held, seed=3))
    records = reviews.write_jsonl(root / "instructions.jsonl", rows)
    model = tour.tiny_model("llama") if tour.tiny else "smollm2-135m-instruct"
    before: dict[str, float] = {}
    run = fit_and_test(["--config", tour.config("sft_lora.yaml"), f"--trainer.default_root_dir={root}",
                        f"--model.init_args.model_name_or_path={model}", f"--data.init_args.train_file={records}",
                        f"--data.init_args.val_size={held}", f"--data.init_args.test_size={held}",
                        "--data.init_args.max_length=512", "--data.init_args.batch_size=4",
                        "--data.init_args.eval_batch_size=8", f"--trainer.max_steps={steps}",
                        "--trainer.accumulate_grad_batches=1", f"--trainer.val_check_interval={steps}",
                        "--model.init_args.sample_prompts=[]", "--model.init_args.merge_on_fit_end=false"],
                       before_fit=lambda cli: before.update(cli.trainer.test(cli.model, datamodule=cli.datamodule,
                                                                             verbose=False)[0]))  # fmt: skip
    run_dir, task = Path(run.cli.trainer.log_dir), run.cli.model
    merged = root / "merged"
    command("merge", "--adapter_dir", run_dir / "adapter", "--output_dir", merged)
    gap = merge_gap(task.net, merged, reviews.question(reviews.reviews(1, seed=5)[0]["text"]))
    trainable = sum(p.numel() for p in task.net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in task.net.parameters())
    loss0, loss1 = before["test/loss"], run.test["test/loss"]
    return {
        "headline": f"held-out response loss {loss0:.3f} → {loss1:.3f} after {steps} LoRA steps ({trainable:,} of "
        f"{total:,} weights trained); merged = base + adapter (max |Δlogit| {gap:.1e})",
        "metrics": {"model": model, "optimizer_steps": steps, "test_records": held, "test_loss_before": loss0,
                    "test_loss_after": loss1, "trainable_params": trainable, "total_params": total,
                    "merge_max_abs_logit_diff": gap},
        "plot": {"before": loss0, "after": loss1},
        "files": {"run": str(run_dir), "adapter": str(run_dir / "adapter"), "merged": str(merged)},
    }  # fmt: skip


def merge_gap(net: Any, merged: Path, instruction: str) -> float:
    """Largest |logit| difference between the adapter on its base and the merged model, on one prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    from llm_course.sft.prompts import encode, load_tokenizer, prompt_text

    tokenizer = load_tokenizer(str(merged))
    ids = torch.tensor([encode(tokenizer, prompt_text(tokenizer, [{"role": "user", "content": instruction}]))])
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    net.eval()
    with torch.inference_mode():
        return float((net(input_ids=ids).logits.float() - plain(input_ids=ids).logits.float()).abs().max())


def serve(tour: Tour) -> dict[str, Any]:
    """Module 7: ``llm-course serve`` on the merged model, on 127.0.0.1, asked through the official ``openai``
    client about reviews it has not seen."""
    import openai

    merged = tour.need("m6_lora", "the merged model")["files"]["merged"]
    argv = ["serve", "--model", merged, "--ui", "false", "--temperature", "0", "--max_new_tokens", "8"]
    asked, right, first_token = reviews.reviews(2 if tour.tiny else 6, seed=4), 0, []
    with serving(argv, timeout=300) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        replies = []
        for row in asked:
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": reviews.question(row["text"])}], max_tokens=4,
                temperature=0,
            )  # fmt: skip
            text = reply.choices[0].message.content or ""
            replies.append(json.dumps(text))  # quoted: a tiny model's reply may be blank
            right += ("positive" if row["label"] else "negative") in text.lower()
            first_token.append(reply.model_extra["timings"]["time_to_first_token_s"])
    return {
        "headline": f"{model} at {url}/v1: {right}/{len(asked)} unseen reviews labelled right through the openai "
        f"client; first token in {1000 * min(first_token):.0f} ms",
        "metrics": {"model_id": model, "url": f"{url}/v1", "questions": len(asked), "right": right,
                    "first_token_ms_best": round(1000 * min(first_token), 1), "replies": replies},
        "files": {"served": merged},
    }  # fmt: skip


def onnx(tour: Tour) -> dict[str, Any]:
    """Module 7: ``llm-course export onnx`` on the Module 3 classifier, checked against PyTorch on its test reviews."""
    m3 = tour.need("m3_text", "the Module 3 classifier")["files"]
    out = tour.folder("m7_onnx")
    command("export", "onnx", "--model_dir", m3["hf_model"], "--output_dir", out, "--check_file", m3["check_file"],
            "--max_check_samples", 64 if tour.tiny else 200, "--repeats", 3 if tour.tiny else 10)  # fmt: skip
    report = json.loads((out / "export.json").read_text())
    rows, threads = report["variants"], report["latency"]["threads"]
    fp32, int8 = rows["onnx_fp32"], rows.get("onnx_int8", {})
    n = str(threads[0])
    return {
        "headline": f"ONNX fp32 = PyTorch (max |Δlogit| {fp32['max_abs_logit_diff']:.1e}, same predictions); int8 "
        f"{int8.get('size_mb', float('nan')):.1f} MB vs {rows['pytorch']['size_mb']:.1f} MB, "
        f"{int8.get('agreement', float('nan')):.1%} of predictions unchanged",
        "metrics": {"check_texts": report["check"]["texts"], "fp32_max_abs_logit_diff": fp32["max_abs_logit_diff"],
                    "fp32_agreement": fp32["agreement"], "int8_agreement": int8.get("agreement"),
                    "size_mb": {k: v["size_mb"] for k, v in rows.items()},
                    f"latency_ms_{n}_threads": {k: v["latency_ms"][n] for k, v in rows.items()},
                    "int8_weights": report.get("int8", {}).get("reason")},
        "plot": {"latency_ms": {k: v["latency_ms"][n] for k, v in rows.items()}, "threads": threads[0],
                 "size_mb": {k: v["size_mb"] for k, v in rows.items()}},
        "files": {"export": str(out), "export_json": str(out / "export.json")},
    }  # fmt: skip


def rag(tour: Tour) -> dict[str, Any]:
    """Module 8: ``llm-course rag index`` over the notes (one note with ``--tiny``), then ``rag ask`` one question."""
    notes = tour.root / "notes"
    with contextlib.suppress(ValueError):  # cited as notes/..., as `llm-course rag ask` run from the root cites them
        notes = notes.relative_to(Path.cwd())
    source = notes / "04_training_optimization.md" if tour.tiny else notes
    index_dir = tour.folder("m8_rag") / "index"
    indexed = printed("rag", "index", "--source", source, "--index_dir", index_dir)
    chunks = re.search(r"(\d+) chunks from (\d+) files", indexed)
    text = printed("rag", "ask", "--question", QUESTION, "--source", source, "--index_dir", index_dir, "--json", "true")
    answer = json.JSONDecoder().raw_decode(text[text.index("{") :])[0]
    if answer["abstained"] or not answer["evidence"]:
        raise StepError(f"the notes' answer to {QUESTION!r} came with no evidence (abstained: {answer['abstained']})")
    cited = [c["citation"] for c in answer["citations"]]
    return {
        "headline": f"{len(answer['evidence'])} evidence sentences from {len(cited)} cited passages, first "
        f"{cited[0]}; coverage {answer['coverage']:.2f}",
        "metrics": {"question": QUESTION, "chunks": int(chunks.group(1)) if chunks else None,
                    "files": int(chunks.group(2)) if chunks else None, "coverage": answer["coverage"],
                    "abstained": answer["abstained"],
                    "evidence": [f"{e['text']} — {e['citation']}" for e in answer["evidence"]], "citations": cited},
        "files": {"index": str(index_dir)},
    }  # fmt: skip
