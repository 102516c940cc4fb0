"""The README and the notes stay true: CI installs and tests with the README's own commands, its links resolve,
and every ``llm-course`` command they show parses with the real parser (``--print_config``, as a dry run)."""

import re
import shlex

import pytest

from conftest import ROOT, run_cli
from llm_course.cli import COMMANDS, TRAINER_COMMANDS

README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "notes").glob("[0-9][0-9]_*.md"))]
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
            if argv and argv[0] in (*TRAINER_COMMANDS, *COMMANDS):
                found.append((f"{doc.name}: {line.strip()[:80]}", argv))
    return found


COMMANDS_SHOWN = shown_commands()


def test_the_docs_show_every_kind_of_command():
    shown = {argv[0] for _, argv in COMMANDS_SHOWN}
    assert {"fit", "test", "predict", "env", "bench", "merge"} <= shown
    assert len(COMMANDS_SHOWN) >= 25


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


def test_ci_uses_the_readme_install_and_test_commands():
    install = re.search(r"^pip install torch==.*$", README, re.M).group(0)
    assert install.replace("pip install", "pip install -q") in CI
    assert "python -m pytest -q" in README and "python -m pytest -q" in CI


def test_readme_links_point_at_files():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_run_benchmarks_script_runs_the_readme_commands():
    """scripts/run_benchmarks.sh reproduces the results table with exactly the README's commands."""
    script = (ROOT / "scripts" / "run_benchmarks.sh").read_text().replace("\\\n", " ")
    script = re.sub(r" +", " ", script).replace('"$DATA', "../shared/data").replace('.gz"', ".gz")
    table = README.split("Measured results", 1)[1].split("\n\n", 2)[1]
    commands = re.findall(r"^\| [^|]+ \| `([^`]+)` \|", table, re.M)
    assert len(commands) >= 6
    for command in commands:
        assert command in script, command
