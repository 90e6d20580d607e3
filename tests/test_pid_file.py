"""PID files: the CLI signals only a graceful supervisor, and a supervisor never
runs without the PID file it was asked to write."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    AS_ANOTHER_USER,
    cannot_act_as_another_user,
    graceful_cli,
    is_alive,
    poll_until,
    running,
    sticky_directory,
)
from services import wait_for_file, write_service


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, result
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process of this user that is not a graceful supervisor."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("command", ["stop", "reload"])
def test_a_pid_file_naming_another_process_is_refused(
    tmp_path: Path, bystander: subprocess.Popen[bytes], command: str
) -> None:
    pid_file = tmp_path / "app.pid"
    pid_file.write_text(f"{bystander.pid}\n")
    line = one_error_line(graceful_cli(command, "--pid-file", str(pid_file)))
    assert f"process {bystander.pid} is not a graceful supervisor" in line
    assert is_alive(bystander.pid)
    assert bystander.poll() is None


def test_the_pid_file_of_a_running_supervisor_is_obeyed(tmp_path: Path) -> None:
    pid_file = tmp_path / "svc.pid"
    script = write_service(tmp_path / "svc.py", pid_file=pid_file)
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        mark = svc.mark()
        assert graceful_cli("reload", "--pid-file", str(pid_file)).returncode == 0
        svc.wait_serving(2, after=mark)
        assert graceful_cli("stop", "--pid-file", str(pid_file)).returncode == 0
        assert svc.wait_exit() == 0
    assert not pid_file.exists()
    # once it has exited, the same file is stale
    pid_file.write_text(f"{svc.pid}\n")
    line = one_error_line(graceful_cli("stop", "--pid-file", str(pid_file)))
    assert "stale PID file" in line


def test_the_pid_file_of_a_supervisor_in_another_pid_namespace_is_obeyed(
    tmp_path: Path,
) -> None:
    """As PID 1 of a container, the supervisor writes "1"; from the host, the lock's
    holder is that same process under its host PID, and the commands reach it."""
    probe = subprocess.run(
        ["unshare", "--fork", "--pid", "--mount-proc", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"no new PID namespace here: {probe.stderr.decode().strip()}")
    pid_file = tmp_path / "svc.pid"
    script = write_service(tmp_path / "svc.py", pid_file=pid_file)
    wrapper = ("unshare", "--fork", "--pid", "--mount-proc")
    with running(script, env={"LISTEN": "127.0.0.1:0"}, wrapper=wrapper) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        assert pid_file.read_text() == "1\n"
        mark = svc.mark()
        result = graceful_cli("reload", "--pid-file", str(pid_file))
        assert result.returncode == 0, result.stderr
        svc.wait_serving(2, after=mark)
        status = graceful_cli("status", "--json", "--pid-file", str(pid_file))
        assert status.returncode == 0, status.stderr
        assert graceful_cli("stop", "--pid-file", str(pid_file)).returncode == 0
        assert svc.wait_exit() == 0


def test_a_supervisor_killed_without_cleanup_leaves_a_pid_file_the_cli_calls_stale(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "svc.pid"
    script = write_service(tmp_path / "svc.py", pid_file=pid_file)
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        svc.send(signal.SIGKILL)
        svc.wait_exit()
    assert pid_file.exists()
    line = one_error_line(graceful_cli("reload", "--pid-file", str(pid_file)))
    assert "stale PID file" in line


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"99999999999999999999999999\n", "does not hold a PID"),
        (b"\xff\xfe\x00garbage\n", "does not hold a PID"),
        (b"", "does not hold a PID"),
        (b"-5\n", "does not hold a PID"),
    ],
)
def test_a_pid_file_holding_garbage_is_one_line(tmp_path: Path, content: bytes, why: str) -> None:
    pid_file = tmp_path / "app.pid"
    pid_file.write_bytes(content)
    assert why in one_error_line(graceful_cli("stop", "--pid-file", str(pid_file)))


def test_a_pid_file_that_is_a_device_or_a_fifo_is_refused_without_reading_it(
    tmp_path: Path,
) -> None:
    assert "not a regular file" in one_error_line(graceful_cli("stop", "--pid-file", "/dev/zero"))
    fifo = tmp_path / "app.pid"
    os.mkfifo(fifo)
    assert "not a regular file" in one_error_line(graceful_cli("reload", "--pid-file", str(fifo)))


def test_a_pid_file_planted_by_another_user_stops_the_supervisor_from_starting(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    """Another local user creates the PID file first, naming a process of ours. The
    supervisor (without root's power over other users' files, as any normal user)
    cannot replace it, so it refuses to start instead of running without it."""
    why_not = cannot_act_as_another_user()
    if why_not:
        pytest.skip(why_not)
    shared = sticky_directory(tmp_path)
    pid_file = shared / "app.pid"
    pid_file.write_text(f"{bystander.pid}\n")
    os.chown(pid_file, 65534, 65534)
    pid_file.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    script = write_service(tmp_path / "svc.py", pid_file=pid_file)
    with running(script, env={"LISTEN": "127.0.0.1:0"}, wrapper=AS_ANOTHER_USER) as svc:
        assert svc.wait_exit() == 2, svc.output
        errors = [line for line in svc.lines if "ERROR" in line]
        assert len(errors) == 1, svc.output
        assert str(pid_file) in errors[0]
        assert "starting generation" not in svc.output
    assert pid_file.read_text() == f"{bystander.pid}\n"
    # and the operator's stop does not kill the bystander either
    line = one_error_line(graceful_cli("stop", "--pid-file", str(pid_file)))
    assert "is not a graceful supervisor" in line
    assert bystander.poll() is None


OTHER_DAEMON = """\
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)  # the whole file, as daemons do
os.write(fd, f"{os.getpid()}\\n".encode())
print("ready", flush=True)
time.sleep(60)
"""


def test_the_locked_pid_file_of_another_program_is_refused(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    daemon = subprocess.Popen(
        [sys.executable, "-c", OTHER_DAEMON, str(pid_file)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert daemon.stdout is not None
        assert daemon.stdout.readline() == "ready\n"
        for command in ("reload", "stop"):
            line = one_error_line(graceful_cli(command, "--pid-file", str(pid_file)))
            assert f"process {daemon.pid} is not a graceful supervisor" in line
        assert daemon.poll() is None
        # and a supervisor will not take that file over either
        script = write_service(tmp_path / "svc.py", pid_file=pid_file)
        with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
            assert svc.wait_exit() == 2, svc.output
            assert f"names process {daemon.pid}, which is running" in svc.output
        assert pid_file.read_text() == f"{daemon.pid}\n"
    finally:
        daemon.kill()
        daemon.wait()


def test_a_second_supervisor_on_the_same_pid_file_is_refused_while_the_first_starts(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "svc.pid"
    gate = tmp_path / "start-now"
    first_script = write_service(
        tmp_path / "first.py", pid_file=pid_file, before_serve=wait_for_file(gate)
    )
    second_script = write_service(tmp_path / "second.py", pid_file=pid_file)
    with running(first_script, env={"LISTEN": "127.0.0.1:0"}) as first:
        first.wait_for("starting generation 1")
        with running(second_script, env={"LISTEN": "127.0.0.1:0"}) as second:
            assert second.wait_exit() == 2, second.output
            assert f"another supervisor (PID {first.pid}) is starting" in second.output
        gate.touch()
        first.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        with running(second_script, env={"LISTEN": "127.0.0.1:0"}) as second:
            assert second.wait_exit() == 2, second.output
            assert f"belongs to a running supervisor (PID {first.pid})" in second.output
        assert pid_file.read_text() == f"{first.pid}\n"
        assert graceful_cli("stop", "--pid-file", str(pid_file)).returncode == 0
        assert first.wait_exit() == 0
    assert list(tmp_path.glob(".*")) == []


def test_a_supervisor_killed_while_starting_leaves_nothing_that_blocks_the_next(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "svc.pid"
    gate = tmp_path / "start-now"
    script = write_service(tmp_path / "svc.py", pid_file=pid_file, before_serve=wait_for_file(gate))
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_for("starting generation 1")
        svc.send(signal.SIGKILL)
        svc.wait_exit()
    gate.touch()
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        assert graceful_cli("stop", "--pid-file", str(pid_file)).returncode == 0
        assert svc.wait_exit() == 0
    assert list(tmp_path.glob(".*")) == []


def test_a_stale_staged_file_of_another_user_is_one_line(tmp_path: Path) -> None:
    why_not = cannot_act_as_another_user()
    if why_not:
        pytest.skip(why_not)
    shared = sticky_directory(tmp_path)
    pid_file = shared / "app.pid"
    planted = shared / ".app.pid.graceful-staged"
    planted.write_text("")
    os.chown(planted, 65534, 65534)
    script = write_service(tmp_path / "svc.py", pid_file=pid_file)
    with running(script, env={"LISTEN": "127.0.0.1:0"}, wrapper=AS_ANOTHER_USER) as svc:
        assert svc.wait_exit() == 2, svc.output
        errors = [line for line in svc.lines if "ERROR" in line]
        assert len(errors) == 1, svc.output
        assert "cannot remove the stale" in errors[0]
        assert "Traceback" not in svc.output
    assert planted.exists()


def test_a_clean_stop_removes_its_pid_file_and_socket_from_a_renamed_directory(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pid_file = run_dir / "svc.pid"
    script = write_service(tmp_path / "svc.py", pid_file=pid_file)
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        moved = tmp_path / "run.moved"
        run_dir.rename(moved)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
    assert sorted(path.name for path in moved.iterdir()) == []
