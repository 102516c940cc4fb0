#!/usr/bin/env bash
# Prove the dependency floors of pyproject.toml: build a second environment where every direct dependency (the
# package's and those of the dev and assets extras, which the tests use) is pinned to exactly its floor (`name>=X`
# becomes `name==X`; uv's --resolution lowest-direct, so the rest are the newest those pins allow, as a user would
# get them), then import every module and run an import-and-smoke subset of the tests there. A floor that cannot be
# installed with the others, or that fails here, is false: raise it in pyproject.toml to the lowest version that
# passes. .ci/run runs it after the tests (2.5 to 4 minutes on 2 cores, cold uv cache included).
#
# Usage: bash scripts/check_floors.sh [VENV_DIR]        (default /tmp/llm-course-floors; rebuilt each run)
#   PYTHON=python3.11   the interpreter the environment is made from (default python3)
#   TORCH_INDEX=URL     where CPU torch comes from, as in scripts/setup.sh (default
#                       https://download.pytorch.org/whl/cpu; when it cannot be reached, pip's find-links, e.g. a
#                       folder that holds the CPU wheel)
#   UV=PATH             a uv to use (default: `uv` on the PATH, else one pip-installed into VENV_DIR-uv)
#
# torch is the exception: it stays at the CPU build scripts/setup.sh installs (torch==2.13.0), the only one this
# machine can reach, so its own floor (torch>=2.4) is not what this checks. The optional extras (onnx, faiss, agent,
# deepspeed) are not installed: the tests that need them skip, and their floors are not checked here.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-/tmp/llm-course-floors}
if [ -e "$VENV" ] && [ ! -f "$VENV/floors.txt" ]; then  # it is rebuilt: never wipe an environment it did not make
  echo "error: $VENV exists and is not an environment this script made (no floors.txt in it): give another path" >&2
  exit 1
fi
PYTHON=${PYTHON:-python3}
EXTRAS=(dev assets)
TORCH_VERSION=2.13.0
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
SMOKE=(  # fast tests that touch the direct dependencies: the CLI (Lightning, jsonargparse, TensorBoard), Module 3's
  # data and model (datasets, transformers, torchmetrics), the API and the page (FastAPI, uvicorn, pydantic, Gradio,
  # openai, httpx), RAG (sentence-transformers, bm25s, PyStemmer)
  tests/test_cli.py
  tests/test_text.py
  tests/test_serve.py
  "tests/test_serve_safety.py::test_the_page_asks_for_the_key"
  "tests/test_rag.py::test_index_is_incremental_and_drops_deleted_files"
  "tests/test_rag.py::test_answers_cite_numbered_passages_and_abstain_when_uncovered"
  "tests/test_rag.py::test_rag_commands_index_search_and_ask_json"
)

say() { printf '\n==> %s\n' "$*"; }
reachable() {  # as in scripts/setup.sh: a closed network fails at once, not after retries
  "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' "$1/torch/" 2>/dev/null
}

say "1/5 uv"
UV=${UV:-$(command -v uv || true)}
if [ -z "$UV" ]; then  # a throwaway environment of its own, kept for the next run
  if [ ! -x "$VENV-uv/bin/uv" ]; then
    "$PYTHON" -m venv "$VENV-uv"
    "$VENV-uv/bin/pip" install -q uv
  fi
  UV=$VENV-uv/bin/uv
fi
"$UV" --version

say "2/5 the floors: every direct dependency pinned to its lower bound"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$PYTHON" - "$VENV/floors.txt" "${EXTRAS[@]}" <<'EOF'
import re, sys, tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
specs = project["dependencies"] + [s for extra in sys.argv[2:] for s in project["optional-dependencies"][extra]]
pins = []
for spec in specs:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([0-9][0-9A-Za-z.]*)", spec.strip())
    if match is None:
        sys.exit(f"error: {spec!r} in pyproject.toml has no plain floor (name>=X) to check")
    if match[1] != "torch":
        pins.append(f"{match[1]}=={match[3]}")
open(sys.argv[1], "w").write("\n".join(sorted(set(pins), key=str.lower)) + "\n")
EOF
tr '\n' ' ' <"$VENV/floors.txt"
echo

say "3/5 install with uv --resolution lowest-direct (torch $TORCH_VERSION, CPU build)"
torch_source=()
if [ -n "$TORCH_INDEX" ] && reachable "$TORCH_INDEX"; then
  torch_source=(--extra-index-url "$TORCH_INDEX" --index-strategy unsafe-best-match)
else
  links=${PIP_FIND_LINKS:-$("$VENV/bin/pip" config get global.find-links 2>/dev/null || true)}
  for link in $links; do torch_source+=(--find-links "$link"); done
fi
if [ ${#torch_source[@]} -gt 0 ]; then
  echo "torch==$TORCH_VERSION+cpu" >"$VENV/torch.txt"
else
  echo "NOTE: no CPU torch index or find-links: torch comes from PyPI (the CUDA build)" >&2
  echo "torch==$TORCH_VERSION" >"$VENV/torch.txt"
fi
"$UV" pip install --python "$VENV/bin/python" --resolution lowest-direct ${torch_source[@]+"${torch_source[@]}"} \
  --constraint "$VENV/floors.txt" --override "$VENV/torch.txt" -e ".[$(IFS=,; echo "${EXTRAS[*]}")]"
"$UV" pip freeze --python "$VENV/bin/python" >"$VENV/freeze.txt"

say "4/5 import every module of llm_course"
"$VENV/bin/python" - <<'EOF'
import importlib, pkgutil, sys

import llm_course

OPTIONAL = {"onnx", "onnxruntime", "onnxscript", "faiss", "llguidance", "deepspeed"}  # extras not installed here
failed = []
for module in pkgutil.walk_packages(llm_course.__path__, "llm_course."):
    if module.name.endswith("__main__"):
        continue  # it runs the CLI
    try:
        importlib.import_module(module.name)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in OPTIONAL:
            failed.append(f"{module.name}: {err!r}")
    except Exception as err:  # noqa: BLE001 - every failure is reported
        failed.append(f"{module.name}: {err!r}")
print("\n".join(failed) or "every module imports")
sys.exit(1 if failed else 0)
EOF

say "5/5 the smoke tests"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "${SMOKE[@]}"
say "the floors hold (the versions: $VENV/freeze.txt)"
