"""Deploys that see and steer a reload: ``graceful reload --wait``, ``status`` and
``stop --wait``, against real supervisors, through their control socket."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import (
    ROOT,
    ServiceProcess,
    ask,
    connect,
    graceful_cli,
    poll_until,
    read_line,
    reload,
    running,
)
from services import pid_service, service_source, wait_for_file, write_service

from graceful import Control, GracefulError
from graceful.control.client import _connect_retrying
from graceful.control.protocol import control_path
from graceful.core.machine import STOPPING, ReloadOutcome

SERVING = r"generation (\d+) serving \(ready in \d+\.\d\ds\)"

ENV = {"LISTEN": "127.0.0.1:0", "DRAIN_TIMEOUT": "5"}


@contextlib.contextmanager
def launched(
    directory: Path, *, env: Mapping[str, str] = ENV, wrapper: Sequence[str] = (), **options: Any
) -> Iterator[tuple[ServiceProcess, Path]]:
    """:func:`pid_service` in ``directory``, started with ``env`` (behind ``wrapper``);
    once generation 1 serves and the PID file is written, (svc, pid_file). The
    script is ``svc.script``."""
    script, pid_file = pid_service(directory, **options)
    with running(script, env=env, wrapper=wrapper) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        yield svc, pid_file


def raised_at(script: Path, text: str) -> str:
    lines = script.read_text().splitlines()
    return f"({script.name}, line {next(i for i, x in enumerate(lines, 1) if text in x)})"


def connect_unless_full(path: str) -> socket.socket | None:
    """A connection to the unix socket at ``path`` that sends nothing, or None if its
    backlog is full (the connection would block)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.setblocking(False)
    try:
        client.connect(path)
    except BlockingIOError:
        client.close()
        return None
    return client


def answer_of(address: str) -> bytes:
    with connect(address) as client:
        return ask(client, "hi")


def test_reload_wait_on_good_code_says_which_generation_serves(tmp_path: Path) -> None:
    with launched(tmp_path, prefix="v1") as (svc, pid_file):
        svc.script.write_text(service_source(prefix="v2", pid_file=pid_file))

        result = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))

        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("generation 2 serving (ready in ")
        assert result.stderr == ""
        # the answer came once the new code serves: no wait needed
        assert answer_of(svc.address()) == b"v2: hi\n"


def test_reload_wait_on_code_that_raises_at_import_names_the_cause_in_one_line(
    tmp_path: Path,
) -> None:
    with launched(tmp_path, prefix="v1") as (svc, pid_file):
        broken = service_source(prefix="v2", pid_file=pid_file).replace(
            "CTX = None", "CTX = None\nraise RuntimeError('boom')"
        )
        svc.script.write_text(broken)

        result = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))

        assert result.returncode == 1
        where = raised_at(svc.script, "raise RuntimeError")
        assert result.stderr == f"generation 2 failed: worker 0: RuntimeError: boom {where}\n"
        assert result.stdout == ""
        assert answer_of(svc.address()) == b"v1: hi\n"


def test_reload_wait_on_code_that_hangs_past_ready_timeout_fails_with_the_cause(
    tmp_path: Path,
) -> None:
    with launched(tmp_path, prefix="v1", env={**ENV, "READY_TIMEOUT": "1"}) as (svc, pid_file):
        never = tmp_path / "never"
        svc.script.write_text(
            service_source(prefix="v2", pid_file=pid_file, before_serve=wait_for_file(never))
        )

        result = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))

        assert result.returncode == 1
        assert result.stderr == (
            "generation 2 failed: worker 0 not ready within ready_timeout=1s\n"
        )
        assert answer_of(svc.address()) == b"v1: hi\n"


def test_reload_wait_gives_up_after_its_timeout_and_the_reload_goes_on(tmp_path: Path) -> None:
    with launched(tmp_path, prefix="v1") as (svc, pid_file):
        go = tmp_path / "go"
        svc.script.write_text(
            service_source(prefix="v2", pid_file=pid_file, before_serve=wait_for_file(go))
        )

        result = graceful_cli("reload", "--wait", "--timeout", "0.5", "--pid-file", str(pid_file))

        assert result.returncode == 1
        assert result.stderr == "timed out after 0.5s (the reload goes on)\n"
        go.touch()
        svc.wait_serving(2)


