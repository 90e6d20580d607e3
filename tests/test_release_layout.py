"""The release layout in one process: which ``sys.path`` entries are the
interpreter's own, which link is the release link, and how paths follow it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graceful._version import PROTOCOL, VERSION
from graceful.base.errors import ConfigError
from graceful.code.release import (
    Anchored,
    ReleaseError,
    ReleaseLayout,
    application_entries,
    child_sys_path,
    find_release_link,
)
from graceful.supervisor.runtimes import GenerationRuntimes
from graceful.wire.messages import Hello


def test_what_a_fresh_interpreter_puts_on_sys_path_is_its_own() -> None:
    """Everything a child's interpreter computes by itself (the standard library,
    site-packages, what .pth files add) is left for the child: none of it is passed on
    as the application's."""
    natural = json.loads(
        subprocess.run(
            [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"],
            capture_output=True,
            text=True,
            check=True,
            env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
            cwd="/",
        ).stdout
    )
    assert natural[0] == ""
    assert application_entries(natural[1:], "/") == []


def test_the_applications_entries_keep_their_order_and_lose_repeats(tmp_path: Path) -> None:
    app, lib = tmp_path / "app", tmp_path / "lib"
    stdlib = os.path.dirname(os.__file__)
    entries = [str(app), "", stdlib, str(lib), str(app), os.path.join(stdlib, "lib-dynload")]
    assert application_entries(entries, str(tmp_path)) == [str(app), str(tmp_path), str(lib)]
    assert child_sys_path([str(app)], ["", "/usr/lib/x", str(app)]) == [str(app), "/usr/lib/x"]


def test_a_path_follows_the_link_once_anchored_in_the_release() -> None:
    assert Anchored("/srv/current/app.py", "app.py").at("/srv/releases/r2") == (
        "/srv/releases/r2/app.py"
    )
    assert Anchored("/usr/bin/python3").at("/srv/releases/r2") == "/usr/bin/python3"


@pytest.fixture
def releases(tmp_path: Path) -> Path:
    for name in ("r1", "r2"):
        (tmp_path / "releases" / name / "pkg").mkdir(parents=True)
    (tmp_path / "current").symlink_to(Path("releases") / "r1")
    # a link above the release link, as /srv -> /data/srv
    (tmp_path / "mount").symlink_to(tmp_path)
    return tmp_path


def test_the_deepest_link_that_holds_the_working_directory_is_the_release_link(
    releases: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(releases / "current" / "pkg")
    assert find_release_link(str(releases / "current" / "pkg")) == str(releases / "current")
    # started through a link above the release link: the release link still wins
    monkeypatch.setattr(sys, "argv", [str(releases / "mount" / "current" / "pkg" / "x.py")])
    assert find_release_link(os.getcwd()) == str(releases / "mount" / "current")
    # a link that holds nothing the service runs from is no release link
    monkeypatch.setattr(sys, "argv", ["-c"])
    monkeypatch.chdir(releases / "releases" / "r2")
    assert find_release_link(os.getcwd()) is None


def test_each_resolution_follows_the_link_anew_and_names_what_is_missing(
    releases: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(releases / "current")
    monkeypatch.setenv("PWD", str(releases / "current"))
    layout = ReleaseLayout.adopt(releases / "current")
    assert layout.resolve().cwd == str(releases / "releases" / "r1")
    (releases / "current").unlink()
    (releases / "current").symlink_to(Path("releases") / "r2")
    assert layout.resolve().cwd == str(releases / "releases" / "r2")
    (releases / "current").unlink()
    (releases / "current").symlink_to(Path("releases") / "r9")
    with pytest.raises(ReleaseError, match=r"current points to .*r9, which is not a directory"):
        layout.resolve()


def test_a_release_link_that_is_no_link_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a symbolic link to a directory"):
        ReleaseLayout.adopt(tmp_path)


def test_a_generation_started_from_two_releases_is_said_mixed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The link switched while a generation started: its workers run two releases;
    status says the generation may be mixed, and the log names both."""
    runtimes = GenerationRuntimes()
    hello = Hello(VERSION, PROTOCOL, "3.11.7", "/srv/releases/r2/.venv/bin/python3")
    assert runtimes.hello(2, "/srv/releases/r2", hello) is None
    assert not runtimes.mixed(2)
    assert runtimes.hello(2, "/srv/releases/r3", hello) is None
    assert runtimes.mixed(2)
    assert runtimes.describe(2)["releases"] == ["/srv/releases/r2", "/srv/releases/r3"]
    assert "generation 2's workers run from 2 releases" in caplog.text
