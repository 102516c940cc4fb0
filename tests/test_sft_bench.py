"""Module 6 benchmarks, run end to end on tiny models and records written by the test."""

import json
import math
import time

import pytest
import torch

from conftest import instruction_rows, run_cli, save_tiny_lm, write_jsonl
from llm_course.sft.probes import timed_generate


@pytest.fixture(scope="module")
def llama_512(tmp_path_factory) -> str:
    """6.4M parameters: big enough that a full fine-tune's gradients and AdamW moments (12 bytes per parameter,
    74 MiB) stand clear of the resident-set noise and of the bf16 kernels' workspace (tens of MiB on a CPU),
    small enough for 4 processes."""
    return save_tiny_lm(tmp_path_factory.mktemp("llama_512"), "llama", width=512, mlp=3 * 512)


@pytest.fixture(scope="module")
def llama_64(tmp_path_factory) -> str:
    """On a CPU with AVX512-BF16, bitsandbytes' 4-bit inference kernel needs ``in_features`` to be a multiple of
    its block size (64): ``tiny_llama`` (32 wide) fails there."""
    return save_tiny_lm(tmp_path_factory.mktemp("llama_64"), "llama", width=64, mlp=3 * 64)


def test_bench_lora_memory_lora_peaks_below_the_full_finetune(llama_512, tmp_path):
    run_cli("bench", "lora-memory", f"--output_dir={tmp_path}", f"--model={llama_512}", "--batch_size=2",
            "--seq_len=32", "--steps=1", "--lora_r=4")  # fmt: skip
    report = json.loads((tmp_path / "lora-memory.json").read_text())
    runs = report["runs"]
    assert list(runs) == ["full", "lora_fp32", "lora", "qlora"]
    assert runs["full"]["trainable_params"] == runs["full"]["total_params"]
    # 2 layers, r=4: q and o (512→512), k and v (512→256: 2 of 4 heads), gate, up and down (512↔1536); A and B
    lora_params = 2 * 4 * ((512 + 512) * 2 + (512 + 256) * 2 + (512 + 1536) * 3)
    assert runs["lora"]["trainable_params"] == runs["qlora"]["trainable_params"] == lora_params
    full = runs["full"]["peak_train_mb"]
    optimizer_state_mb = 12 * runs["full"]["trainable_params"] / 2**20  # gradient + two Adam moments, fp32
    for mode in ("lora_fp32", "lora", "qlora"):  # frozen weights: no gradient, no optimizer state
        assert runs[mode]["peak_train_mb"] < full - optimizer_state_mb / 2, (mode, runs[mode]["peak_train_mb"], full)
    assert report["lora_vs_full"] == round(runs["lora"]["peak_train_mb"] / full, 3) < 1
    assert (tmp_path / "lora-memory.png").stat().st_size > 10_000


def test_bench_quant_inference_on_a_tiny_model(llama_64, tmp_path):
    data = write_jsonl(tmp_path / "records.jsonl", instruction_rows(260))
    run_cli("bench", "quant-inference", f"--output_dir={tmp_path}", f"--model={llama_64}", f"--data_file={data}",
            "--n_eval=10", "--max_new_tokens=4", "--modes=[fp32, nf4]")  # fmt: skip
    report = json.loads((tmp_path / "quant-inference.json").read_text())
    fp32, nf4 = report["runs"]["fp32"], report["runs"]["nf4"]
    assert report["settings"]["eval_examples"] == 10 and fp32["eval_tokens"] == nf4["eval_tokens"] > 0
    assert nf4["footprint_mb"] < fp32["footprint_mb"]
    assert abs(nf4["perplexity"] - fp32["perplexity"]) / fp32["perplexity"] < 0.2  # same model, coarser weights
    for run in (fp32, nf4):
        assert run["decode_tokens_per_second"] > 0 and run["time_to_first_token_s"] > 0 and run["prompt_tokens"] > 0
        assert "tokens_per_second" not in run  # the old number mixed prefill and decode


class SlowPrefill:
    """Stands in for a model: 0.5 s to read the prompt, then a token every 5 ms."""

    def generate(self, input_ids, max_new_tokens, streamer, **kwargs):
        streamer.put(input_ids)
        time.sleep(0.5)
        for _ in range(max_new_tokens):
            time.sleep(0.005)
            streamer.put(torch.tensor([7]))
        streamer.end()
        return torch.cat([input_ids, torch.full((1, max_new_tokens), 7)], dim=1)


def test_time_to_first_token_and_decode_speed_are_timed_apart():
    out, first, decode = timed_generate(SlowPrefill(), {"input_ids": torch.tensor([[1, 2, 3]])}, 21, None)
    assert out.shape == (1, 24)
    assert 0.5 <= first < 0.9  # the prompt and the first token
    # 20 tokens after the first, 5 ms each: at most 200/s (sleeps overshoot); the old total/tokens gave about 35/s
    assert 80 < decode <= 200
    assert math.isnan(timed_generate(SlowPrefill(), {"input_ids": torch.tensor([[1]])}, 1, None)[2])


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