def test_a_reload_asked_while_another_starts_waits_for_the_one_that_runs_its_code(
    tmp_path: Path,
) -> None:
    with launched(tmp_path, prefix="v1") as (svc, pid_file):
        go2, waiting = tmp_path / "go2", tmp_path / "waiting"
        hold = f"    open({str(waiting)!r}, 'w').close()\n" + wait_for_file(go2)
        svc.script.write_text(service_source(prefix="v2", pid_file=pid_file, before_serve=hold))
        results: dict[str, subprocess.CompletedProcess[str]] = {}

        def wait_for_reload(name: str) -> None:
            results[name] = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))

        first = threading.Thread(target=wait_for_reload, args=("first",))
        first.start()
        # generation 2 has read its code, and waits
        poll_until(waiting.exists, 30, "generation 2 to start")
        svc.script.write_text(service_source(prefix="v3", pid_file=pid_file))
        second = threading.Thread(target=wait_for_reload, args=("second",))
        second.start()
        svc.wait_for("one more reload will follow it")
        go2.touch()
        first.join(60)
        second.join(60)

        assert results["first"].stdout.startswith("generation 2 serving")
        assert results["second"].stdout.startswith("generation 3 serving")
        assert answer_of(svc.address()) == b"v3: hi\n"


def test_status_json_names_the_real_processes_before_and_after_a_reload(tmp_path: Path) -> None:
    with launched(tmp_path, prefix="v1", env={**ENV, "WORKERS": "2"}) as (svc, pid_file):
        before = json.loads(graceful_cli("status", "--json", "--pid-file", str(pid_file)).stdout)

        assert before["pid"] == svc.pid
        [generation] = before["generations"]
        assert (generation["generation"], generation["state"]) == (1, "serving")
        pids = sorted(worker["pid"] for worker in generation["workers"])
        assert pids == sorted(svc.worker_pids())
        assert all(worker["state"] == "ready" for worker in generation["workers"])
        assert before["last_reload"] is None
        assert before["listeners"][0]["address"] == svc.address()

        result = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))
        assert result.returncode == 0, result.stderr
        # generation 1 is parked for generation 2's probation: the same processes
        after = Control(pid_file).status()
        by_number = {generation["generation"]: generation for generation in after["generations"]}
        assert by_number[1]["state"] == "parked"
        assert sorted(worker["pid"] for worker in by_number[1]["workers"]) == pids
        assert all(worker["state"] == "parked" for worker in by_number[1]["workers"])
        generation = by_number[2]
        assert generation["state"] == "serving"
        new_pids = sorted(worker["pid"] for worker in generation["workers"])
        assert sorted(new_pids + pids) == sorted(svc.worker_pids())
        assert not set(new_pids) & set(pids)
        assert all(psutil.Process(pid).ppid() == svc.pid for pid in new_pids)
        assert after["probation"]["generation"] == 2
        assert after["probation"]["parked_generation"] == 1
        assert 0 < after["probation"]["seconds_left"] <= 30
        assert after["rolled_back"] is None
        assert after["last_reload"]["outcome"] == "serving"
        assert after["last_reload"]["generation"] == 2
        assert after["counters"]["reloads_serving"] == 1

        human = graceful_cli("status", "--pid-file", str(pid_file))
        assert human.returncode == 0
        assert f"supervisor {svc.pid}" in human.stdout
        assert all(str(pid) in human.stdout for pid in new_pids)
        assert "probation: generation 2" in human.stdout


