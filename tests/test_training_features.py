"""Module 4's Trainer features, checked as identities: accumulation equals a larger batch, clipping logs the real
pre-clip norm and bounds the update, ``compile`` gives the eager loss, a grad scaler skips a step on inf gradients."""

import math
import tempfile

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from llm_course.callbacks import NaNGuard
from llm_course.linreg import RegressionTask
from llm_course.vision import MLP, ImageClassifier


def sgd(lr: float = 0.1):
    return lambda params: torch.optim.SGD(params, lr=lr)


def one_step(model: L.LightningModule, loader, **trainer_args) -> L.LightningModule:
    # a root dir of its own: without a logger, TextClassifier.on_fit_end writes hf_model/ there (else into the cwd)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tempfile.mkdtemp(prefix="one_step_"), **trainer_args)  # fmt: skip
    trainer.fit(model, train_dataloaders=loader)
    return model


def images(n: int = 8) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def vision_model() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(net=MLP(hidden=(32,), dropout=0.0), optimizer=sgd())


def test_accumulation_equals_one_larger_batch_vision():
    data = images(8)
    big = one_step(vision_model(), DataLoader(data, batch_size=8))
    acc = one_step(vision_model(), DataLoader(data, batch_size=4), accumulate_grad_batches=2)
    for (name, a), b in zip(big.state_dict().items(), acc.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    untouched = vision_model()
    assert not torch.equal(big.net.layers[1].weight, untouched.net.layers[1].weight)  # the step did move it


def test_accumulation_equals_one_larger_batch_text(tiny_bert):
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from llm_course.text import TextClassifier

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    texts = ["a great film", "dull", "I loved every minute of it", "awful acting", "fine", "a waste", "brilliant",
             "meh"]
    rows = [{"input_ids": tokenizer(t)["input_ids"], "labels": i % 2} for i, t in enumerate(texts)]
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def model() -> TextClassifier:
        torch.manual_seed(0)
        return TextClassifier(tiny_bert, labels=["neg", "pos"], optimizer=sgd(0.5), dropout=0.0)

    big = one_step(model(), DataLoader(rows, batch_size=8, collate_fn=collate))
    acc = one_step(model(), DataLoader(rows, batch_size=4, collate_fn=collate), accumulate_grad_batches=2)
    for (name, a), b in zip(big.state_dict().items(), acc.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(big.net.classifier.weight, model().net.classifier.weight)


class GradProbe(L.Callback):
    """Keeps the gradients as the optimizer step begins (after NaNGuard logged the norm, before clipping)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = [p.grad.detach().clone() for p in pl_module.parameters() if p.grad is not None]


def test_clipping_logs_the_real_norm_and_bounds_the_update():
    lr, clip = 1.0, 0.05
    model = vision_model()
    model.optimizer = sgd(lr)
    before = [p.detach().clone() for p in model.parameters()]
    probe = GradProbe()
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=clip,
                        callbacks=[NaNGuard(), probe])  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader(images(8), batch_size=8))
    total = math.sqrt(sum(float(g.pow(2).sum()) for g in probe.grads))
    assert total > 10 * clip  # the clip really bites
    assert float(trainer.callback_metrics["train/grad_norm"]) == pytest.approx(total, rel=1e-5)
    update = math.sqrt(sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(model.parameters(), before,
                                                                                   strict=True)))  # fmt: skip
    assert update == pytest.approx(lr * clip, rel=1e-4)  # SGD: the step is lr × the clipped gradient


@pytest.mark.slow
@pytest.mark.parametrize("task", ["linreg", "vision"])
def test_compile_gives_the_eager_loss(task):
    """``compile: true`` (``nn.Module.compile``) runs real steps on the CPU and matches eager to float tolerance."""

    def losses(compile: bool) -> list[float]:
        torch.manual_seed(0)
        if task == "linreg":
            model = RegressionTask(in_features=8, optimizer=sgd(0.05), compile=compile)
            g = torch.Generator().manual_seed(0)
            data = TensorDataset(torch.randn(64, 8, generator=g), torch.randn(64, generator=g))
        else:
            model = ImageClassifier(net=MLP(hidden=(32,), dropout=0.0), optimizer=sgd(), compile=compile)
            data = images(64)
        seen = []

        class Keep(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                seen.append(float(outputs["loss"]))

        trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[Keep()])  # fmt: skip
        trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=16))
        return seen

    eager, compiled = losses(False), losses(True)
    assert len(eager) == 4 and eager[-1] != eager[0]
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-6)


def test_a_grad_scaler_skips_the_step_on_inf_gradients():
    """fp16's loss scaling: an overflowed (inf) gradient skips the step and halves the scale (CPU scaler here;
    Lightning's 16-mixed uses the same class on CUDA)."""
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([param], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale((param * torch.tensor([1.0, float("inf"), 1.0])).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(param.detach(), torch.ones(3)) and scaler.get_scale() == 512.0
    opt.zero_grad()
    scaler.scale(param.sum()).backward()  # a finite step goes through, unscaled: 1 - 0.1 × 1
    scaler.step(opt)
    assert torch.allclose(param.detach(), torch.full((3,), 0.9))
