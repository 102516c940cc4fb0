"""The READMEs and the notes stay true: the set-up script runs what README lists and CI runs it, their links
resolve, the Chinese quick start shows the English README's tables (same links, commands and numbers), and every
``llm-course`` command they show is a command that parses with the real parser (``--print_config``, as a dry run)."""

import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from llm_course.cli import TRAINER_COMMANDS

README = (ROOT / "README.md").read_text()
README_ZH = (ROOT / "README.zh-CN.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()
DOCS = [ROOT / "README.md", ROOT / "README.zh-CN.md", *sorted((ROOT / "notes").glob("[0-9][0-9]_*.md"))]
INLINE = re.compile(r"`((?:[A-Z_]+=\S+ )*llm-course [^`]+)`")


def shell_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks that are not Python (bash, console, plain)."""
    blocks, current, language = [], None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language not in ("python", "yaml", "json"):
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def shown_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` for every ``llm-course`` command in a code block or inline code of README and notes."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        lines = [line for block in shell_blocks(text) for line in block.replace("\\\n", " ").splitlines()]
        lines += INLINE.findall(text)
        for line in lines:
            if "llm-course " not in line and "-m llm_course " not in line:
                continue
            tail = re.split(r"llm-course |-m llm_course ", line, maxsplit=1)[1]
            argv = shlex.split(tail, comments=True)
            if argv[:1] == ["bench"] and len(argv) == 1 or argv in (["fit"], ["test"], ["predict"], ["validate"]):
                continue  # a command named in prose, not one to run
            if argv:  # a command the CLI does not know fails its parse below ("unknown command"), not skipped
                found.append((f"{doc.name}: {line.strip()[:80]}", argv))
    return found


COMMANDS_SHOWN = shown_commands()


def test_the_docs_show_every_kind_of_command():
    shown = {argv[0] for _, argv in COMMANDS_SHOWN}
    assert {"fit", "test", "predict", "env", "bench", "merge", "tour"} <= shown
    assert len(COMMANDS_SHOWN) >= 25
    in_chinese = [argv for where, argv in COMMANDS_SHOWN if where.startswith("README.zh-CN.md")]
    assert ["fit", "--config", "configs/linreg.yaml"] in in_chinese and len(in_chinese) >= 25


@pytest.mark.parametrize("argv", [a for _, a in COMMANDS_SHOWN], ids=[w for w, _ in COMMANDS_SHOWN])
def test_shown_command_parses(argv, capsys):
    if "--help" in argv or argv == ["env"]:
        dry = argv if "--help" in argv else [*argv, "--as_json=true"]
    elif argv[0] in TRAINER_COMMANDS and "--config" not in argv:
        pytest.fail(f"{argv}: a trainer command without --config cannot run as shown")
    else:
        dry = [*argv, "--print_config"]
    with pytest.raises(SystemExit) as exc:
        run_cli(*dry)
        raise SystemExit(0)  # env runs for real and returns
    assert exc.value.code in (0, None), capsys.readouterr().err
    if argv[0] == "bench" and "--overrides" in argv:  # the task config with the overrides the benchmark applies
        import yaml

        parsed = yaml.safe_load(capsys.readouterr().out)
        task = ["--config", parsed["task_config"]] if parsed.get("task_config") else []
        with pytest.raises(SystemExit) as exc:
            run_cli("fit", *task, *parsed["overrides"], "--print_config")
        assert exc.value.code in (0, None)


def test_a_misspelled_command_fails_with_the_list(capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli("fitt", "--config", "configs/linreg.yaml")
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "unknown command 'fitt'" in err and "fit, validate" in err
    assert "Traceback" not in err


SETUP_AND_RUN = "bash scripts/setup.sh && .venv/bin/llm-course tour"


def block_lines(text: str) -> list[str]:
    return [line for block in shell_blocks(text) for line in block.splitlines()]


@pytest.mark.parametrize("text", [README, README_ZH], ids=["README.md", "README.zh-CN.md"])
def test_readme_gives_one_command_to_set_up_and_run_and_one_to_set_up_and_test(text):
    lines = [line.split("#")[0].strip() for line in block_lines(text)]
    assert SETUP_AND_RUN in lines and "bash .ci/run" in lines
    needs = re.search(r'^requires-python = ">=([0-9.]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert f"Python {needs} " in text  # the version it names is the one pyproject.toml asks for


def by_hand(text: str) -> list[list[str]]:
    """The commands of the README's by-hand set-up block (the one that makes the venv), ``sudo`` left out."""
    block = next(b for b in shell_blocks(text) if b.startswith("python3 -m venv"))
    return [[a for a in shlex.split(part) if a != "sudo"] for line in block.splitlines() for part in line.split("&&")]


def test_setup_script_runs_what_the_readmes_list():
    """``scripts/setup.sh --dry_run`` prints the commands a fresh machine runs: exactly the READMEs' by-hand list."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # python3: this one, new enough
    done = subprocess.run(["bash", "scripts/setup.sh", "--dry_run"], cwd=ROOT, env={**os.environ, "PATH": path},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    ran = [[a for a in shlex.split(line[2:]) if a != "sudo"] for line in done.stdout.splitlines() if line[:2] == "+ "]
    assert ran == by_hand(README) == by_hand(README_ZH)
    assert [a[:3] for a in ran] == [["python3", "-m", "venv"], [".venv/bin/pip", "install", "torch==2.13.0"],
                                    [".venv/bin/pip", "install", "-e"], [".venv/bin/pip", "install", "--no-deps"],
                                    ["apt-get", "update"], ["apt-get", "install", "-y"]]  # fmt: skip
    for script in ("scripts/setup.sh", ".ci/run", "scripts/gpu_check.sh", "scripts/check_floors.sh"):
        assert subprocess.run(["bash", "-n", script], cwd=ROOT).returncode == 0, script


def test_ci_runs_the_setup_script_and_the_readme_test_command():
    lines = [line.strip() for line in CI.splitlines() if line.strip() and not line.startswith("#")]
    assert "bash scripts/setup.sh .venv-ci" in lines and ". .venv-ci/bin/activate" in lines
    assert lines[-3:] == ["python -m pytest -q", "deactivate", "bash scripts/check_floors.sh"]  # the floors after
    assert "`python -m pytest -q`" in README and "`bash scripts/check_floors.sh`" in README.split("## Tests", 1)[1]


@pytest.mark.parametrize("text", [README, README_ZH], ids=["README.md", "README.zh-CN.md"])
def test_readme_links_point_at_files(text):
    assert "](README.zh-CN.md)" in README.split("\n\n", 2)[1]  # the Chinese quick start, at the top
    for target in re.findall(r"\]\(([^)#]+)[^)]*\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``: rows (header and separator left out) of cells."""
    found, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"\s\|\s", line.strip().strip("|"))])
        elif rows:
            found.append(rows[2:])
            rows = []
    return found