def test_stop_wait_returns_once_the_supervisor_has_exited_with_its_status(
    tmp_path: Path,
) -> None:
    with launched(tmp_path) as (svc, pid_file):
        result = graceful_cli("stop", "--wait", "--pid-file", str(pid_file))

        assert result.returncode == 0, result.stderr
        assert result.stdout == "stopped (exit status 0)\n"
        assert not psutil.pid_exists(svc.pid) or psutil.Process(svc.pid).status() == "zombie"
        assert not pid_file.exists()
        assert not os.path.exists(control_path(pid_file))
        assert svc.wait_exit() == 0


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="graceful-control-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: ``graceful ARGS`` as user nobody: the CLI is imported first, as root, because
#: the interpreter's own files may be out of nobody's reach (a pyenv under /root)
AS_NOBODY = (
    "import os, sys\n"
    "from graceful.cli import main\n"
    "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", AS_NOBODY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)},
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_another_user_is_refused_and_changes_nothing(world_readable_dir: Path) -> None:
    with launched(world_readable_dir, prefix="v1") as (svc, pid_file):
        socket_path = control_path(pid_file)
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600

        # the socket's mode keeps the other user out, and the client says so as the
        # supervisor would
        result = as_nobody("reload", "--wait", "--pid-file", str(pid_file))
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1
        assert (
            f"refused: uid 65534 may not control this supervisor (only uid {os.geteuid()} "
            f"and root may; {socket_path} is mode 0600)"
        ) in result.stderr

        # and if the mode were wider, the supervisor's own check does
        os.chmod(socket_path, 0o666)
        for command in (["reload", "--wait"], ["stop", "--wait"], ["status"], ["scale", "5"]):
            result = as_nobody(*command, "--pid-file", str(pid_file))
            assert result.returncode == 1, command
            assert result.stderr.count("\n") == 1, result.stderr
            assert "refused: uid 65534 may not control this supervisor" in result.stderr

        svc.wait_for("control socket: refused a request from uid 65534")
        status = json.loads(graceful_cli("status", "--json", "--pid-file", str(pid_file)).stdout)
        assert [g["generation"] for g in status["generations"]] == [1]
        assert status["state"] == "running"
        assert status["workers"] == 1
        assert "scaling" not in svc.output
        assert "SIGHUP" not in svc.output


def test_client_commands_on_bad_input_give_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pid"
    garbage = tmp_path / "garbage.pid"
    garbage.write_bytes(b"not a pid\n")
    stale = tmp_path / "stale.pid"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale.write_text(f"{dead.pid}\n")
    foreign = tmp_path / "foreign.pid"
    foreign.write_text(f"{os.getpid()}\n")  # a live process that is no supervisor

    for pid_file in (missing, garbage, stale, foreign):
        for command in (
            ["reload", "--wait"],
            ["stop", "--wait"],
            ["status"],
            ["status", "--json"],
            ["scale", "2"],
        ):
            result = graceful_cli(*command, "--pid-file", str(pid_file))
            assert result.returncode == 1, (command, pid_file, result)
            assert result.stderr.count("\n") == 1, result.stderr
            assert str(pid_file) in result.stderr
            assert "Traceback" not in result.stderr

    usage = graceful_cli("reload", "--timeout", "3", "--pid-file", str(missing))
    assert usage.returncode == 2
    assert "--timeout needs --wait" in usage.stderr


def test_a_control_socket_path_held_by_another_file_is_one_line_and_left_alone(
    tmp_path: Path,
) -> None:
    script, pid_file = pid_service(tmp_path)
    squatter = Path(control_path(pid_file))
    squatter.write_text("mine\n")
    with running(script, env=ENV) as svc:
        assert svc.wait_exit() == 2
        assert f"control socket {str(squatter)!r} exists and is not a socket" in svc.output
    assert squatter.read_text() == "mine\n"
    assert not pid_file.exists()


def test_a_reload_asked_for_during_a_stop_fails_at_once(tmp_path: Path) -> None:
    with launched(tmp_path, prefix="v1") as (svc, pid_file):
        with connect(svc.address()) as client:
            assert ask(client, "sleep 3") == b"v1: sleeping\n"  # keeps the drain busy
            svc.send(signal.SIGTERM)
            svc.wait_for("stopping: draining")
            result = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))
            status = json.loads(
                graceful_cli("status", "--json", "--pid-file", str(pid_file)).stdout
            )
            human = graceful_cli("status", "--pid-file", str(pid_file)).stdout
        assert result.returncode == 1
        assert result.stderr == "reload failed: the service is stopping\n"
        # the listeners were released at the stop, and status says so
        assert status["state"] == "stopping"
        assert [listener["open"] for listener in status["listeners"]] == [False]
        assert f"released {svc.address()}" in human
        assert "listening on" not in human
        assert svc.wait_exit() == 0


