"""DataModule for Module 3: text classification (IMDb, AG News, or your own files) with a HF tokenizer."""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from datasets import ClassLabel, Dataset, DatasetDict, load_from_disk
from torch.utils.data import DataLoader

from llm_course.assets import cache_dir, from_pretrained
from llm_course.errors import ConfigError, MissingFileError
from llm_course.loaders import check_fractions, make_loader
from llm_course.text.sampling import LengthGroupedSampler, SortedSampler
from llm_course.text.sources import aclimdb_files, load_aclimdb, load_files, load_hub
from llm_course.truncation import encode_texts

NO_SOURCE = (
    "no text data given: set data.dataset (hub name, e.g. stanfordnlp/imdb), data.train_file/test_file "
    "(local .jsonl[.gz]/.csv/.parquet), or data.aclimdb_dir"
)



class TextClassificationDataModule(L.LightningDataModule):
    """Texts and labels from a hub dataset, local files or an ``aclImdb/`` folder, tokenized once and cached.

    Sources, first match wins: local files (``train_file`` + optional ``val_file``/``test_file``), then
    ``aclimdb_dir``, then the hub ``dataset`` (so a config naming a hub dataset runs offline on local copies).
    Without a validation split, ``val_fraction`` of train is held out with a seeded generator.
    Tokenized splits are saved under ``<cache>/tokenized/<fingerprint>`` (the fingerprint covers the
    source files' paths, sizes and modification times, the tokenizer and every setting that changes the
    tokens), so a second run skips it. Parallel runs with the same settings take a file lock and write
    through a private temporary folder, so the first one tokenizes and the others reuse its result.

    Args:
        model_name_or_path: tokenizer to use; ``minilm`` works offline. The CLI sets it from
            ``--model.init_args.model_name_or_path``, the flag that error messages name.
        dataset: hub dataset name, e.g. ``stanfordnlp/imdb`` or ``ag_news``.
        train_file: local training file (``.jsonl``, ``.jsonl.gz``, ``.csv``, ``.parquet``).
        val_file: local validation file.
        test_file: local test file.
        aclimdb_dir: folder of the original IMDb release (``aclImdb/{train,test}/{neg,pos}/*.txt``).
        text_column: column holding the text.
        label_column: column holding the label (integer ids or strings).
        label_names: names of the label ids; default: the dataset's ``ClassLabel`` names, else the ids.
        val_fraction: share of train held out for validation when no validation split exists.
        max_samples: keep at most this many examples per split (a seeded random subset), for quick runs.
        max_train_samples: keep at most this many training examples (after the validation split is taken).
        max_length: tokens per text, special tokens included.
        truncation: ``head`` keeps the start of long texts; ``head_tail`` keeps ``head_fraction`` of the
            budget from the start and the rest from the end (reviews often conclude at the end).
        head_fraction: share of the token budget taken from the start under ``head_tail``.
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size.
        group_by_length: batch texts of similar length together (train: random groups; eval: sorted).
        predict_texts: texts to classify with ``llm-course predict``.
        predict_file: a file with one text per line to classify with ``llm-course predict``.
        num_workers: DataLoader worker processes.
        seed: seeds the validation split and ``max_samples`` subsets.
        cache: where tokenized splits go (default ``$LLM_COURSE_CACHE``).
    """

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        dataset: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        aclimdb_dir: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        label_names: list[str] | None = None,
        val_fraction: float = 0.1,
        max_samples: int | None = None,
        max_train_samples: int | None = None,
        max_length: int = 256,
        truncation: Literal["head", "head_tail"] = "head",
        head_fraction: float = 0.25,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        group_by_length: bool = True,
        predict_texts: list[str] | None = None,
        predict_file: str | None = None,
        num_workers: int = 0,
        seed: int = 42,
        cache: str | None = None,
    ) -> None:
        super().__init__()
        check_fractions(val_fraction)
        self.save_hyperparameters()
        self.label_names: list[str] = list(label_names or [])
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            # In the CLI this value comes from the model's flag (a link), so that is the flag to name.
            self._tokenizer = from_pretrained(
                AutoTokenizer, self.hparams.model_name_or_path, "--model.init_args.model_name_or_path"
            )
        return self._tokenizer

    # ---- raw data -----------------------------------------------------------------------------------------
    def _source_id(self) -> dict:
        """What the raw data is: the hub name, and each local file's absolute path, size and mtime.

        An ``aclImdb/`` folder counts as every review file it is read from: editing one review changes its
        size or mtime but not the folder's, so the folder's own stat would miss it. Listing and stating the
        50,000 reviews takes about half a second.
        """
        hp = self.hparams
        files = {k: getattr(hp, k) for k in ("train_file", "val_file", "test_file") if getattr(hp, k)}
        stamp = {}
        for key, path in files.items():
            if Path(path).is_file():
                info = os.stat(path)
                stamp[key] = [str(Path(path).resolve()), info.st_size, info.st_mtime_ns]
        if hp.aclimdb_dir:
            walk = hashlib.sha1()
            for split, items in aclimdb_files(hp.aclimdb_dir).items():
                for label, path in items:
                    info, name = os.stat(path), os.path.basename(path)
                    walk.update(f"{split}/{label}/{name}/{info.st_size}/{info.st_mtime_ns}\n".encode())
            stamp["aclimdb_dir"] = [str(Path(hp.aclimdb_dir).resolve()), walk.hexdigest()]
        return {"dataset": hp.dataset, **files, "aclimdb_dir": hp.aclimdb_dir, "stamp": stamp}

    def _load_raw(self) -> DatasetDict:
        hp = self.hparams
        if hp.train_file or hp.test_file:
            files = {"train": hp.train_file, "validation": hp.val_file, "test": hp.test_file}
            raw = load_files({k: v for k, v in files.items() if v})
        elif hp.aclimdb_dir:
            raw = load_aclimdb(hp.aclimdb_dir)
        elif hp.dataset:
            raw = load_hub(hp.dataset)
        else:
            raise ConfigError(NO_SOURCE)
        for split, ds in raw.items():
            for col in (hp.text_column, hp.label_column):
                if col not in ds.column_names:
                    key = "text_column" if col == hp.text_column else "label_column"
                    raise ConfigError(
                        f"data.{key}={col!r} is not a column of the {split} split; columns: {ds.column_names}"
                    )
        return raw

    def _labels(self, raw: DatasetDict) -> list[str]:
        feature = next(iter(raw.values())).features[self.hparams.label_column]
        if self.label_names:
            return self.label_names
        if isinstance(feature, ClassLabel):
            return list(feature.names)
        values = sorted({v for ds in raw.values() for v in list(ds[self.hparams.label_column])})
        return (
            [str(v) for v in values]
            if all(isinstance(v, str) for v in values)
            else [str(i) for i in range(max(values) + 1)]
        )

    # ---- tokenization -------------------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids with special tokens, truncated to ``max_length`` by the configured strategy."""
        hp = self.hparams
        return encode_texts(self.tokenizer, texts, hp.max_length, hp.truncation, hp.head_fraction)

    def _fingerprint(self) -> str:
        hp = self.hparams
        keys = ("model_name_or_path", "text_column", "label_column", "label_names", "val_fraction", "max_samples",
                "max_train_samples", "max_length", "truncation", "head_fraction", "seed")  # fmt: skip
        blob = json.dumps({"source": self._source_id(), **{k: hp[k] for k in keys}}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def cache_path(self) -> Path:
        return Path(self.hparams.cache or cache_dir()) / "tokenized" / self._fingerprint()

    def prepare_data(self) -> None:
        hp = self.hparams
        predicting = self.trainer is not None and self.trainer.predicting
        if predicting or not (hp.dataset or hp.train_file or hp.test_file or hp.aclimdb_dir):
            return  # predict needs only predict_texts / predict_file
        cache = self.cache_path  # computed once: for aclimdb_dir it stats every review
        if complete(cache):
            return
        self.tokenizer  # noqa: B018  -- an unavailable model fails here, before any data is read
        from filelock import FileLock

        cache.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{cache}.lock"):  # one writer per fingerprint; the others wait, then reuse its result
            if complete(cache):
                return
            splits, names = self._tokenize()
            tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", suffix=".tmp", dir=cache.parent))
            try:
                DatasetDict(splits).save_to_disk(str(tmp))
                (tmp / "label_names.json").write_text(json.dumps(names))  # written last: marks the folder complete
                publish(tmp, cache)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def _tokenize(self) -> tuple[dict[str, Dataset], list[str]]:
        """Read the raw splits, carve out validation, subsample and tokenize: the splits and the label names."""
        hp = self.hparams
        raw = self._load_raw()
        names = self._labels(raw)
        if "validation" not in raw:
            split = raw["train"].train_test_split(test_size=hp.val_fraction, seed=hp.seed)
            raw["train"], raw["validation"] = split["train"], split["test"]
        out = {}
        for split, ds in raw.items():
            limit = min(n for n in (hp.max_samples, hp.max_train_samples if split == "train" else None, len(ds)) if n)
            if limit < len(ds):
                ds = ds.shuffle(seed=hp.seed).select(range(limit))
            labels = list(ds[hp.label_column])
            if labels and isinstance(labels[0], str):
                labels = [names.index(v) for v in labels]
            ids = self.encode(list(ds[hp.text_column]))
            out[split] = Dataset.from_dict({"input_ids": ids, "labels": labels, "length": [len(x) for x in ids]})
        return out, names

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            texts = list(self.hparams.predict_texts or [])
            if self.hparams.predict_file:
                path = Path(self.hparams.predict_file)
                if not path.is_file():
                    raise MissingFileError(f"data.predict_file: {path} does not exist")
                texts += [t for t in path.read_text().splitlines() if t.strip()]
            if not texts:
                raise ConfigError("llm-course predict needs data.predict_texts or data.predict_file")
            self.predict_texts = texts
            # the index travels with each text, so predictions gathered from DDP ranks go back into input order
            self.predict_set = Dataset.from_dict({"input_ids": self.encode(texts), "index": list(range(len(texts)))})
            if not complete(self.cache_path):
                return
        if not hasattr(self, "splits"):
            self.prepare_data()  # a no-op when Lightning already ran it (rank 0) or the cache exists
            cache = self.cache_path
            if not complete(cache):
                raise ConfigError(NO_SOURCE)
            self.splits = load_from_disk(str(cache))
            self.label_names = self.label_names or json.loads((cache / "label_names.json").read_text())

    # ---- loaders ------------------------------------------------------------------------------------------
    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Pad a batch to its own longest text (dynamic padding) and build the attention mask."""
        from transformers import DataCollatorWithPadding

        if not hasattr(self, "_collator"):
            self._collator = DataCollatorWithPadding(self.tokenizer, return_tensors="pt")
        batch = self._collator([{k: f[k] for k in ("input_ids", "labels") if k in f} for f in features])
        if features and "index" in features[0]:
            batch["index"] = torch.tensor([f["index"] for f in features])
        return batch

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        sampler = SortedSampler(list(dataset["length"])) if self.hparams.group_by_length else None
        return make_loader(dataset, self.hparams.eval_batch_size, num_workers=self.hparams.num_workers,
                           collate_fn=self.collate, sampler=sampler)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        ds, hp = self.splits["train"], self.hparams
        sampler = LengthGroupedSampler(list(ds["length"]), hp.batch_size) if hp.group_by_length else None
        return make_loader(ds, hp.batch_size, True, hp.num_workers, self.collate, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.splits["validation"])

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.splits:
            raise ConfigError("no test split: give data.test_file, or a dataset / aclimdb_dir that has one")
        return self._eval_loader(self.splits["test"])

    def predict_dataloader(self) -> DataLoader:
        # Unsorted, so predictions come back in the order of the input texts.
        return make_loader(self.predict_set, self.hparams.eval_batch_size, collate_fn=self.collate)


def complete(folder: Path) -> bool:
    """Whether a tokenized cache folder was fully written (``label_names.json`` is written last)."""
    return (folder / "dataset_dict.json").is_file() and (folder / "label_names.json").is_file()


def publish(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target`` in one atomic rename.

    A complete ``target`` already there (another writer that finished first) is kept and ``tmp`` is left for
    the caller to delete; an incomplete one (no ``label_names.json``, the last file written) is replaced.
    """
    try:
        os.rename(tmp, target)  # atomic on one file system; fails if target is a non-empty folder
        return
    except OSError:
        if not target.exists():
            raise
    if complete(target):
        return
    stale = Path(tempfile.mkdtemp(prefix=f".{target.name}-", suffix=".stale", dir=target.parent))
    os.replace(target, stale / target.name)
    os.rename(tmp, target)
    shutil.rmtree(stale, ignore_errors=True)
