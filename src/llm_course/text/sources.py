"""Where review texts come from: a hub dataset, local files, or the original ``aclImdb/`` folder layout."""

from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def file_builder(path: str) -> str:
    """The ``datasets`` builder for a local file (``.jsonl``, ``.jsonl.gz``, ``.csv``, ``.parquet``, ...)."""
    suffixes = Path(path).suffixes or [""]
    compressed = suffixes[-1] in (".gz", ".bz2", ".xz", ".zst") and len(suffixes) > 1
    suffix = suffixes[-2] if compressed else suffixes[-1]
    if suffix not in FILE_BUILDERS:
        raise ValueError(
            f"{path}: unsupported file type {suffix!r}; use one of {', '.join(FILE_BUILDERS)} (optionally .gz)"
        )
    return FILE_BUILDERS[suffix]


def load_files(files: dict[str, str]) -> DatasetDict:
    """Load local split files (``{"train": path, ...}``), which may mix formats.

    Raises:
        FileNotFoundError: a file does not exist.
    """
    out = {}
    for split, path in files.items():
        builder = file_builder(path)
        if not Path(path).is_file():
            flag = "val" if split == "validation" else split
            raise FileNotFoundError(f"data.{flag}_file: {path} does not exist")
        out[split] = load_dataset(builder, data_files={split: path}, split=split)
    return DatasetDict(out)


def load_aclimdb(folder: str) -> DatasetDict:
    """Read ``aclImdb/{train,test}/{neg,pos}/*.txt`` (the original release) into train and test splits."""
    root = Path(folder)
    if not (root / "train").is_dir() and (root / "aclImdb").is_dir():
        root = root / "aclImdb"
    splits = {}
    for split in ("train", "test"):
        texts, labels = [], []
        for label, name in enumerate(("neg", "pos")):
            files = sorted((root / split / name).glob("*.txt"))
            texts += [f.read_text(encoding="utf-8") for f in files]
            labels += [label] * len(files)
        if texts:
            features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
            splits[split] = Dataset.from_dict({"text": texts, "label": labels}, features=features)
    if "train" not in splits:
        raise FileNotFoundError(
            f"data.aclimdb_dir: no reviews under {root}/train/{{neg,pos}}/*.txt; "
            "point it at the unpacked aclImdb folder"
        )
    return DatasetDict(splits)


def load_hub(name: str, config: str | None = None) -> DatasetDict:
    """``datasets.load_dataset(name)`` with an offline failure turned into a message that says what to do."""
    try:
        return load_dataset(name, config)
    except (ConnectionError, OSError, ValueError) as err:
        raise FileNotFoundError(
            f"data.dataset={name!r} could not be loaded from the Hugging Face hub or its cache ({type(err).__name__}). "
            "Offline, give local files instead: --data.init_args.train_file PATH --data.init_args.test_file PATH "
            "(.jsonl[.gz], .csv or .parquet with text and label columns), or --data.init_args.aclimdb_dir DIR for the "
            "original aclImdb folder."
        ) from err