def test_idle_control_clients_cannot_use_up_the_supervisors_descriptors(tmp_path: Path) -> None:
    with launched(tmp_path) as (svc, pid_file):
        svc.warm_standby()  # its channels are the supervisor's descriptors too
        before = psutil.Process(svc.pid).num_fds()
        idle = []
        try:
            # connect, and send nothing (90: the 32 being read and 58 in the backlog of
            # 64; a unix socket's connect() would block beyond that)
            for _ in range(90):
                client = socket.socket(socket.AF_UNIX)
                client.connect(control_path(pid_file))
                idle.append(client)
            poll_until(
                lambda: psutil.Process(svc.pid).num_fds() >= before + 32,
                10,
                "the supervisor to take its share of the idle clients",
            )
            assert psutil.Process(svc.pid).num_fds() <= before + 32 + 2
            # and a real request is answered at once, not after the idle ones' 5 s
            status = Control(pid_file).status(timeout=3)
            assert status["generations"][0]["generation"] == 1
            reload(svc, 2)
        finally:
            for client in idle:
                client.close()
        status = json.loads(graceful_cli("status", "--json", "--pid-file", str(pid_file)).stdout)
        # (generation 1 may still be draining)
        serving = [g["generation"] for g in status["generations"] if g["state"] == "serving"]
        assert serving == [2]


@pytest.mark.parametrize(
    ("request_line", "error"),
    [
        (b"[" * 3000 + b"\n", "request is not JSON"),  # nested past the parser's recursion
        (b"\xff\xfe\n", "request is not JSON"),
        (b'{"graceful": 2, "command": "status"}\n', "unsupported protocol version 2"),
        (b'{"graceful": 1, "command": ["status"]}\n', "unknown command ['status']"),
        (b'{"graceful": 1, "command": "reload", "wait": "yes"}\n', "'wait' must be true or false"),
        (
            b'{"graceful": 1, "command": "reload", "wait": true, "probation": 1}\n',
            "'probation' must be true or false",
        ),
        (b"x" * 5000, "request longer than 4096 bytes"),
    ],
)
def test_a_malformed_request_gets_one_error_line_and_changes_nothing(
    tmp_path: Path, request_line: bytes, error: str
) -> None:
    with launched(tmp_path) as (_, pid_file):
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(control_path(pid_file))
            client.sendall(request_line)
            client.shutdown(socket.SHUT_WR)
            answer = json.loads(client.makefile("rb").readline())
        assert answer["ok"] is False
        assert answer["error"].startswith(error), answer
        status = json.loads(graceful_cli("status", "--json", "--pid-file", str(pid_file)).stdout)
        assert [g["generation"] for g in status["generations"]] == [1]


def test_two_stop_waits_at_once_are_one_clean_stop(tmp_path: Path) -> None:
    # Found by an attack: the second request escalated to "stop now", which killed
    # the draining worker and made the exit status 1.
    with launched(tmp_path) as (svc, pid_file):
        results: list[subprocess.CompletedProcess[str]] = []

        def stop() -> None:
            results.append(graceful_cli("stop", "--wait", "--pid-file", str(pid_file)))

        with connect(svc.address()) as client:
            assert ask(client, "sleep 2") == b"v1: sleeping\n"  # the drain waits for it
            first = threading.Thread(target=stop)
            first.start()
            svc.wait_for("stopping: draining")
            second = threading.Thread(target=stop)
            second.start()
            assert read_line(client) == b"v1: sleep 2\n"  # answered, not cut off
        first.join(60)
        second.join(60)
        assert [r.returncode for r in results] == [0, 0], results
        assert all(r.stdout == "stopped (exit status 0)\n" for r in results)
        assert svc.wait_exit() == 0
        assert "stopping now" not in svc.output


@pytest.mark.parametrize("first", ["SIGTERM", "stop"])
def test_stop_wait_after_a_stop_has_begun_waits_and_never_escalates(
    tmp_path: Path, first: str
) -> None:
    """A stop begun by a signal (or by ``graceful stop``, which sends one), then
    ``graceful stop --wait``: the wait is only a wait."""
    with launched(tmp_path) as (svc, pid_file):
        with connect(svc.address()) as client:
            assert ask(client, "sleep 2") == b"v1: sleeping\n"  # the drain waits for it
            if first == "SIGTERM":
                svc.send(signal.SIGTERM)
            else:
                assert graceful_cli("stop", "--pid-file", str(pid_file)).returncode == 0
            svc.wait_for("stopping: draining")
            result = graceful_cli("stop", "--wait", "--pid-file", str(pid_file))
            assert read_line(client) == b"v1: sleep 2\n"  # answered, not cut off
        assert result.returncode == 0, result
        assert result.stdout == "stopped (exit status 0)\n"
        assert svc.wait_exit() == 0
        assert "stopping now" not in svc.output


