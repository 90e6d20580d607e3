"""The distribution's name: ``graceful`` on PyPI is another project, so the README's
install line must name this one, and installing by it must install this tree."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from harness import ROOT

from graceful import _version

#: ``pip install 'NAME[extra]'`` in the README and the docs.
INSTALL = re.compile(r"pip install '([A-Za-z0-9_.-]+)\[[a-z, ]+\]'")


def install_lines() -> list[tuple[Path, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        found += [(path, name) for name in INSTALL.findall(path.read_text())]
    return found


def test_every_install_line_names_this_distribution() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == _version.DISTRIBUTION != "graceful"
    lines = install_lines()
    assert lines, "no install line found"
    assert {name for _, name in lines} == {_version.DISTRIBUTION}, lines


def test_the_readmes_install_line_installs_this_project(tmp_path: Path) -> None:
    """Built from this tree, then installed by the README's requirement into a new
    virtual environment (without its dependencies: they come from PyPI)."""
    [requirement] = set(re.findall(r"pip install '([^']+)'", (ROOT / "README.md").read_text()))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
         "--find-links", str(wheels), requirement],
        check=True,
        timeout=300,
    )  # fmt: skip
    shown = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; "
         f"print(m.version({_version.DISTRIBUTION!r})); "
         "print(sorted(f.name for f in m.files(" f"{_version.DISTRIBUTION!r}) "
         "if f.name == '_boot.py'))"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert shown.stdout.split("\n")[:2] == [_version.VERSION, "['_boot.py']"], shown.stdout
