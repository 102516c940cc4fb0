"""Module 6: prompt masking, LoRA identities, adapters, quantized training, and the SFT run end to end."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import byte_tokenizer, instruction_rows, load_state, run_cli, run_dir, save_tiny_lm, write_jsonl
from llm_course.sft import CausalLMFineTuner, InstructionDataModule
from llm_course.sft.lora import (
    add_lora,
    keep_4bit_training_kernels,
    linear_layer_names,
    load_causal_lm,
    lora_targets,
)
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
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello"}]}
    prompt, _ = split(tokenizer, tokenize_record(tokenizer, chat, 512))
    assert prompt == "Be brief.\n\n" + ALPACA_PROMPT.format(instruction="Hi")  # no chat template: the plain prompt

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


@pytest.fixture(scope="module")
def llama_64(tmp_path_factory) -> str:
    """``tiny_llama`` at width 64: on a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights for inference,
    which needs ``in_features`` to be a multiple of its block size (64); 32 fails there (its bug, not ours)."""
    return save_tiny_lm(tmp_path_factory.mktemp("llama_64"), "llama", width=64)


def quantized_base_with_adapter(folder, adapter_dir):
    """The model QLoRA training ran: the NF4 base prepared as ``build_network`` prepares it, plus the adapter."""
    from peft import PeftModel, prepare_model_for_kbit_training

    base = prepare_model_for_kbit_training(load_causal_lm(folder, "nf4"), use_gradient_checkpointing=False)
    return PeftModel.from_pretrained(keep_4bit_training_kernels(base), adapter_dir).eval()  # no dropout


def test_a_validation_pass_leaves_qlora_gradients_alone(llama_64):
    """On a CPU with AVX512-BF16, bitsandbytes used to switch 4-bit layers to an inference kernel without backward
    after one eval pass, for good (elsewhere the test passes either way)."""

    def grads(validate_first: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        module = CausalLMFineTuner(llama_64, quantization="nf4", lora_r=4, lora_dropout=0.0)
        module.configure_model()
        with torch.no_grad():
            for name, p in module.net.named_parameters():
                if "lora_B" in name:  # B = 0 would leave every A without gradient
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        if validate_first:
            module.net.eval()
            with torch.no_grad():
                module.net(input_ids=IDS)
            module.net.train()
        module.net(input_ids=IDS, labels=IDS).loss.backward()
        return {n: p.grad for n, p in module.net.named_parameters() if p.grad is not None}

    fresh, after_validation = grads(False), grads(True)
    assert fresh.keys() == after_validation.keys() and len(fresh) == 2 * 7 * 2
    for name, grad in fresh.items():
        torch.testing.assert_close(after_validation[name], grad, rtol=0, atol=0, msg=name)


def test_qlora_merge_is_the_quantized_base_plus_adapter(llama_64, tmp_path, capsys):
    import bitsandbytes as bnb

    run_cli(*sft_args(tmp_path, llama_64, "--trainer.max_steps=3", "--model.init_args.quantization=nf4",
                      "--trainer.precision=bf16-mixed"))  # fmt: skip
    run = run_dir(tmp_path / "runs")
    record = json.loads((run / "adapter" / "base_weights.json").read_text())
    assert record == {"quantization": "nf4", "dtype": "float32", "double_quant": True}
    trained = quantized_base_with_adapter(llama_64, run / "adapter")
    assert any(p.abs().sum() > 0 for n, p in trained.named_parameters() if "lora_B" in n)  # it learned something
    merged = AutoModelForCausalLM.from_pretrained(run / "hf_model")
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32  # plain weights, not 4-bit
    assert "quantization_config" not in json.loads((run / "hf_model" / "config.json").read_text())

    # each merged weight is exactly the dequantized NF4 weight training multiplied with, plus B @ A
    for i, name in [(0, "self_attn.q_proj"), (1, "mlp.down_proj")]:
        layer = trained.base_model.model.model.layers[i].get_submodule(name)
        weight = layer.base_layer.weight
        expected = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float() + layer.get_delta_weight(
            "default"
        )
        assert torch.equal(merged.model.layers[i].get_submodule(name).weight, expected), name

    run_cli("merge", f"--adapter_dir={run / 'adapter'}", f"--output_dir={tmp_path / 'original'}",
            "--base_weights=original")  # fmt: skip
    assert "merged into the original (unquantized) weights" in capsys.readouterr().out
    original = AutoModelForCausalLM.from_pretrained(tmp_path / "original")
    with torch.enable_grad():  # the training path of the 4-bit layers (bf16 compute, as in training)
        reference = trained(input_ids=IDS).logits.detach().float()
    gap = (logits(merged, IDS) - reference).abs().max()
    gap_original = (logits(original, IDS) - reference).abs().max()
    # merged: only the bf16 compute of the 4-bit layers differs; original: the NF4 rounding of every weight
    assert gap < 0.1 * gap_original, (gap, gap_original)


def test_merge_says_which_base_weights_it_used(tiny_llama, tmp_path, capsys):
    from llm_course.sft.lora import save_base_record

    add_lora(AutoModelForCausalLM.from_pretrained(tiny_llama), r=4, init_lora_weights=False).save_pretrained(
        tmp_path / "adapter"
    )
    run_cli("merge", f"--adapter_dir={tmp_path / 'adapter'}", f"--output_dir={tmp_path / 'a'}")
    assert "merged into the original weights of" in capsys.readouterr().out  # no record: an adapter from elsewhere
    save_base_record(tmp_path / "adapter", "nf4", "float32", double_quant=True)
    run_cli("merge", f"--adapter_dir={tmp_path / 'adapter'}", f"--output_dir={tmp_path / 'b'}")
    out = capsys.readouterr().out
    assert "merged into the dequantized NF4 (double quantization) weights" in out and str(tmp_path / "b") in out
    with pytest.raises(SystemExit):
        run_cli("merge", f"--adapter_dir={tmp_path / 'adapter'}", f"--output_dir={tmp_path / 'c'}",
                "--base_weights=nf4")  # fmt: skip


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


def test_every_setting_reaches_build_network_by_name(tiny_llama, monkeypatch):
    import inspect

    from llm_course.sft import lora
    from llm_course.sft import module as sft_module

    calls = []

    def spy(model_name_or_path, **settings):  # takes any name: a hand-over by matching names would pass nothing
        calls.append({"model_name_or_path": model_name_or_path, **settings})
        return AutoModelForCausalLM.from_pretrained(tiny_llama)

    monkeypatch.setattr(sft_module, "build_network", spy)
    settings = {"model_name_or_path": tiny_llama, "finetune": "lora", "quantization": "int8", "dtype": "bfloat16",
                "lora_r": 3, "lora_alpha": 5, "lora_dropout": 0.25, "target_modules": ["q_proj"],
                "double_quant": False, "gradient_checkpointing": True, "trust_remote_code": True}  # none a default
    CausalLMFineTuner(**settings).build("cpu")
    assert calls == [{**settings, "device": "cpu"}]
    inspect.signature(lora.build_network).bind(**calls[0])  # and every name is one build_network takes


def test_the_module_loads_its_own_tokenizer_and_never_reads_the_datamodule(tiny_gpt2, tmp_path):
    from types import SimpleNamespace

    class DataModuleTrap:
        @property
        def tokenizer(self):
            raise AssertionError("the model read the DataModule's tokenizer")

    module = CausalLMFineTuner(tiny_gpt2, lora_r=4, merge_on_fit_end=False)
    module._trainer = SimpleNamespace(datamodule=DataModuleTrap())  # a Trainer whose DataModule must stay unread
    module.build("cpu")
    answers = module.generate(["Double 3."], max_new_tokens=2)  # used to read trainer.datamodule.tokenizer
    assert len(answers) == 1 and isinstance(answers[0], str)
    module.save_hf(tmp_path)
    # GPT-2 has no pad token: the module and the DataModule both pad with EOS, by the same rule
    dm_tokenizer = InstructionDataModule(tiny_gpt2).load_tokenizer()
    for tokenizer in (module.tokenizer, AutoTokenizer.from_pretrained(tmp_path / "adapter"), dm_tokenizer):
        assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert module.tokenizer.get_vocab() == dm_tokenizer.get_vocab()


@pytest.mark.parametrize("task", ["sft", "text"])
def test_trust_remote_code_never_comes_from_a_checkpoint(task, tiny_llama, tiny_bert, tmp_path, monkeypatch):
    import lightning as L

    from llm_course import assets
    from llm_course.sft import lora
    from llm_course.text import module as text_module
    from llm_course.text.module import TextClassifier

    if task == "sft":
        cls, module = CausalLMFineTuner, CausalLMFineTuner(tiny_llama, lora_r=4)
        module.configure_model()
    else:
        cls, module = TextClassifier, TextClassifier(tiny_bert, labels=["neg", "pos"])
    assert "trust_remote_code" not in module.hparams  # new checkpoints do not carry it
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": module.state_dict(), "pytorch-lightning_version": L.__version__,
                "hyper_parameters": {**module.hparams, "trust_remote_code": True}}, path)  # fmt: skip

    seen: list[bool] = []

    def spy(cls_, name, flag="", **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(cls_, name, flag, **kwargs)

    real = assets.from_pretrained
    for owner in (assets, lora, text_module):  # the tokenizer loader imports it lazily from assets
        monkeypatch.setattr(owner, "from_pretrained", spy)
    loaded = cls.load_from_checkpoint(path)
    assert loaded.trust_remote_code is False and seen and not any(seen)
    seen.clear()
    assert cls.load_from_checkpoint(path, trust_remote_code=True).trust_remote_code is True and all(seen)
