"""Module 6 benchmarks, run end to end on tiny models and records written by the test."""

import json

from conftest import instruction_rows, run_cli, write_jsonl


def test_bench_lora_memory_on_a_tiny_model(tiny_llama, tmp_path):
    run_cli("bench", "lora-memory", f"--output_dir={tmp_path}", f"--model={tiny_llama}", "--batch_size=2",
            "--seq_len=32", "--steps=1", "--lora_r=4")  # fmt: skip
    report = json.loads((tmp_path / "lora-memory.json").read_text())
    runs = report["runs"]
    assert list(runs) == ["full", "lora_fp32", "lora", "qlora"]
    assert runs["full"]["trainable_params"] == runs["full"]["total_params"]
    # 2 layers, r=4: q and o (32→32), k and v (32→16), gate, up and down (32↔64); A and B each
    lora_params = 2 * 4 * ((32 + 32) * 2 + (32 + 16) * 2 + (32 + 64) * 3)
    assert runs["lora"]["trainable_params"] == runs["qlora"]["trainable_params"] == lora_params
    assert all(r["peak_train_mb"] > 0 and r["step_seconds"] > 0 for r in runs.values())
    assert report["lora_vs_full"] == round(runs["lora"]["peak_train_mb"] / runs["full"]["peak_train_mb"], 3)
    assert (tmp_path / "lora-memory.png").stat().st_size > 10_000


def test_bench_quant_inference_on_a_tiny_model(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "records.jsonl", instruction_rows(260))
    run_cli("bench", "quant-inference", f"--output_dir={tmp_path}", f"--model={tiny_llama}", f"--data_file={data}",
            "--n_eval=10", "--max_new_tokens=4", "--modes=[fp32, nf4]")  # fmt: skip
    report = json.loads((tmp_path / "quant-inference.json").read_text())
    fp32, nf4 = report["runs"]["fp32"], report["runs"]["nf4"]
    assert report["settings"]["eval_examples"] == 10 and fp32["eval_tokens"] == nf4["eval_tokens"] > 0
    assert nf4["footprint_mb"] < fp32["footprint_mb"]
    assert abs(nf4["perplexity"] - fp32["perplexity"]) / fp32["perplexity"] < 0.2  # same model, coarser weights
    assert fp32["tokens_per_second"] > 0 and fp32["time_to_first_token_s"] > 0


def test_bench_sft_scores_the_held_out_split_before_and_after(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "records.jsonl", instruction_rows(460))
    run_cli("bench", "sft", f"--train_file={data}", f"--output_dir={tmp_path}", "--max_steps=6",
            f"--overrides=[--model.init_args.model_name_or_path={tiny_llama}, --trainer.precision=32-true, "
            "--trainer.val_check_interval=3, --trainer.accumulate_grad_batches=1, --model.init_args.max_new_tokens=4, "
            "--data.init_args.batch_size=4, --data.init_args.eval_batch_size=50]")  # fmt: skip
    report = json.loads((tmp_path / "sft.json").read_text())
    assert report["test_examples"] == 200 and report["train_records"] == 60
    assert report["optimizer_steps"] == 6 and report["examples_seen"] == 24
    assert report["test_loss_after"] < report["test_loss_before"]
    assert [e["step"] for e in report["history"]] == [3, 6]
    assert len(report["samples"]) == 2 and (tmp_path / "sft.png").exists()
