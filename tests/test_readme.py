"""The README stays true: CI installs and tests with the README's own commands, and its links resolve."""

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def test_ci_uses_the_readme_install_and_test_commands():
    install = re.search(r"^pip install torch==.*$", README, re.M).group(0)
    assert install.replace("pip install", "pip install -q") in CI
    assert "python -m pytest -q" in README and "python -m pytest -q" in CI


def test_readme_links_point_at_files():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
