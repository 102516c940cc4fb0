"""Module 6: the chunked response loss equals the model's own loss, gradients included, without full logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_course.sft import CausalLMFineTuner
from llm_course.sft.lora import add_lora
from llm_course.sft.loss import causal_lm_loss
from llm_course.sft.prompts import IGNORE_INDEX


def padded_batch(vocab: int) -> dict[str, torch.Tensor]:
    """3 sequences of 12 tokens: prompts of 5, 2 and 4 tokens (labels -100), the last one right-padded by 3."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    for row, prompt in enumerate([5, 2, 4]):
        labels[row, :prompt] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(net, batch, chunk_size):
    net.zero_grad(set_to_none=True)
    loss = causal_lm_loss(net, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_size)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("finetune", ["full", "lora"])
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_chunked_loss_and_gradients_equal_the_models_own(arch, finetune, request):
    net = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(arch))
    if finetune == "lora":
        net = add_lora(net, r=4, dropout=0.0, init_lora_weights=False)
    net.eval()  # no dropout (GPT-2 has some): both losses see the same network
    batch = padded_batch(net.config.vocab_size)
    reference, reference_grads = loss_and_grads(net, batch, 0)
    for chunk_size in (1, 7, 1000):  # many chunks, a ragged last chunk, one chunk
        loss, grads = loss_and_grads(net, batch, chunk_size)
        torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
        assert grads.keys() == reference_grads.keys() and len(grads) > 0
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_chunked_loss_under_bf16_autocast_matches():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    net = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    batch = padded_batch(300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = causal_lm_loss(net, **batch, chunk_size=0)
        chunked = causal_lm_loss(net, **batch, chunk_size=5)
    assert chunked.dtype == torch.float32  # the cross entropy runs in fp32 in both
    torch.testing.assert_close(chunked, reference, atol=1e-4, rtol=1e-4)


def test_the_head_only_ever_sees_one_chunk_of_response_tokens(tiny_llama):
    net = AutoModelForCausalLM.from_pretrained(tiny_llama)
    batch = padded_batch(net.config.vocab_size)
    rows: list[int] = []
    net.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    with torch.no_grad():
        causal_lm_loss(net, **batch, chunk_size=4)
    # labels of positions 1..11: 7, 10 and 5 response tokens (the padded row's real tokens end at position 8)
    responses = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert responses == 7 + 10 + 5
    assert rows == [4] * 5 + [2]  # never batch × length × vocabulary logits: 22 rows in chunks of 4

    rows.clear()
    causal_lm_loss(net, **batch, chunk_size=8).backward()
    assert sorted(rows) == sorted([8, 8, 6] * 2)  # each chunk recomputed once in backward, none kept


def test_models_that_transform_their_logits_are_refused(tiny_llama):
    net = AutoModelForCausalLM.from_pretrained(tiny_llama)
    net.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match=r"final_logit_softcapping.*model.loss_chunk_size=0"):
        causal_lm_loss(net, **padded_batch(net.config.vocab_size), chunk_size=4)
    assert torch.isfinite(causal_lm_loss(net, **padded_batch(net.config.vocab_size), chunk_size=0))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step called without a Trainer
def test_module_uses_the_chunked_loss_and_rejects_a_negative_size(tiny_llama):
    with pytest.raises(ValueError, match="model.loss_chunk_size=-1"):
        CausalLMFineTuner(tiny_llama, loss_chunk_size=-1)
    chunked = CausalLMFineTuner(tiny_llama, lora_dropout=0.0, loss_chunk_size=3)
    plain = CausalLMFineTuner(tiny_llama, lora_dropout=0.0)
    chunked.configure_model()
    plain.configure_model()
    plain.net.load_state_dict(chunked.net.state_dict())
    batch = padded_batch(plain.net.config.vocab_size)
    rows: list[int] = []
    chunked.net.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    torch.testing.assert_close(chunked.training_step(batch, 0), plain.training_step(batch, 0))
    assert rows == [3] * 7 + [1]  # the module took the chunked path: 22 response tokens, 3 at a time


def micro_batch(vocab: int, rows: int, length: int, prompt: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def right_pad(batch: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    extra = length - batch["input_ids"].shape[1]
    fill = {"input_ids": 0, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {k: torch.nn.functional.pad(v, (0, extra), value=fill[k]) for k, v in batch.items()}


@pytest.mark.parametrize("chunk_size", [0, 4])
def test_accumulated_micro_batches_give_the_gradient_of_the_concatenated_batch(tiny_llama, tmp_path, chunk_size):
    import lightning as L

    from llm_course.callbacks import NaNGuard

    def module() -> CausalLMFineTuner:
        torch.manual_seed(0)
        m = CausalLMFineTuner(tiny_llama, lora_r=4, lora_dropout=0.0, loss_chunk_size=chunk_size,
                              merge_on_fit_end=False)  # fmt: skip
        m.configure_model()
        with torch.no_grad():
            for name, p in m.net.named_parameters():
                if "lora_B" in name:  # B = 0 would leave every A without gradient
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        return m

    vocab = module().net.config.vocab_size
    short = micro_batch(vocab, rows=3, length=10, prompt=8, seed=1)  # 3 × 2 response tokens (labels 1..9)
    long = micro_batch(vocab, rows=1, length=14, prompt=2, seed=2)  # 12 response tokens
    # the reference: one batch of all 18 tokens, each weighing 1/18 (Lightning alone would give 1/12 and 1/24)
    reference = module()
    together = {k: torch.cat([right_pad(short, 14)[k], long[k]]) for k in short}
    causal_lm_loss(reference.net, **together, chunk_size=chunk_size).backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in expected.values()]))

    class GradsAtStep(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}

    seen = GradsAtStep()
    trainer = L.Trainer(max_steps=1, accumulate_grad_batches=2, gradient_clip_val=float(norm) / 2,
                        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path,
                        callbacks=[NaNGuard(), seen])  # fmt: skip
    trained = module()
    trainer.fit(trained, train_dataloaders=torch.utils.data.DataLoader([short, long], batch_size=None))
    assert seen.grads.keys() == expected.keys() and len(expected) == 2 * 7 * 2
    for name, grad in expected.items():  # what the NaN guard and the clipping saw...
        torch.testing.assert_close(seen.grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    torch.testing.assert_close(trainer.callback_metrics["train/grad_norm"], norm, atol=1e-6, rtol=1e-5)
    for name, param in trained.named_parameters():  # ...and what the optimizer stepped with: clipped to half
        if name in expected:
            torch.testing.assert_close(param.grad, expected[name] / 2, atol=1e-6, rtol=1e-4, msg=name)