def test_stop_wait_during_stop_delay_does_not_cut_it_short(tmp_path: Path) -> None:
    pid_file = tmp_path / "svc.pid"
    script = write_service(tmp_path / "svc.py")
    with running(
        script,
        command=[
            sys.executable,
            "-m",
            "graceful",
            "run",
            "svc:main",
            "--pid-file",
            str(pid_file),
            "--stop-delay",
            "3",
        ],
        cwd=tmp_path,
        env=ENV,
    ) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        svc.send(signal.SIGTERM)
        asked = time.monotonic()
        svc.wait_for(r"stopping in 3s \(stop_delay\)")
        result = graceful_cli("stop", "--wait", "--pid-file", str(pid_file))
        stopped = time.monotonic()
        assert result.returncode == 0, result
        assert stopped - asked >= 3.0, "stop --wait cut the stop delay short"
        assert svc.wait_exit() == 0
        assert "stopping now" not in svc.output


def test_a_pid_file_path_too_long_for_a_unix_socket_still_works(tmp_path: Path) -> None:
    # Found by an attack: the control socket beside a long PID file path could not be
    # bound (sun_path holds 107 bytes), and the service refused to start.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    script, pid_file = pid_service(deep, prefix="v1")
    assert len(control_path(pid_file)) > 107
    with running(script, env=ENV) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        result = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))
        assert result.returncode == 0, result.stderr
        result = graceful_cli("stop", "--wait", "--pid-file", str(pid_file))
        assert result.returncode == 0, result.stderr
    assert not os.path.exists(control_path(pid_file))


def test_another_process_socket_at_the_control_path_is_never_removed(tmp_path: Path) -> None:
    script, pid_file = pid_service(tmp_path)
    path = control_path(pid_file)
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(path)
        other.listen()
        # a live socket there at start: refused, and left alone
        with running(script, env=ENV) as svc:
            assert svc.wait_exit() == 2
            assert f"control socket {path!r} is in use by another process" in svc.output
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    os.unlink(path)
    # a socket put there while the supervisor runs: not removed at its stop
    with running(script, env=ENV) as svc:
        svc.wait_serving(1)
        os.unlink(path)
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(path)
            other.listen()
            svc.send(signal.SIGTERM)
            assert svc.wait_exit() == 0
            assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_the_supervisors_own_threads_never_see_main_change_during_a_spawn(
    tmp_path: Path,
) -> None:
    # Found by an attack: __main__.__file__ was hidden while a worker started.
    script, pid_file = pid_service(tmp_path)
    errors = tmp_path / "errors"
    watcher = (
        "    import threading\n"
        "    def look():\n"
        "        while True:\n"
        "            try:\n"
        "                __file__, sys.modules['__main__'].__spec__\n"
        "            except Exception as exc:\n"
        f"                open({str(errors)!r}, 'a').write(repr(exc))\n"
        "    threading.Thread(target=look, daemon=True).start()\n"
    )
    source = script.read_text().replace(
        'if __name__ == "__main__":\n', 'if __name__ == "__main__":\n    import sys\n' + watcher
    )
    script.write_text(source)
    with running(script, env=ENV) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        for generation in (2, 3, 4):
            result = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))
            assert result.stdout.startswith(f"generation {generation} serving"), result
    assert not errors.exists(), errors.read_text()


def test_a_keyboard_interrupt_raised_at_import_is_named(tmp_path: Path) -> None:
    with launched(tmp_path) as (svc, pid_file):
        svc.script.write_text(
            service_source(pid_file=pid_file).replace(
                "CTX = None", "CTX = None\nraise KeyboardInterrupt"
            )
        )
        result = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))
        where = raised_at(svc.script, "raise KeyboardInterrupt")
        assert result.stderr == f"generation 2 failed: worker 0: KeyboardInterrupt {where}\n"


