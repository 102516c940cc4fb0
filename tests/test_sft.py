"""Module 6: prompt masking, LoRA identities, adapters, quantized training, and the SFT run end to end."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import byte_tokenizer, instruction_rows, load_state, run_cli, run_dir, write_jsonl
from llm_course.sft import CausalLMFineTuner, InstructionDataModule
from llm_course.sft.lora import add_lora, linear_layer_names, load_causal_lm, lora_targets
from llm_course.sft.prompts import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_WITH_INPUT,
    IGNORE_INDEX,
    encode,
    prompt_text,
    tokenize_record,
)


def split(tokenizer, example):
    """Decoded prompt part (labels -100) and response part of a tokenized example."""
    ids, labels = example["input_ids"], example["labels"]
    prompt = [t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE_INDEX]
    response = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert response == [lab for lab in labels if lab != IGNORE_INDEX]  # labels are the ids themselves where kept
    return tokenizer.decode(prompt), tokenizer.decode(response)


def test_chat_template_masks_exactly_the_prompt():
    tokenizer = byte_tokenizer()
    record = {"instruction": "Say hi.", "input": "", "output": "Hello!"}
    example = tokenize_record(tokenizer, record, max_length=512)
    prompt, response = split(tokenizer, example)
    assert prompt == prompt_text(tokenizer, [{"role": "user", "content": "Say hi."}])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert response == "Hello!<|im_end|>"  # the reply and its end-of-turn EOS, no trailing newline
    full = tokenizer.apply_chat_template([{"role": "user", "content": "Say hi."},
                                          {"role": "assistant", "content": "Hello!"}], tokenize=False)  # fmt: skip
    assert tokenizer.decode(example["input_ids"]) == full.rstrip("\n")
    assert example["attention_mask"] == [1] * len(example["input_ids"])


def test_multi_turn_chat_learns_every_reply_and_no_user_turn():
    tokenizer = byte_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                {"role": "assistant", "content": "6"}]  # fmt: skip
    example = tokenize_record(tokenizer, {"messages": messages}, max_length=512)
    labelled = [t if lab != IGNORE_INDEX else None for t, lab in zip(example["input_ids"], example["labels"],
                                                                       strict=True)]  # fmt: skip
    spans, current = [], []
    for t in [*labelled, None]:
        if t is None and current:
            spans.append(tokenizer.decode(current))
            current = []
        elif t is not None:
            current.append(t)
    assert spans == ["4<|im_end|>\n", "6<|im_end|>"]


def test_alpaca_prompt_without_chat_template():
    tokenizer = byte_tokenizer(chat_template=None)
    plain = tokenize_record(tokenizer, {"instruction": "Say hi.", "output": "Hello!"}, max_length=512)
    assert split(tokenizer, plain) == (ALPACA_PROMPT.format(instruction="Say hi."), "Hello!<|im_end|>")
    record = {"instruction": "Translate.", "input": "chat", "output": "cat"}
    with_input = tokenize_record(tokenizer, record, max_length=512)
    assert split(tokenizer, with_input) == (ALPACA_PROMPT_WITH_INPUT.format(instruction="Translate.", input="chat"),
                                            "cat<|im_end|>")  # fmt: skip


def test_alpaca_fields_stay_apart_and_bos_is_added_once():
    tokenizer = byte_tokenizer(chat_template=None)
    record = {"instruction": "Read this.\n\nThen answer.", "input": "", "output": "ok"}
    prompt, _ = split(tokenizer, tokenize_record(tokenizer, record, max_length=512))
    assert prompt == ALPACA_PROMPT.format(instruction="Read this.\n\nThen answer.")  # a blank line is not an input
    with pytest.raises(ValueError, match=r"turns \['system', 'user', 'assistant'\] needs a tokenizer with a chat"):
        tokenize_record(tokenizer, {"messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hi"},
                                                 {"role": "assistant", "content": "Hello"}]}, 512)  # fmt: skip

    tokenizer.add_bos_token = True  # Llama-style: BOS first, unless the template wrote it already
    example = tokenize_record(tokenizer, record, max_length=512)
    assert example["input_ids"][0] == tokenizer.bos_token_id and example["labels"][0] == IGNORE_INDEX
    assert example["input_ids"].count(tokenizer.bos_token_id) == 1
    assert encode(tokenizer, "<|im_start|>hi") == tokenizer("<|im_start|>hi", add_special_tokens=False)["input_ids"]
    assert encode(tokenizer, "hi")[0] == tokenizer.bos_token_id


def test_bad_record_names_the_fields():
    with pytest.raises(ValueError, match="instruction, input, output"):
        tokenize_record(byte_tokenizer(), {"question": "?", "answer": "!"}, max_length=64)


def test_datamodule_splits_filters_truncates_and_pads(tmp_path, tiny_llama):
    train = write_jsonl(tmp_path / "train.jsonl.gz", instruction_rows(50))
    dm = InstructionDataModule(tiny_llama, train_file=str(train), where={"status": "ok"}, val_size=5, test_size=5,
                               batch_size=4, max_length=512, group_by_length=False)  # fmt: skip
    dm.setup("fit")
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 30, "validation": 5, "test": 5}  # 40 records have status ok
    again = InstructionDataModule(tiny_llama, train_file=str(train), where={"status": "ok"}, val_size=5, test_size=5)
    again.setup("fit")
    assert again.splits["validation"]["input_ids"][:] == dm.splits["validation"]["input_ids"][:]  # seeded
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    pads = batch["attention_mask"] == 0
    assert pads.any() and (batch["labels"][pads] == IGNORE_INDEX).all()

    # prompts of "Double N." are one byte longer for N >= 10; cut there, only the short ones keep a response token
    full = [tokenize_record(byte_tokenizer(), r, 512)["labels"] for r in instruction_rows(50)]
    prompt_lengths = [next(i for i, label in enumerate(labels) if label != IGNORE_INDEX) for labels in full]
    cut = InstructionDataModule(tiny_llama, train_file=str(train), val_size=0, max_length=prompt_lengths[11])
    cut.setup("fit")
    expected = sum(n < prompt_lengths[11] for n in prompt_lengths)
    assert len(cut.splits["train"]) == expected and cut.dropped["train"] == 50 - expected and 0 < expected < 10
    assert all(len(x) <= prompt_lengths[11] for x in cut.splits["train"]["input_ids"][:])
    with pytest.raises(ValueError, match="data.max_length=60 leaves no response tokens"):
        InstructionDataModule(tiny_llama, train_file=str(train), val_size=5, max_length=60).setup("fit")
    with pytest.raises(ValueError, match=r"data.where names \['quality'\]"):
        InstructionDataModule(tiny_llama, train_file=str(train), where={"quality": "high"}).setup("fit")


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 99, 3, 42, 7, 250, 11]])


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_lora_with_b_zero_is_the_base_model_and_merge_matches(arch, request):
    folder = request.getfixturevalue(arch)
    base = logits(AutoModelForCausalLM.from_pretrained(folder), IDS)
    lora = add_lora(AutoModelForCausalLM.from_pretrained(folder), r=4, alpha=8)
    assert torch.equal(logits(lora, IDS), base)  # B = 0 at initialization

    lora = add_lora(AutoModelForCausalLM.from_pretrained(folder), r=4, alpha=8, init_lora_weights=False)
    unmerged = logits(lora, IDS)
    assert (unmerged - base).abs().max() > 1e-3  # a random B changes the output...
    merged = logits(lora.merge_and_unload(), IDS)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)  # ...and folding it in changes nothing


def test_target_presets_match_the_intended_layers(tiny_llama, tiny_gpt2):
    def adapted(folder, targets="auto"):
        model = add_lora(AutoModelForCausalLM.from_pretrained(folder), target_modules=targets)
        return sorted(n.removeprefix("base_model.model.").removeprefix("model.").removesuffix(".lora_A")
                      for n, _ in model.named_modules() if n.endswith("lora_A"))  # fmt: skip

    llama = adapted(tiny_llama)
    projections = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]  # fmt: skip
    assert llama == sorted(f"layers.{i}.{p}" for i in range(2) for p in projections)
    gpt2 = adapted(tiny_gpt2)
    assert gpt2 == sorted(f"transformer.h.{i}.{p}" for i in range(2)
                          for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))  # fmt: skip
    assert not any("lm_head" in n for n in adapted(tiny_llama, "all-linear"))
    assert len(adapted(tiny_llama, "all-linear")) == len(llama)

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config.model_type = "brand-new-arch"
    assert lora_targets(model) == "all-linear"
    assert lora_targets(model, ["self_attn.q_proj", "down_proj"]) == ["self_attn.q_proj", "down_proj"]
    with pytest.raises(ValueError, match=r"\['qkv'\] match no linear layer.*down_proj, gate_proj"):
        lora_targets(model, ["q_proj", "qkv"])
    assert "lm_head" in linear_layer_names(model)


def test_adapter_save_load_round_trip(tiny_llama, tmp_path):
    from peft import PeftModel

    lora = add_lora(AutoModelForCausalLM.from_pretrained(tiny_llama), init_lora_weights=False)
    lora.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["lora_alpha"] == 16
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "adapter")
    assert torch.equal(logits(loaded, IDS), logits(lora, IDS))


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_quantized_load_and_a_lora_training_step(tiny_llama, quantization):
    import bitsandbytes as bnb

    module = CausalLMFineTuner(tiny_llama, quantization=quantization, lora_r=4)
    module.configure_model()
    layer = module.net.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear8bitLt if quantization == "int8" else bnb.nn.Linear4bit)
    trainable = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen_before = layer.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    batch = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "labels": IDS}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    after = dict(module.named_parameters())
    assert any(not torch.equal(after[n], p) for n, p in trainable.items() if "lora_B" in n)
    assert torch.equal(layer.weight.detach(), frozen_before)


def test_full_finetune_of_quantized_weights_is_refused():
    with pytest.raises(ValueError, match="finetune=lora"):
        CausalLMFineTuner("x", finetune="full", quantization="nf4")


def sft_args(tmp_path, model, *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = write_jsonl(tmp_path / "data.jsonl", instruction_rows(48))
    return [
        "fit", "--config", "configs/sft_lora.yaml", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
        f"--trainer.default_root_dir={tmp_path / 'runs'}", f"--model.init_args.model_name_or_path={model}",
        f"--data.init_args.train_file={train}", "--data.init_args.val_size=8", "--data.init_args.batch_size=4",
        "--trainer.accumulate_grad_batches=1", "--trainer.val_check_interval=5", "--model.init_args.max_new_tokens=4",
        "--trainer.enable_progress_bar=false", *extra,
    ]  # fmt: skip


def test_sft_run_saves_adapter_and_merged_model(tiny_llama, tmp_path):
    from peft import PeftModel

    run_cli(*sft_args(tmp_path, tiny_llama, "--trainer.max_steps=10"))
    run = run_dir(tmp_path / "runs")
    state = load_state(run / "checkpoints" / "last.ckpt")
    assert state and all("lora_" in k for k in state)  # the frozen base is not stored in checkpoints
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), run / "adapter")
    best = load_state(run / "checkpoints" / "best.ckpt")
    weights = dict(adapter.named_parameters())
    assert all(torch.equal(weights[k.removeprefix("net.")], v) for k, v in best.items())  # the best one was saved
    merged = AutoModelForCausalLM.from_pretrained(run / "hf_model")
    torch.testing.assert_close(logits(merged, IDS), logits(adapter, IDS), atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(run / "hf_model").chat_template
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size < 200_000

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    losses = [e.value for e in events.Scalars("val/loss")]
    ppl = [e.value for e in events.Scalars("val/ppl")]
    assert len(losses) == 2 and losses[-1] < losses[0]  # validation at steps 5 and 10; it learns
    assert ppl[-1] == pytest.approx(float(torch.exp(torch.tensor(losses[-1]))), rel=1e-5)
    assert len(events.Tensors("samples/text_summary")) == 2  # the sample answers, once per validation


def test_sft_resume_from_last_equals_a_straight_run(tiny_llama, tmp_path):
    import lightning as L

    from llm_course.trainer_cli import CourseCLI

    class StopAfter(L.Callback):  # an interrupted run: same schedule (max_steps=20), stopped at step 10
        def on_train_batch_end(self, trainer, *args) -> None:
            trainer.should_stop = trainer.global_step >= 10

    # 40 training records in batches of 4: an epoch is 10 steps
    args = ["--trainer.max_steps=20", "--trainer.val_check_interval=10"]
    run_cli(*sft_args(tmp_path / "a", tiny_llama, *args))
    straight = load_state(run_dir(tmp_path / "a" / "runs") / "checkpoints" / "last.ckpt")
    cli = CourseCLI(sft_args(tmp_path / "b", tiny_llama, *args)[1:], run=False)
    cli.trainer.callbacks.append(StopAfter())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    last = run_dir(tmp_path / "b" / "runs") / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 10
    run_cli(*sft_args(tmp_path / "b", tiny_llama, *args, f"--ckpt_path={last}"))
    resumed = load_state(run_dir(tmp_path / "b" / "runs") / "checkpoints" / "last.ckpt")
    assert straight.keys() == resumed.keys() and len(straight) == 2 * 7 * 2  # A and B of 7 projections, 2 layers
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_merge_command_and_full_finetune(tiny_gpt2, tmp_path):
    run_cli(*sft_args(tmp_path, tiny_gpt2, "--trainer.max_steps=3", "--model.init_args.merge_on_fit_end=false"))
    run = run_dir(tmp_path / "runs")
    assert (run / "adapter").is_dir() and not (run / "hf_model").exists()
    run_cli("merge", f"--adapter_dir={run / 'adapter'}", f"--output_dir={tmp_path / 'merged'}")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").config.model_type == "gpt2"

    run_cli(*sft_args(tmp_path / "full", tiny_gpt2, "--trainer.max_steps=3", "--trainer.val_check_interval=3",
                      "--model.init_args.finetune=full"))  # fmt: skip
    full = run_dir(tmp_path / "full" / "runs")
    state = load_state(full / "checkpoints" / "last.ckpt")
    assert any("wte" in k for k in state)  # a full fine-tune stores every weight
    model = AutoModelForCausalLM.from_pretrained(full / "hf_model")
    assert torch.equal(model.transformer.wte.weight, state["net.transformer.wte.weight"])


def test_qlora_run_merges_into_the_unquantized_base(tiny_llama, tmp_path):
    from peft import PeftModel

    run_cli(*sft_args(tmp_path, tiny_llama, "--trainer.max_steps=3", "--model.init_args.quantization=nf4",
                      "--trainer.precision=bf16-mixed"))  # fmt: skip
    run = run_dir(tmp_path / "runs")
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), run / "adapter")
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in adapter.named_parameters() if "lora_B" in n)
    merged = AutoModelForCausalLM.from_pretrained(run / "hf_model")
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32  # plain weights, not 4-bit
    torch.testing.assert_close(logits(merged, IDS), logits(adapter, IDS), atol=1e-5, rtol=1e-5)


def test_resuming_with_other_lora_settings_is_refused(tiny_llama, tmp_path):
    run_cli(*sft_args(tmp_path, tiny_llama, "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                      "--model.init_args.target_modules=[q_proj]"))  # fmt: skip
    checkpoint = torch.load(run_dir(tmp_path / "runs") / "checkpoints" / "last.ckpt", weights_only=True)
    # `llm-course fit --ckpt_path` rebuilds the model from the checkpoint's hyperparameters; Python code may not
    other = CausalLMFineTuner(tiny_llama)  # auto: all 7 projections; the checkpoint has q_proj adapters only
    other.configure_model()
    with pytest.raises(ValueError, match="the checkpoint lacks 24 adapter weights"):
        other.on_load_checkpoint(checkpoint)
    same = CausalLMFineTuner(tiny_llama, target_modules=["q_proj"], lora_r=16, lora_alpha=32)  # as in sft_lora.yaml
    same.configure_model()
    same.on_load_checkpoint(checkpoint)
    same.load_state_dict(checkpoint["state_dict"], strict=False)
    assert all(torch.equal(dict(same.named_parameters())[k], v) for k, v in checkpoint["state_dict"].items())


def test_merge_without_adapter_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("merge", f"--adapter_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}")
    assert "adapter_config.json does not exist" in capsys.readouterr().err


def test_load_causal_lm_rejects_unknown_dtype(tiny_llama):
    with pytest.raises(ValueError, match="model.dtype='fp8'"):
        load_causal_lm(tiny_llama, dtype="fp8")