def modules_and_results(text: str) -> tuple[list[list[str]], list[list[str]]]:
    found = tables(text)
    return next(t for t in found if len(t[0]) == 6), next(t for t in found if len(t[0]) == 3)


def links(cell: str) -> list[str]:
    return [("README.md" + t) if t.startswith("#") else t for t in re.findall(r"\]\(([^)]+)\)", cell)]


def code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def numbers(cells: list[str]) -> Counter:
    """The numbers written in ``cells`` (link targets left out), as a multiset: 1,096 and 0.9025 are one each."""
    return Counter(re.findall(r"\d+(?:[.,]\d+)*", re.sub(r"\]\([^)]*\)", "]", " ".join(cells))))


def test_the_chinese_quick_start_shows_the_readme_tables():
    """README.zh-CN.md's module and results tables: same rows, links and commands as README.md's, and in each results
    row the same numbers, so a number re-measured in one README and not the other fails here."""
    modules, results = modules_and_results(README)
    modules_zh, results_zh = modules_and_results(README_ZH)
    assert len(modules_zh) == len(modules) == 9 and len(results_zh) == len(results) >= 10
    for en, zh in zip(modules, modules_zh, strict=True):
        assert zh[0] == en[0] and [links(c) for c in zh[2:]] == [links(c) for c in en[2:]], en[0]
        assert code(zh[3]) == code(en[3]), en[0]  # the commands
    for en, zh in zip(results, results_zh, strict=True):
        assert code(zh[1]) == code(en[1]) and links(zh[2]) == links(en[2]), en[1]
        assert numbers([zh[0], zh[2]]) == numbers([en[0], en[2]]), (en[1], numbers([en[0], en[2]]))


def test_run_benchmarks_script_runs_the_readme_commands():
    """scripts/run_benchmarks.sh reproduces the results table with exactly the README's commands."""
    script = (ROOT / "scripts" / "run_benchmarks.sh").read_text().replace("\\\n", " ")
    script = re.sub(r" +", " ", script).replace('"$DATA', "../shared/data").replace('.gz"', ".gz")
    table = README.split("Measured results", 1)[1].split("\n\n", 2)[1]
    commands = re.findall(r"^\| [^|]+ \| `([^`]+)` \|", table, re.M)
    assert len(commands) >= 6
    for command in commands:
        assert command in script, command