def test_more_waiting_clients_than_descriptors_leave_the_supervisor_serving(
    tmp_path: Path,
) -> None:
    """At a descriptor limit of 64, 100 clients each wait for a reload's answer: the
    supervisor holds a bounded number of them open, leaves the rest in the backlog,
    and never dies of it; each client gets its answer in the end."""
    wrapper = ("prlimit", "--nofile=64:64", "--")
    env = {**ENV, "STANDBY": "0"}
    with launched(tmp_path, prefix="v1", env=env, wrapper=wrapper) as (svc, pid_file):
        path = str(control_path(pid_file))
        clients: list[socket.socket] = []
        try:
            for _ in range(100):
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.settimeout(30)
                # as graceful.Control does: a full backlog is retried
                _connect_retrying(client, path, time.monotonic() + 30)
                client.sendall(b'{"graceful": 1, "command": "reload", "wait": true}\n')
                clients.append(client)
            # the supervisor is alive, and still answers a client that waits its turn
            status = Control(pid_file).status(timeout=30)
            assert status["state"] == "running"
            assert answer_of(svc.address()) == b"v1: hi\n"
            answered = 0
            for client in clients:
                if b'"ok": true' in client.recv(4096):
                    answered += 1
            assert answered == len(clients)
        finally:
            for client in clients:
                client.close()
        assert svc.proc.poll() is None, svc.output
        assert "Traceback" not in svc.output
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0, svc.output


def test_a_client_waits_for_a_busy_supervisors_backlog_within_its_timeout(
    tmp_path: Path,
) -> None:
    """A full backlog (the supervisor busy) makes a client retry, not fail at once."""
    with launched(tmp_path, prefix="v1") as (svc, pid_file):
        supervisor = psutil.Process(svc.pid)
        fillers: list[socket.socket] = []
        results: list[object] = []
        try:
            supervisor.suspend()  # busy: it accepts nothing
            path = control_path(pid_file)
            while (filler := connect_unless_full(path)) is not None:  # fill the backlog
                fillers.append(filler)

            def ask_status() -> None:
                try:
                    results.append(Control(pid_file).status(timeout=10)["state"])
                except Exception as exc:
                    results.append(exc)

            asking = threading.Thread(target=ask_status)
            asking.start()
            time.sleep(1.0)  # the client is retrying meanwhile (nothing to poll for)
            assert results == []
            for filler in fillers:
                filler.close()
            supervisor.resume()
            asking.join(15)
        finally:
            supervisor.resume()
            for filler in fillers:
                filler.close()
        assert results == ["running"]
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["reload", "--wait"]])
def test_a_reader_that_closed_its_end_is_a_quiet_exit(tmp_path: Path, command: list[str]) -> None:
    """``graceful status | head -1``: the reader is gone before the command prints."""
    with launched(tmp_path) as (svc, pid_file):
        read_end, write_end = os.pipe()
        os.close(read_end)  # gone before anything is written
        try:
            result = subprocess.run(
                [sys.executable, "-m", "graceful", *command, "--pid-file", str(pid_file)],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
                check=False,
            )
        finally:
            os.close(write_end)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_a_reload_outcome_that_never_started_reads_as_such() -> None:
    assert str(ReloadOutcome(0, "failed", STOPPING, 0.0)) == (
        "reload failed: the service is stopping"
    )


