"""The ``graceful`` command line: usage errors, ``run``, PID files, reload and stop."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from harness import graceful_cli, poll_until, running
from services import service_source, wait_for_file


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required: command"),
        (("serve",), "the following arguments are required: app"),
        (("serve", "app:app", "--workers", "0"), "'0' must be a whole number of at least 1"),
        (("serve", "app:app", "--drain-timeout", "soon"), "'soon' is not a number of seconds"),
        (("serve", "app:app", "--server", "tornado"), "invalid choice: 'tornado'"),
        (("serve", "app"), "app 'app' must look like 'package.module:attribute'"),
        (
            ("serve", "app:app", "--server", "uvicorn", "--backend", "trio"),
            "uvicorn runs on asyncio only",
        ),
        (("serve", "app:app", "--listen", "localhost:http"), "port 'http' is not a number"),
        (("run", "nocolon"), "entry 'nocolon' must look like 'package.module:name'"),
        (("serve", "app:app", "--max-surge", "0"), "'0' must be a whole number of at least 1"),
        (("serve", "app:app", "--strategy", "sideways"), "invalid choice: 'sideways'"),
        (("scale", "--pid-file", "x.pid"), "the following arguments are required: N"),
        (("scale", "2", "--pid-file", "x.pid", "--timeout", "3"), "--timeout needs --wait"),
        (("reload",), "the following arguments are required: --pid-file"),
        (("launch",), "invalid choice: 'launch'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = graceful_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]


def test_reload_and_stop_report_a_missing_or_stale_pid_file(tmp_path: Path) -> None:
    missing = graceful_cli("reload", "--pid-file", str(tmp_path / "nope.pid"))
    assert missing.returncode == 1
    assert "no PID file at" in missing.stderr
    stale = tmp_path / "stale.pid"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale.write_text(f"{dead.pid}\n")
    result = graceful_cli("stop", "--pid-file", str(stale))
    assert result.returncode == 1
    assert f"no process {dead.pid} (stale PID file" in result.stderr
    garbage = tmp_path / "garbage.pid"
    garbage.write_text("hello\n")
    assert "does not hold a PID" in graceful_cli("stop", "--pid-file", str(garbage)).stderr


def test_run_writes_the_pid_file_once_ready_and_obeys_reload_and_stop(tmp_path: Path) -> None:
    package = tmp_path / "shop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    gate = tmp_path / "ready-now"
    (package / "svc.py").write_text(service_source(prefix="one", before_serve=wait_for_file(gate)))
    pid_file = tmp_path / "run" / "shop.pid"
    pid_file.parent.mkdir()
    env = {"LISTEN": "127.0.0.1:0"}
    args = ["run", "shop.svc:main", "--pid-file", str(pid_file)]
    with running(tmp_path / "x", module="graceful", args=args, cwd=tmp_path, env=env) as svc:
        svc.wait_for("starting generation 1")
        # generation 1 is still starting (it waits for the gate): no PID file yet
        assert not pid_file.exists()
        gate.touch()
        svc.wait_serving(1)
        poll_until(pid_file.exists, 5, "the PID file")
        assert pid_file.read_text() == f"{svc.pid}\n"
        (package / "svc.py").write_text(service_source(prefix="two"))
        mark = svc.mark()
        assert graceful_cli("reload", "--pid-file", str(pid_file)).returncode == 0
        svc.wait_serving(2, after=mark)
        assert graceful_cli("stop", "--pid-file", str(pid_file)).returncode == 0
        assert svc.wait_exit() == 0
    assert not pid_file.exists()
    assert list(pid_file.parent.iterdir()) == []  # no temporary file left behind


def test_run_refuses_what_is_not_a_service(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text("def main(ctx):\n    pass\n")
    result = graceful_cli("run", "plain:main", cwd=tmp_path)
    assert result.returncode == 2
    assert "plain:main is not a @graceful.service (got function)" in result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (("--max-surge", "0"), "'0' must be a whole number of at least 1"),
        (("--probation", "-1"), "'-1' must be above 0"),
        (("--workers", "0"), "'0' must be a whole number of at least 1"),
        (("--drain-timeout", "inf"), "'inf' must be a finite number of seconds above 0"),
        (("--listen", "localhost"), "invalid listen spec 'localhost': expected HOST:PORT"),
        (("--watch", "--watch-include", ""), "watch pattern '' must be a non-empty glob"),
    ],
)
def test_run_refuses_a_bad_override_of_the_services_settings_in_one_line(
    tmp_path: Path, override: tuple[str, ...], message: str
) -> None:
    (tmp_path / "svc.py").write_text(
        "import graceful\n\n"
        "@graceful.service(listen=['127.0.0.1:0'])\n"
        "async def main(ctx):\n"
        "    await ctx.serve(lambda stream: stream.aclose())\n"
    )
    result = graceful_cli("run", "svc:main", *override, cwd=tmp_path)
    assert result.returncode == 2, result
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]


def test_pid_file_in_a_missing_directory_is_refused_before_starting(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("async def app(scope, receive, send): ...\n")
    result = graceful_cli(
        "serve", "app:app", "--listen", "127.0.0.1:0", "--pid-file", str(tmp_path / "no" / "x.pid"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "starting generation" not in result.stderr


def test_a_client_commands_error_line_names_the_client_not_the_supervisor(tmp_path: Path) -> None:
    result = graceful_cli("status", "--pid-file", str(tmp_path / "nope.pid"))
    assert result.returncode == 1
    assert re.fullmatch(r"\S+Z graceful\[\d+\] client: ERROR no PID file at .*\n", result.stderr)
