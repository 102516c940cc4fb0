"""Module 3's data for the tour: a sample of the IMDb files when they are given, else the tour's offline review set,
short movie reviews written by rule and labelled by construction.

What it is: English sentences assembled from the templates and word lists in this file with a seeded generator, so the
same seed gives the same reviews. Each review is negative (0) or positive (1) by construction: its closing verdict and
most of its clauses carry the label, and some reviews add a clause of the other polarity or a negation ("was not
dull") so that a bag of words alone does not decide every one. They are not real reviews, and scores on them say that
the pipeline works, not how well a model reads real text (for that, give the tour the IMDb files: ``--imdb_dir``).

Licence: written for llm-course and part of it (Apache-2.0, as the package); no third-party text.
"""

import gzip
import json
import random
from pathlib import Path

from llm_course.errors import MissingFileError

TITLES = ["This thriller", "This comedy", "The sequel", "This drama", "The remake", "This western", "The documentary",
          "This romance", "The animated film", "This horror film", "The biopic", "This musical"]  # fmt: skip
PARTS = ["the acting", "the plot", "the script", "the soundtrack", "the ending", "the camera work", "the dialogue",
         "the pacing", "the cast", "the direction", "the story", "the special effects",
         "the lead performance"]  # fmt: skip
WORDS = {
    1: ["superb", "moving", "brilliant", "gripping", "charming", "clever", "beautiful", "wonderful", "delightful",
        "sharp", "stunning", "heartfelt", "funny", "tense", "fresh"],
    0: ["dull", "clumsy", "boring", "wooden", "predictable", "messy", "tedious", "awful", "lifeless", "confusing",
        "flat", "forgettable", "silly", "slow", "cheap"],
}  # fmt: skip
VERDICTS = {
    1: ["I loved it.", "Highly recommended.", "I would watch it again.", "A real treat.", "Worth every minute.",
        "One of the best films this year.", "Go and see it.", "It stayed with me for days."],
    0: ["I want my money back.", "Avoid it.", "A waste of two hours.", "I nearly walked out.", "Not worth your time.",
        "One of the worst films this year.", "Skip this one.", "I forgot it by the next morning."],
}  # fmt: skip
LABEL_NAMES = ["neg", "pos"]


def review(rng: random.Random, label: int) -> str:
    """One review whose overall sentiment is ``label`` (0 negative, 1 positive)."""
    other = 1 - label
    title, (a, b, c) = rng.choice(TITLES), rng.sample(PARTS, 3)
    good, bad = rng.sample(WORDS[label], 2), rng.choice(WORDS[other])
    kind = rng.randrange(4)
    if kind == 0:  # every clause agrees
        body = f"{title} was {good[0]}. {a.capitalize()} was {good[1]}."
    elif kind == 1:  # a clause of the other polarity, outweighed
        body = f"{a.capitalize()} was {bad}, but {b} was {good[0]} and {c} was {good[1]}."
    elif kind == 2:  # a negated word of the other polarity
        body = f"{title} was not {bad} at all; {a} was {good[0]}."
    else:  # the verdict alone carries most of the weight
        body = f"{title} had {a} that was {good[0]}, though {b} was {bad}."
    return f"{body} {rng.choice(VERDICTS[label])}"


def reviews(n: int, seed: int) -> list[dict]:
    """``n`` reviews, half of each label, in a seeded random order: ``{"text": ..., "label": 0 or 1}``."""
    rng = random.Random(seed)
    rows = [{"text": review(rng, i % 2), "label": i % 2} for i in range(n)]
    rng.shuffle(rows)
    return rows


def instructions(rows: list[dict]) -> list[dict]:
    """Module 6's records from reviews: the instruction asks for the sentiment, the output answers in one word."""
    return [{"instruction": question(r["text"]), "input": "", "output": "Positive." if r["label"] else "Negative."}
            for r in rows]  # fmt: skip


def question(text: str) -> str:
    return f"Is this movie review positive or negative? Answer with one word.\n\n{text}"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def text_files(folder: Path, tiny: bool, imdb_dir: str | None) -> tuple[Path, Path, str]:
    """Module 3's train and test files in ``folder``, and what they hold: a seeded sample of the IMDb files in
    ``imdb_dir``, else the rule-written reviews."""
    if imdb_dir is None:
        n_train, n_test = (160, 64) if tiny else (800, 200)
        train = write_jsonl(folder / "reviews_train.jsonl", reviews(n_train, seed=1))
        test = write_jsonl(folder / "reviews_test.jsonl", reviews(n_test, seed=2))
        return train, test, ("the tour's rule-written reviews (llm_course/tour/reviews.py: templates, not real "
                             f"reviews; Apache-2.0 like the course), {n_train} train + {n_test} test")  # fmt: skip
    n_train, n_test = (200, 100) if tiny else (2000, 500)
    splits = imdb_splits(Path(imdb_dir))
    rng = random.Random(42)
    train, test = (rng.sample(splits[s], min(n, len(splits[s]))) for s, n in (("train", n_train), ("test", n_test)))
    files = []
    for split, rows in (("train", train), ("test", test)):  # aclImdb rows name their file: read the sample only
        rows = [{"text": r["text"] if "text" in r else Path(r["path"]).read_text(encoding="utf-8"),
                 "label": r["label"]} for r in rows]  # fmt: skip
        files.append(write_jsonl(folder / f"imdb_{split}.jsonl", rows))
    source = f"IMDb (Maas et al., ACL 2011) from {imdb_dir}: a seeded sample of {n_train} train + {n_test} test"
    return files[0], files[1], source


def imdb_splits(folder: Path) -> dict[str, list[dict]]:
    """``{"train": rows, "test": rows}`` from ``train.jsonl[.gz]`` + ``test.jsonl[.gz]`` or an ``aclImdb/`` folder
    (whose rows name their review file, read once sampled).

    Raises:
        MissingFileError: ``folder`` holds neither.
    """
    for suffix in (".jsonl.gz", ".jsonl"):
        files = {s: folder / f"{s}{suffix}" for s in ("train", "test")}
        if all(f.is_file() for f in files.values()):
            opener = gzip.open if suffix.endswith(".gz") else open
            out = {}
            for split, path in files.items():
                with opener(path, "rt", encoding="utf-8") as f:
                    rows = [json.loads(line) for line in f if line.strip()]
                out[split] = [{"text": r["text"], "label": r["label"]} for r in rows]
            return out
    from llm_course.text.sources import aclimdb_files

    found = aclimdb_files(str(folder))
    if set(found) != {"train", "test"}:
        raise MissingFileError(f"--imdb_dir {folder}: neither train.jsonl[.gz] + test.jsonl[.gz] (e.g. "
                               "../shared/data/imdb) nor an aclImdb/ folder with train/ and test/ reviews; leave "
                               "--imdb_dir out to use the tour's own rule-written reviews")  # fmt: skip
    return {s: [{"path": p, "label": label} for label, p in items] for s, items in found.items()}