def test_a_stderr_reader_that_falls_behind_never_blocks_the_supervisor(tmp_path: Path) -> None:
    """The supervisor logs into a 4 KiB pipe nobody reads: every reload still ends,
    status answers, and the stop is not held by lines that cannot be written (they
    get a few seconds, then the supervisor exits)."""
    pid_file = tmp_path / "svc.pid"
    script = write_service(tmp_path / "svc.py", prefix="v1", pid_file=pid_file)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    env = dict(os.environ, PYTHONPATH=str(ROOT), **ENV, STANDBY="0", PROBATION="0")
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.DEVNULL,
        stderr=write_end,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    os.close(write_end)
    try:
        poll_until(pid_file.exists, 30, "the PID file")
        for _ in range(40):  # a few hundred lines: far more than the pipe holds
            outcome = Control(pid_file).reload(timeout=30)
            assert outcome.succeeded, outcome
        assert Control(pid_file).status(timeout=10)["state"] == "running"
        Control(pid_file).stop(timeout=30)  # (the stop writes what waited)
        seen = b""
        while chunk := os.read(read_end, 65536):
            seen += chunk
        assert "generation 1 is serving" in seen.decode()
        assert process.wait(30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        os.close(read_end)


@pytest.mark.parametrize("then", ["graceful stop", "SIGTERM"])
def test_a_stop_asked_for_twice_drains_unless_a_second_signal_comes(
    tmp_path: Path, then: str
) -> None:
    """``graceful stop`` (through the control socket), then ``graceful stop`` again or
    a first SIGTERM (``systemctl stop``, ``docker stop``): the stop is joined, the
    request in flight is answered; only a second signal would escalate."""
    with launched(tmp_path) as (svc, pid_file):
        with connect(svc.address()) as client:
            assert ask(client, "sleep 2") == b"v1: sleeping\n"
            assert graceful_cli("stop", "--pid-file", str(pid_file)).returncode == 0
            svc.wait_for("stopping: draining")
            if then == "SIGTERM":
                svc.send(signal.SIGTERM)
                svc.wait_for("stop signal: the stop already asked for goes on")
            else:
                assert graceful_cli("stop", "--pid-file", str(pid_file)).returncode == 0
            assert read_line(client) == b"v1: sleep 2\n"
        assert svc.wait_exit() == 0
        assert "stopping now" not in svc.output


def test_stop_wait_in_the_last_moments_of_a_stop_gets_the_exit_status(tmp_path: Path) -> None:
    """SIGTERM, then stop --wait at once, many times: the request lands as the
    supervisor ends (in the control socket's backlog, say), and is answered."""
    for attempt in range(8):
        directory = tmp_path / str(attempt)
        directory.mkdir()
        with launched(directory, env={**ENV, "STANDBY": "0"}) as (svc, pid_file):
            control = Control(pid_file)
            time.sleep(attempt * 0.015)  # the race is the point: land anywhere in it
            svc.send(signal.SIGTERM)
            try:
                outcome: object = control.stop(timeout=30)
            except GracefulError as exc:
                outcome = str(exc)
            # the exit status, or (the PID file gone already: the stop had ended) that
            assert outcome == 0 or "no PID file" in str(outcome), outcome
            assert svc.wait_exit() == 0


def test_wait_clients_that_left_free_their_connections_at_once(tmp_path: Path) -> None:
    """128 ``reload --wait`` clients leave while a slow reload runs: their connections
    are freed then, not when the reload ends, so status answers meanwhile."""
    with launched(tmp_path, prefix="v1", env={**ENV, "READY_TIMEOUT": "60"}) as (svc, pid_file):
        started = tmp_path / "importing"
        svc.script.write_text(
            f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(8)\n"
            + service_source(prefix="v2", pid_file=pid_file)
        )
        path = str(control_path(pid_file))
        clients = []
        for _ in range(128):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            _connect_retrying(client, path, time.monotonic() + 30)
            client.sendall(b'{"graceful": 1, "command": "reload", "wait": true}\n')
            clients.append(client)
        poll_until(started.exists, 20, "the slow reload importing")
        for client in clients:
            client.close()
        assert Control(pid_file).status(timeout=4)["state"] == "running"
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_under_a_low_descriptor_limit_idle_clients_never_keep_status_out(tmp_path: Path) -> None:
    """At a limit of 128 descriptors (16 control connections), 100 clients that connect
    and send nothing: a status request still gets in and is answered."""
    wrapper = ("prlimit", "--nofile=128:128", "--")
    with launched(tmp_path, env={**ENV, "STANDBY": "0"}, wrapper=wrapper) as (svc, pid_file):
        idle = []
        try:
            for _ in range(100):
                if (client := connect_unless_full(control_path(pid_file))) is not None:
                    idle.append(client)
            assert Control(pid_file).status(timeout=10)["state"] == "running"
        finally:
            for client in idle:
                client.close()
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_client_output_to_a_closed_or_full_stdout_and_a_silent_supervisor_are_one_line(
    tmp_path: Path,
) -> None:
    script, pid_file = pid_service(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "graceful", "status", "--pid-file", str(pid_file)]
    with running(script, env=ENV) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        closed = subprocess.run(
            ["sh", "-c", '"$@" >&-', "sh", *command],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert (closed.returncode, closed.stderr) == (0, ""), closed
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                command, stdout=full, stderr=subprocess.PIPE, text=True, env=env, check=False
            )
        assert result.stderr.count("\n") == 1, result.stderr
        assert "cannot write the output: No space left on device" in result.stderr
        # a supervisor that does not answer (stopped): one line after the client's timeout
        os.kill(svc.pid, signal.SIGSTOP)
        try:
            silent = subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=60, check=False
            )
        finally:
            os.kill(svc.pid, signal.SIGCONT)
        assert silent.returncode == 1
        assert silent.stderr.count("\n") == 1, silent.stderr
        assert "the supervisor did not answer in time" in silent.stderr
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
