"""pyproject.toml declares what the code imports, and nothing it does not use."""

import ast
import sys
import tomllib

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# import name -> distribution name, where they differ
DISTRIBUTION = {"yaml": "pyyaml", "huggingface_hub": "huggingface-hub", "jsonargparse": "jsonargparse",
                "sentence_transformers": "sentence-transformers", "faiss": "faiss-cpu", "PIL": "pillow",
                "Stemmer": "PyStemmer"}  # fmt: skip
# used without an import of their own: transformers loads them (device_map placement, GGUF reading),
# Lightning's TensorBoardLogger writes through tensorboard
USED_INDIRECTLY = {"accelerate", "gguf", "tensorboard"}
OPTIONAL = {"torchvision"}  # imported inside try: only to download data when it is installed


def imported_packages(folder: str, module_level: bool = False) -> set[str]:
    """Top-level package names imported anywhere in ``folder`` (or only in module bodies: ``module_level``)."""
    names = set()
    for path in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body if module_level else ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    local = {"llm_course", "conftest", "helpers"}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def declared(requirements: list[str]) -> set[str]:
    return {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in requirements}


def test_every_import_of_the_package_is_declared_and_every_dependency_used():
    runtime = declared(PYPROJECT["project"]["dependencies"])
    extras = declared([r for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra])
    used = {DISTRIBUTION.get(n, n) for n in imported_packages("src")} - OPTIONAL
    assert used - runtime - extras == set(), "imported but not declared"
    assert runtime - used - USED_INDIRECTLY == set(), "declared but never used"
    # an extra's package (onnxruntime, selenium) is imported where it is used, so the package imports without it
    module_level = {DISTRIBUTION.get(n, n) for n in imported_packages("src", module_level=True)}
    assert module_level - runtime == set(), "an optional package imported at module level"


def test_the_tests_imports_are_declared_in_dev():
    everything = declared(PYPROJECT["project"]["dependencies"]) | declared(
        [r for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra]
    )
    used = {DISTRIBUTION.get(n, n) for n in imported_packages("tests")} - OPTIONAL - {"tokenizers"}
    assert used - everything == set()  # tokenizers comes with transformers, which the tests exercise


def test_floors_match_the_apis_the_code_uses():
    floors = {r.split(">=")[0].split("[")[0]: r.split(">=")[1].split(",")[0].split()[0]
              for r in PYPROJECT["project"]["dependencies"] if ">=" in r}  # fmt: skip
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    if "dtype=" in source:  # from_pretrained(dtype=...) replaced torch_dtype= in transformers 4.56
        assert tuple(map(int, floors["transformers"].split(".")[:2])) >= (4, 56)
    if "auto_cli" in source:  # jsonargparse.auto_cli is in 4.36 and later (scripts/check_floors.sh)
        assert tuple(map(int, floors["jsonargparse"].split(".")[:2])) >= (4, 36)
