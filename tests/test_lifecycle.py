"""Start, stop, crash and hygiene of real supervisors."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest
from harness import ask, connect, poll_until, read_line, running, zombie_children
from services import write_service

from graceful.child.standby import STANDBY_NAME
from graceful.testing import process_name


def start_slow_request(sock: socket.socket, seconds: float) -> None:
    """Send ``sleep seconds`` and return once the handler has acknowledged it."""
    sock.sendall(f"sleep {seconds}\n".encode())
    assert read_line(sock).endswith(b": sleeping\n")


@pytest.mark.parametrize("kind", ["asyncio", "sync"])
def test_sigterm_drains_in_flight_request_and_exits_zero(tmp_path: Path, kind: str) -> None:
    script = write_service(tmp_path / "svc.py", kind)
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        address = svc.address()
        with connect(address) as client:
            assert ask(client, "hello") == b"v1: hello\n"
            start_slow_request(client, 1)
            svc.send(signal.SIGTERM)
            svc.wait_for("stopping: draining")
            client.settimeout(10)
            assert client.recv(100) == b"v1: sleep 1\n"
        assert svc.wait_exit() == 0
        with pytest.raises(ConnectionRefusedError):
            connect(address).close()
        poll_until(lambda: svc.processes() == [], 10, "every process of the group to exit")


def test_ctrl_c_in_the_terminal_does_not_interrupt_requests(tmp_path: Path) -> None:
    """SIGINT to the whole process group (what a terminal's Ctrl-C does)."""
    script = write_service(tmp_path / "svc.py", "asyncio")
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        with connect(svc.address()) as client:
            assert ask(client, "hi") == b"v1: hi\n"
            start_slow_request(client, 1)
            os.killpg(svc.pid, signal.SIGINT)
            client.settimeout(10)
            assert client.recv(100) == b"v1: sleep 1\n"
        assert svc.wait_exit() == 0
        assert "Traceback" not in svc.output
        assert "KeyboardInterrupt" not in svc.output


def test_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    script = write_service(tmp_path / "svc.py", "asyncio")
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        with connect(svc.address()) as client:
            start_slow_request(client, 60)
            svc.send(signal.SIGTERM)
            svc.wait_for("stopping: draining")
            svc.send(signal.SIGTERM)
            code = svc.wait_exit(timeout=30)
            # killed, not drained: the 60 s request never got its answer
            client.settimeout(30)
            assert client.recv(100) == b""
        assert code == 1
        svc.wait_for("stopping now: killing 1 workers")
        poll_until(lambda: svc.processes() == [], 10, "every process of the group to exit")


def test_drain_deadline_ends_long_requests_and_the_worker_exits_by_itself(tmp_path: Path) -> None:
    script = write_service(tmp_path / "svc.py", "asyncio")
    env = {"LISTEN": "127.0.0.1:0", "DRAIN_TIMEOUT": "1"}
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        with connect(svc.address()) as client:
            start_slow_request(client, 60)
            started = time.monotonic()
            svc.send(signal.SIGTERM)
            client.settimeout(30)
            # closed without an answer, by the 1 s drain deadline (not before it), well
            # before the request's own 60 s
            assert client.recv(100) == b""
            assert time.monotonic() - started > 0.8
        assert svc.wait_exit() == 0
        assert "killing it" not in svc.output


def test_a_worker_that_ignores_shutdown_is_killed_after_drain_timeout(tmp_path: Path) -> None:
    stubborn = (
        "    await ctx.ready()\n"
        "    with anyio.CancelScope(shield=True):\n"
        "        await anyio.sleep(3600)"
    )
    script = write_service(tmp_path / "svc.py", "asyncio", before_serve=stubborn)
    env = {"LISTEN": "127.0.0.1:0", "DRAIN_TIMEOUT": "0.5"}
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit(timeout=15) == 1
        svc.wait_for(r"did not finish draining within drain_timeout=0.5s; killing it")
        poll_until(lambda: svc.processes() == [], 10, "every process of the group to exit")


def test_a_crashed_worker_is_replaced_with_backoff(tmp_path: Path) -> None:
    script = write_service(tmp_path / "svc.py", "asyncio")
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        address = svc.address()
        for delay in ("0.1", "0.2"):
            [pid] = svc.worker_pids()
            mark = svc.mark()
            os.kill(pid, signal.SIGKILL)
            svc.wait_for(
                rf"generation 1 worker 0 was killed by signal 9; restarting it in {delay}s",
                after=mark,
            )
            svc.wait_for("generation 1 worker 0 is back in service", after=mark)
            with connect(address) as client:
                assert ask(client, "again") == b"v1: again\n"
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_first_start_failure_exits_nonzero_with_the_cause(tmp_path: Path) -> None:
    script = write_service(
        tmp_path / "svc.py",
        "asyncio",
        before_serve="    raise RuntimeError('cannot reach the database')",
    )
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        assert svc.wait_exit() == 1
        svc.wait_for(
            r"generation 1 failed to start: worker 0: RuntimeError: cannot reach the database"
        )
        poll_until(lambda: svc.processes() == [], 10, "every process of the group to exit")


def test_first_start_that_never_gets_ready_exits_nonzero(tmp_path: Path) -> None:
    script = write_service(
        tmp_path / "svc.py", "asyncio", before_serve="    await anyio.sleep(3600)"
    )
    with running(script, env={"LISTEN": "127.0.0.1:0", "READY_TIMEOUT": "1"}) as svc:
        assert svc.wait_exit() == 1
        svc.wait_for(r"generation 1 failed to start: worker 0 not ready within ready_timeout=1s")


@pytest.mark.parametrize("kind", ["asyncio", "trio", "sync"])
def test_workers_drain_and_exit_when_the_supervisor_is_killed(tmp_path: Path, kind: str) -> None:
    script = write_service(tmp_path / "svc.py", kind)
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        with connect(svc.address()) as client:
            start_slow_request(client, 0.5)
            svc.send(signal.SIGKILL)
            client.settimeout(10)
            assert client.recv(100) == b"v1: sleep 0.5\n"
        poll_until(lambda: svc.processes() == [], 5, "orphaned workers to exit")


def test_fifty_reloads_leave_no_fd_child_or_zombie_behind(tmp_path: Path) -> None:
    script = write_service(tmp_path / "svc.py", "asyncio")
    with running(script, env={"LISTEN": "127.0.0.1:0", "WORKERS": "2"}) as svc:
        svc.wait_serving(1)

        # Settled: two workers, the previous generation's two parked for the
        # probation, multiprocess's resource tracker, the orphan guard and a warm
        # standby, nothing left to reap. The supervisor closes a worker's fds in the
        # same step as it reaps it, and each promotion lets the generation parked
        # before go.
        def settled() -> bool:
            standbys = svc.standby_pids()
            return (
                len(svc.children()) == 7
                and not zombie_children(svc.pid)
                and len(standbys) == 1
                and process_name(standbys[0]) == STANDBY_NAME
            )

        def reload(generation: int) -> None:
            mark = svc.mark()
            svc.send(signal.SIGHUP)
            svc.wait_serving(generation, after=mark)

        reload(2)
        poll_until(settled, 10, "generation 1 to be parked")
        fds, children = psutil.Process(svc.pid).num_fds(), len(svc.children())
        for generation in range(3, 53):
            reload(generation)
        poll_until(settled, 10, "old generations to be reaped")
        assert psutil.Process(svc.pid).num_fds() == fds
        assert len(svc.children()) == children
        assert len(svc.worker_pids()) == 4
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR2])
def test_reload_and_rollback_requests_racing_a_stop_do_not_kill_the_supervisor(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGHUPs (or SIGUSR2s) keep arriving while the service stops, until after it has
    stopped (a deploy script that reloads while another stops): the stop still ends
    cleanly."""
    pid_file = tmp_path / "svc.pid"
    script = write_service(tmp_path / "svc.py", pid_file=pid_file)
    with running(script, env={"LISTEN": "127.0.0.1:0", "DRAIN_TIMEOUT": "1"}) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        svc.send(signal.SIGTERM)
        while svc.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                svc.send(signum)
            time.sleep(0.001)  # pacing only: leave the log reader thread some time
        assert svc.wait_exit() == 0
        svc.wait_for(r"stopped \(exit status 0\)")
    assert not pid_file.exists()


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR2])
def test_reload_and_rollback_requests_before_the_supervisor_listens_do_not_kill_it(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """The signals keep arriving from the moment the supervisor has begun (its first
    log line) until generation 1 serves: those before it listens for them are
    ignored, not fatal. (Before the interpreter runs graceful's code, nothing can
    catch them.)"""
    script = write_service(tmp_path / "svc.py")
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_for("listening on")
        while "generation 1 is serving" not in svc.output and svc.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                svc.send(signum)
            time.sleep(0.001)  # pacing only
        svc.wait_serving(1)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_the_orphan_guard_exits_by_itself_at_a_clean_stop(tmp_path: Path) -> None:
    # Found by an attack: after a worker had exited, the guard waited kill_grace for
    # an empty sweep, so every stop took 2 s more and ended by killing the guard.
    script = write_service(tmp_path / "svc.py")
    with running(script, env={"LISTEN": "127.0.0.1:0", "PROBATION": "0"}) as svc:
        svc.wait_serving(1)
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        svc.wait_serving(2, after=mark)
        poll_until(lambda: len(svc.worker_pids()) == 1, 15, "generation 1 to exit")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
        assert "orphan guard did not exit" not in svc.output
