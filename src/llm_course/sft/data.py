"""DataModule for Module 6: instruction tuning on Alpaca-style or chat records, response-only loss."""

from typing import Any

import lightning as L
import torch
from datasets import Dataset, DatasetDict, load_dataset
from torch.utils.data import DataLoader

from llm_course.errors import AssetError, ConfigError
from llm_course.loaders import make_loader
from llm_course.sft.prompts import IGNORE_INDEX, LossOn, load_tokenizer, tokenize_record
from llm_course.text.sampling import LengthGroupedSampler, SortedSampler
from llm_course.text.sources import load_files

NO_SOURCE = (
    "no instruction data given: set data.train_file (local .json/.jsonl/.jsonl.gz with instruction/input/output "
    "or messages records) or data.dataset (a hub name such as yahma/alpaca-cleaned)"
)


class InstructionDataModule(L.LightningDataModule):
    """Instruction records from local files or the hub, tokenized with the response-only loss mask.

    Local files win over the hub ``dataset``. Without ``val_file``, ``val_size`` records of train are held
    out with a seeded generator (after the ``where`` filter); ``test_size`` more are held out for
    ``llm-course test`` (the before/after comparison of the instruction-tuning benchmark).

    Args:
        model_name_or_path: tokenizer to use (the CLI links it to the model's).
        dataset: hub dataset name (e.g. ``yahma/alpaca-cleaned``), used when no local file is given.
        train_file: local training records (``.json``, ``.jsonl``, ``.jsonl.gz``).
        val_file: local validation records.
        where: keep only records whose fields equal these values, e.g. ``{status: ok}``.
        val_size: records held out from train for validation when there is no ``val_file``.
        test_size: records held out from train for testing (0: no test split).
        max_train_samples: keep at most this many training records (after the held-out splits are taken).
        predict_instructions: instructions to answer with ``llm-course predict`` (greedy, ``model.max_new_tokens``).
        max_length: tokens per example, prompt included; longer examples are cut at the end.
        loss_on: in chat records, learn every assistant reply (``replies``) or only the last one (``last_reply``:
            earlier replies are context, such as few-shot examples or a tool call already made).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        group_by_length: batch examples of similar length together.
        num_workers: DataLoader worker processes.
        seed: seeds the held-out splits and the training subset.
        trust_remote_code: allow tokenizers whose code lives on the hub. Taken from the caller only, never
            from a checkpoint's saved hyperparameters.
    """

    def __init__(
        self,
        model_name_or_path: str = "smollm2-135m-instruct",
        dataset: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        where: dict[str, str] | None = None,
        val_size: int = 200,
        test_size: int = 0,
        max_train_samples: int | None = None,
        predict_instructions: list[str] | None = None,
        max_length: int = 512,
        loss_on: LossOn = "replies",
        batch_size: int = 8,
        eval_batch_size: int = 16,
        group_by_length: bool = True,
        num_workers: int = 0,
        seed: int = 42,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["trust_remote_code"])  # a checkpoint must not switch it on
        self.trust_remote_code = trust_remote_code
        self.tokenizer: Any = None
        self.splits: dict[str, Dataset] = {}
        self.dropped: dict[str, int] = {}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, trust_remote_code: bool = False, **kwargs: Any):
        """Lightning's ``load_from_checkpoint``, with ``trust_remote_code`` from the caller only (default off)."""
        return super().load_from_checkpoint(checkpoint_path, *args, trust_remote_code=trust_remote_code, **kwargs)

    def load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.hparams.model_name_or_path, self.trust_remote_code)
        return self.tokenizer

    def _raw(self) -> DatasetDict:
        hp = self.hparams
        if hp.train_file:
            files = {"train": hp.train_file} | ({"validation": hp.val_file} if hp.val_file else {})
            return load_files(files)
        if hp.dataset:
            try:
                return load_dataset(hp.dataset)
            except (ConnectionError, OSError, ValueError) as err:
                raise AssetError(
                    f"data.dataset={hp.dataset!r} could not be loaded from the Hugging Face hub or its cache "
                    f"({type(err).__name__}). Offline, give local records instead: --data.init_args.train_file PATH "
                    "(.json/.jsonl/.jsonl.gz with instruction/input/output or messages)."
                ) from err
        raise ConfigError(NO_SOURCE)

    def prepare_data(self) -> None:
        self.load_tokenizer()  # converts/caches the embedded model once, before DDP ranks start
        if not (self.trainer is not None and self.trainer.predicting):  # predict needs only the instructions
            self._raw()

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            instructions = list(self.hparams.predict_instructions or [])
            if not instructions:
                raise ConfigError("llm-course predict needs data.predict_instructions (a list of instructions)")
            self.predict_set = [{"index": i, "instruction": x} for i, x in enumerate(instructions)]
            return
        if self.splits:
            return
        hp, raw = self.hparams, self._raw()
        train = raw["train"]
        if hp.where:
            missing = [k for k in hp.where if k not in train.column_names]
            if missing:
                raise ConfigError(f"data.where names {missing}, not columns of the data: {train.column_names}")
            train = train.filter(lambda r: all(str(r[k]) == str(v) for k, v in hp.where.items()))
        held = (0 if "validation" in raw else hp.val_size) + hp.test_size
        if held >= len(train):
            raise ConfigError(f"data.val_size + data.test_size = {held} leaves no training records of {len(train)}")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(hp.seed)).tolist()
        splits = {"train": train.select(order[held:])}
        if "validation" in raw:
            splits["validation"] = raw["validation"]
        else:
            splits["validation"] = train.select(order[: hp.val_size])
        if hp.test_size:
            splits["test"] = train.select(order[held - hp.test_size : held])
        if hp.max_train_samples:
            splits["train"] = splits["train"].select(range(min(hp.max_train_samples, len(splits["train"]))))
        tokenizer = self.load_tokenizer()
        for name, split in splits.items():
            tokens = split.map(lambda r: tokenize_record(tokenizer, r, hp.max_length, hp.loss_on),
                               remove_columns=split.column_names, desc=f"tokenizing {name}")  # fmt: skip
            # an example whose prompt fills max_length has nothing left to learn from
            kept = tokens.filter(lambda r: any(x != IGNORE_INDEX for x in r["labels"][1:]))
            self.dropped[name] = len(tokens) - len(kept)
            if len(tokens) and not len(kept):
                raise ConfigError(
                    f"data.max_length={hp.max_length} leaves no response tokens in any of the {len(tokens)} {name} "
                    "examples (their prompts alone are that long); raise data.max_length"
                )
            self.splits[name] = kept

    def collate(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        from transformers import DataCollatorForSeq2Seq

        # pads input_ids with the pad token, attention_mask with 0 and labels with -100
        collator = DataCollatorForSeq2Seq(self.tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
        return collator(rows)

    def _loader(self, split: str, train: bool) -> DataLoader:
        data, hp = self.splits[split], self.hparams
        batch = hp.batch_size if train else hp.eval_batch_size
        sampler = None
        if hp.group_by_length:
            lengths = [len(x) for x in data["input_ids"]]
            sampler = LengthGroupedSampler(lengths, batch) if train else SortedSampler(lengths)
        # evaluation loaders get an unpadded shard per DDP rank: each held-out token counts once
        return make_loader(data, batch, shuffle=train, num_workers=hp.num_workers, collate_fn=self.collate,
                           sampler=sampler)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.splits:
            raise ConfigError("no test split: set data.test_size (records held out from train) to test")
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        # one instruction per batch, in input order (an unpadded shard of it per DDP rank)
        return make_loader(self.predict_set, 1, collate_fn=lambda rows: rows[0])
