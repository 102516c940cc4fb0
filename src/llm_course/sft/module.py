"""LightningModule for Module 6: supervised fine-tuning of a causal LM, full or LoRA, on plain or 4/8-bit weights."""

from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric

from llm_course.errors import ConfigError
from llm_course.sft.lora import Quantization, build_network
from llm_course.sft.loss import causal_lm_loss, unwrap
from llm_course.sft.prompts import IGNORE_INDEX, encode, load_tokenizer, prompt_text
from llm_course.training import TaskModule, maybe_compile


class CausalLMFineTuner(TaskModule):
    """Instruction tuning with the loss on response tokens: full fine-tuning, LoRA, or QLoRA (nf4 + LoRA).

    The network and its tokenizer are built in ``configure_model`` (on the Trainer's device, as bitsandbytes
    requires); the tokenizer comes from ``model_name_or_path`` with the DataModule's rule, never from the
    DataModule itself. Gradient accumulation is token-weighted: every response token in an optimizer step
    counts the same, whatever the length of its micro-batch (see ``on_after_backward``). With
    LoRA, checkpoints hold the trainable weights only (a few MB instead of the whole model); the frozen
    base comes from ``model_name_or_path`` again when a checkpoint is loaded. After ``fit`` the best
    weights are saved to ``<run>/adapter/`` (PEFT format, with the tokenizer) and merged into a plain
    Hugging Face folder ``<run>/hf_model/``; a full fine-tune saves ``<run>/hf_model/`` directly.

    Args:
        model_name_or_path: ``smollm2-135m-instruct`` (embedded), a hub id (``gpt2``) or a local folder.
        finetune: ``lora`` trains low-rank adapters on frozen weights; ``full`` trains every weight.
        quantization: load the frozen base in 8-bit (``int8``) or 4-bit (``nf4``, ``fp4``) with bitsandbytes.
        dtype: dtype of the base weights (quantized layers compute in it; float32 → bfloat16 there).
        lora_r: rank of the update ``B @ A``.
        lora_alpha: the update is scaled by ``lora_alpha / lora_r``.
        lora_dropout: dropout on the adapter's input.
        target_modules: layers that get adapters; ``auto``: the architecture's preset, ``all-linear``: all but the head.
        double_quant: quantize the 4-bit scale factors too (QLoRA's double quantization).
        gradient_checkpointing: recompute activations in backward instead of storing them.
        loss_chunk_size: compute the head and the loss on this many response tokens at a time, recomputed in
            backward, so the full-vocabulary logits never exist (``sft/loss.py``); 0: the model's own loss.
        optimizer: optimizer factory, applied to the trainable parameters only.
        scheduler: learning-rate schedule, e.g. ``llm_course.training.WarmupDecayLR`` (linear warm-up, then
            cosine decay), stepped every optimizer step; none: a constant rate.
        sample_prompts: instructions answered greedily at each validation and logged to TensorBoard as text.
        max_new_tokens: length of those answers.
        merge_on_fit_end: also write the merged model after a LoRA fit.
        compile: apply ``torch.compile`` to the network.
        trust_remote_code: allow models whose code lives on the hub. Taken from the caller only: it is not saved
            with the hyperparameters, and ``load_from_checkpoint`` ignores a value a checkpoint carries.
    """

    def __init__(
        self,
        model_name_or_path: str = "smollm2-135m-instruct",
        finetune: Literal["full", "lora"] = "lora",
        quantization: Quantization = "none",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        target_modules: list[str] | str = "auto",
        double_quant: bool = True,
        gradient_checkpointing: bool = False,
        loss_chunk_size: int = 0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        sample_prompts: list[str] | None = None,
        max_new_tokens: int = 48,
        merge_on_fit_end: bool = True,
        compile: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if quantization != "none" and finetune == "full":
            raise ConfigError(
                f"model.quantization={quantization} with model.finetune=full: quantized weights cannot be trained "
                "directly. Use model.finetune=lora (with nf4 that is QLoRA) or model.quantization=none."
            )
        if loss_chunk_size < 0:
            raise ConfigError(f"model.loss_chunk_size={loss_chunk_size}: use 0 (off) or a number of tokens, e.g. 256")
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "trust_remote_code"])  # never from a file
        self.optimizer, self.scheduler = optimizer, scheduler
        self.trust_remote_code = trust_remote_code
        self.net: Any = None
        self.tokenizer: Any = None
        self._window_tokens: torch.Tensor | None = None  # response tokens of this accumulation window, this rank
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.strict_loading = finetune == "full"  # LoRA checkpoints hold the adapter weights only

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, trust_remote_code: bool = False, **kwargs: Any):
        """Lightning's ``load_from_checkpoint``, with ``trust_remote_code`` from the caller only (default off)."""
        return super().load_from_checkpoint(checkpoint_path, *args, trust_remote_code=trust_remote_code, **kwargs)

    def configure_model(self) -> None:
        if self.net is not None:
            return
        self.build(self.trainer.strategy.root_device if self._trainer else torch.device("cpu"))

    def build(self, device: torch.device | str = "cpu") -> None:
        """Load the network for this configuration (quantized weights go straight to ``device``)."""
        hp = self.hparams
        self.net = build_network(
            hp.model_name_or_path, finetune=hp.finetune, quantization=hp.quantization, dtype=hp.dtype, device=device,
            lora_r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
            target_modules=hp.target_modules, double_quant=hp.double_quant,
            gradient_checkpointing=hp.gradient_checkpointing, trust_remote_code=self.trust_remote_code,
        )  # fmt: skip
        self._tokenizer()
        # the chunked loss calls the decoder itself, so that is what gets compiled
        maybe_compile(unwrap(self.net).get_decoder() if hp.loss_chunk_size else self.net, hp.compile)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None):
        return self.net(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """The summed cross entropy over the batch's response tokens (labels shifted by one); logs the mean."""
        total = causal_lm_loss(self.net, batch["input_ids"], batch["attention_mask"], batch["labels"],
                               self.hparams.loss_chunk_size, reduction="sum")  # fmt: skip
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        loss = total.detach().float() / tokens  # per-token mean
        if stage == "train":
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["labels"]))
            self.log("train/tokens", tokens.float(), on_step=True, on_epoch=False, reduce_fx="sum")
            self._window_tokens = tokens if self._window_tokens is None else self._window_tokens + tokens
        else:
            getattr(self, f"{stage}_loss").update(loss, weight=tokens)  # token-weighted mean
        return total

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # backward runs on the sum; on_after_backward divides the window's gradients by its token count
        return self._shared_step(batch, "train")

    def on_fit_start(self) -> None:
        if self.trainer.strategy.handles_gradient_accumulation:
            raise ConfigError(
                f"trainer.strategy={type(self.trainer.strategy).__name__} accumulates gradients itself; "
                "CausalLMFineTuner weights accumulated micro-batches by tokens and needs Lightning's accumulation "
                "(use the auto, ddp or fsdp strategy)"
            )

    def on_after_backward(self) -> None:
        """At the last micro-batch of an accumulation window, turn the gradients into those of the token mean.

        Each micro-batch's backward ran on its summed loss, which Lightning divides by ``accumulate_grad_batches``
        (K), and DDP averages the gradients over the W ranks: they hold the gradient of (the sum of every token's
        loss in the window, on all ranks) / (K W). Scaling by K W / N, where N counts the window's response tokens
        on all ranks, gives the gradient of the mean over those N tokens, so a token of a short response counts
        as much as one of a long response (what Hugging Face's ``num_items_in_batch`` does). This hook runs before
        ``on_before_optimizer_step`` (the NaN guard's grad norm), gradient clipping and the optimizer step.
        """
        if self.trainer.fit_loop._should_accumulate() or self._window_tokens is None:
            return  # not the window's last micro-batch: keep adding gradients
        tokens = self.trainer.strategy.reduce(self._window_tokens.float(), reduce_op="sum")  # collective: all ranks
        self._window_tokens = None
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / tokens.clamp_min(1)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, scale.to(grads[0].device))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _log_loss(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_loss")
        loss = metric.compute()
        self.log_dict({f"{stage}/loss": loss, f"{stage}/ppl": torch.exp(loss)}, prog_bar=stage == "val")
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_loss("val")
        if not self.trainer.sanity_checking:
            self.log_samples()

    def on_test_epoch_end(self) -> None:
        self._log_loss("test")

    def _tokenizer(self) -> Any:
        """This model's tokenizer, loaded once with the same rule (pad token) as the DataModule's."""
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.hparams.model_name_or_path, self.trust_remote_code)
        return self.tokenizer

    @torch.no_grad()
    def generate(self, instructions: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers to ``instructions``, built into prompts the way training examples were."""
        tokenizer, answers = self._tokenizer(), []
        was_training = self.net.training
        self.net.eval()
        for instruction in instructions:
            prompt = prompt_text(tokenizer, [{"role": "user", "content": instruction}])
            ids = torch.tensor([encode(tokenizer, prompt)], device=self.device)
            out = self.net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=max_new_tokens or self.hparams.max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
        self.net.train(was_training)
        return answers

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        return [{"index": batch["index"], "answer": self.generate([batch["instruction"]])[0]}]

    def on_predict_epoch_end(self) -> None:
        self.write_predictions([{"instruction": x} for x in self.trainer.datamodule.hparams.predict_instructions])

    def log_samples(self) -> None:
        """Answer ``sample_prompts`` and log them as text (TensorBoard's TEXT tab), one entry per validation.

        Every rank generates (under FSDP a forward pass is collective: rank 0 alone would wait forever); rank 0
        logs.
        """
        prompts = self.hparams.sample_prompts
        if not prompts:
            return
        answers = self.generate(prompts)
        if not self.trainer.is_global_zero:
            return
        table = "\n\n".join(f"**{p}**\n\n{a}" for p, a in zip(prompts, answers, strict=True))
        for logger in self.trainer.loggers:
            if hasattr(logger.experiment, "add_text"):
                logger.experiment.add_text("samples", table, self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.finetune == "lora":  # the frozen base is reloaded from model_name_or_path
            trainable = {n for n, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.net is None or self.hparams.finetune != "lora":
            return
        missing = sorted(n for n, p in self.named_parameters() if p.requires_grad and n not in checkpoint["state_dict"])
        if missing:
            raise ConfigError(
                f"the checkpoint lacks {len(missing)} adapter weights of this model (e.g. {missing[0]}): it was "
                "saved with other LoRA settings (model.target_modules, model.lora_r) or another model. Resume with "
                "the config the checkpoint was trained with (its run directory has config.yaml)."
            )

    def on_fit_end(self) -> None:
        """Every rank loads the best weights; rank 0 writes the HF folders while the others wait."""
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # log_dir is collective under DDP
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        if best and Path(best).is_file():
            self.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"],
                                 strict=self.strict_loading)  # fmt: skip
        if self.trainer.is_global_zero:
            self.save_hf(run_dir)
        self.trainer.strategy.barrier("save_hf")

    def save_hf(self, run_dir: Path) -> None:
        """Write ``adapter/`` (LoRA) and ``hf_model/`` (merged or full weights), each with the tokenizer."""
        from llm_course.sft.lora import merge_adapter, save_base_record

        tokenizer, hp = self._tokenizer(), self.hparams
        if hp.finetune == "full":
            self.net.save_pretrained(run_dir / "hf_model")
            tokenizer.save_pretrained(run_dir / "hf_model")
            return
        self.net.save_pretrained(run_dir / "adapter")
        tokenizer.save_pretrained(run_dir / "adapter")
        save_base_record(run_dir / "adapter", hp.quantization, hp.dtype, hp.double_quant)  # so merges load it alike
        if hp.merge_on_fit_end:
            rank_zero_info(merge_adapter(str(run_dir / "adapter"), str(run_dir / "hf_model"),
                                         trust_remote_code=self.trust_remote_code))  # fmt: skip
