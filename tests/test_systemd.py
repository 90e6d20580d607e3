"""systemd and containers: sd_notify, socket activation, PID-1 reaping."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from harness import NotifySocket, ask, children_of, poll_until, running
from services import service_source, write_service

from graceful import Control
from graceful.spawn.guard import OrphanGuard
from graceful.supervisor.systemd import Notifier

EXTEND = "EXTEND_TIMEOUT_USEC=32000000"  # ready_timeout 30 s + 2 s kill grace


def environ_of(pid: int) -> dict[str, str]:
    environ: dict[str, str] = psutil.Process(pid).environ()
    return environ


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notify_socket_hears_start_reload_failed_reload_and_stop(tmp_path: Path, kind: str) -> None:
    address = (
        str(tmp_path / "notify.sock")
        if kind == "path"
        else f"@graceful-test-{os.getpid()}-{id(tmp_path)}"
    )
    manager = NotifySocket(address)
    script = write_service(tmp_path / "svc.py", prefix="v1")
    try:
        with running(script, env={"LISTEN": "127.0.0.1:0", "NOTIFY_SOCKET": address}) as svc:
            assert manager.next() == f"{EXTEND}\nSTATUS=starting generation 1"
            assert manager.next() == "READY=1\nSTATUS=generation 1 serving, 1/1 workers ready"
            # workers neither see NOTIFY_SOCKET nor can they notify
            [worker] = svc.worker_pids()
            assert "NOTIFY_SOCKET" not in environ_of(worker)

            script.write_text(service_source(prefix="v2"))
            before = time.monotonic_ns() // 1000
            svc.send(signal.SIGHUP)
            reloading = manager.next().split("\n")
            assert reloading[0] == "RELOADING=1"
            usec = int(reloading[1].removeprefix("MONOTONIC_USEC="))
            assert before <= usec <= time.monotonic_ns() // 1000
            assert reloading[2:] == [
                EXTEND,
                "STATUS=generation 1 serving, 1/1 workers ready; generation 2 starting",
            ]
            ready = manager.next()
            assert re.fullmatch(
                r"READY=1\nSTATUS=generation 2 serving, 1/1 workers ready "
                r"\(probation, \d+s left; generation 1 parked\); "
                r"last reload: generation 2 serving in \d+\.\d{3}s",
                ready,
            ), ready

            script.write_text(
                service_source(prefix="v3", before_serve="    raise RuntimeError('bad config')")
            )
            svc.send(signal.SIGHUP)
            assert manager.next().startswith("RELOADING=1\nMONOTONIC_USEC=")
            where = raised_at(script, "raise RuntimeError")
            failed = manager.next()
            assert re.fullmatch(
                r"READY=1\nSTATUS=generation 2 serving, 1/1 workers ready "
                r"\(probation, \d+s left; generation 1 parked\); last reload: "
                + re.escape(f"generation 3 failed: worker 0: RuntimeError: bad config {where}"),
                failed,
            ), failed

            # generation 1's worker is parked (or draining: its probation may be over)
            svc.send(signal.SIGTERM)
            stopping = manager.next()
            assert re.fullmatch(
                r"STOPPING=1\nSTATUS=stopping: [12] workers draining; last reload: "
                + re.escape(f"generation 3 failed: worker 0: RuntimeError: bad config {where}"),
                stopping,
            ), stopping
            assert svc.wait_exit() == 0
    finally:
        manager.close()


#: ways a new generation's failure cause could break the one line systemd gets:
#: entry code, and what the cause must show
FAILURE_CAUSES = {
    # an honest error naming a file whose name is not UTF-8
    "non_utf8_filename": (
        "    raise RuntimeError('cannot read ' + os.fsdecode(b'/srv/conf\\xff.toml'))",
        r"RuntimeError: cannot read /srv/conf\udcff.toml",
    ),
    # an error message of several lines: only the first is the cause
    "multiline_message": (
        "    raise RuntimeError('bad config\\nMAINPID=1\\nSTOPPING=1')",
        "RuntimeError: bad config",
    ),
    # a worker that writes its own failure message, with newlines and a lone surrogate
    "crafted_message": (
        '    os.write(ctx._control.fileno(), b\'["failed", "x\\\\nMAINPID=1\\\\ud800"]\\n\')\n'
        "    raise SystemExit(1)",
        r"x MAINPID=1\ud800",
    ),
}


@pytest.mark.parametrize("case", sorted(FAILURE_CAUSES))
def test_a_failure_cause_reaches_systemd_as_one_safe_line(tmp_path: Path, case: str) -> None:
    failing, shown = FAILURE_CAUSES[case]
    manager = NotifySocket(str(tmp_path / "notify.sock"))
    script = write_service(tmp_path / "svc.py", prefix="v1")
    try:
        env = {"LISTEN": "127.0.0.1:0", "NOTIFY_SOCKET": manager.address}
        with running(script, env=env) as svc:
            manager.next()
            assert manager.next().startswith("READY=1")
            script.write_text(service_source(prefix="v2", before_serve=failing))
            svc.send(signal.SIGHUP)
            assert manager.next().startswith("RELOADING=1")
            fields = manager.next().split("\n")
            assert fields[0] == "READY=1"
            assert len(fields) == 2, fields
            assert shown in fields[1], fields
            failure = svc.wait_for("reload failed: generation 2").string
            assert shown in failure
            # the supervisor is fine and the old generation still serves
            with socket.create_connection(svc_address(svc), timeout=10) as client:
                assert ask(client, "hi") == b"v1: hi\n"
            svc.send(signal.SIGTERM)
            assert svc.wait_exit() == 0
    finally:
        manager.close()


def raised_at(script: Path, text: str) -> str:
    """``(svc.py, line N)``: where the first line containing ``text`` is, as a
    failure cause names it."""
    lines = script.read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if text in line)
    return f"({script.name}, line {number})"


def svc_address(svc: object) -> tuple[str, int]:
    host, _, port = svc.address().rpartition(":")  # type: ignore[attr-defined]
    return host, int(port)


def test_first_start_failure_is_reported_as_stopping_with_the_cause(tmp_path: Path) -> None:
    manager = NotifySocket(str(tmp_path / "notify.sock"))
    script = write_service(tmp_path / "svc.py", before_serve="    raise RuntimeError('no db')")
    try:
        env = {"LISTEN": "127.0.0.1:0", "NOTIFY_SOCKET": manager.address}
        with running(script, env=env) as svc:
            assert manager.next().endswith("STATUS=starting generation 1")
            assert manager.next() == (
                "STOPPING=1\nSTATUS=stopping: generation 1 failed to start: "
                f"worker 0: RuntimeError: no db {raised_at(script, 'raise RuntimeError')}"
            )
            assert svc.wait_exit() == 1
    finally:
        manager.close()


ACTIVATE = shutil.which("systemd-socket-activate")
needs_activate = pytest.mark.skipif(
    ACTIVATE is None, reason="systemd-socket-activate is not installed (Debian package systemd)"
)


def first_connection(path: Path) -> socket.socket:
    """Connect to an activation socket: systemd-socket-activate starts the service only
    when the first connection arrives, which then waits in the backlog for it."""
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(30)

    def connected() -> bool:
        # the file appears at bind(), a moment before listen()
        try:
            client.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        return True

    poll_until(connected, 10, f"{path} to be listened on by systemd-socket-activate")
    return client


def activate(*sockets: str, names: str | None = None) -> tuple[str, ...]:
    assert ACTIVATE is not None
    wrapper = [ACTIVATE]
    for path in sockets:
        wrapper += ["-l", path]
    if names:
        wrapper.append(f"--fdname={names}")
    return tuple(wrapper)


@needs_activate
def test_socket_activation_serves_and_reloads_on_the_passed_socket(tmp_path: Path) -> None:
    sock = tmp_path / "web.sock"
    script = write_service(tmp_path / "svc.py", prefix="v1")
    with running(
        script,
        env={"LISTEN": "systemd"},
        wrapper=(*activate(str(sock), names="web"), "-E", "LISTEN"),
    ) as svc:
        with first_connection(sock) as client:
            assert ask(client, "hi") == b"v1: hi\n"
        svc.wait_serving(1)
        assert svc.address() == f"unix:{sock}"
        svc.wait_for(r"\(listen spec 'systemd:web'\)")
        [worker] = svc.worker_pids()
        leaked = {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} & environ_of(worker).keys()
        assert not leaked
        script.write_text(service_source(prefix="v2"))
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        svc.wait_serving(2, after=mark)

        def answered_by_new_code() -> bool:
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(sock))
                return ask(client, "hi") == b"v2: hi\n"

        poll_until(answered_by_new_code, 10, "generation 2 to answer")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
    assert sock.exists(), "a socket systemd passed in belongs to systemd: graceful keeps it"


@needs_activate
def test_listen_fdnames_selects_the_named_socket(tmp_path: Path) -> None:
    web, admin = tmp_path / "web.sock", tmp_path / "admin.sock"
    script = write_service(tmp_path / "svc.py", prefix="admin")
    wrapper = (*activate(str(web), str(admin), names="web:admin"), "-E", "LISTEN")
    with running(script, env={"LISTEN": "systemd:admin"}, wrapper=wrapper) as svc:
        with first_connection(admin) as client:
            assert ask(client, "hi") == b"admin: hi\n"
        svc.wait_serving(1)
        listening = [line for line in svc.lines if "listening on" in line]
        assert len(listening) == 1
        assert f"unix:{admin} (listen spec 'systemd:admin')" in listening[0]
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


@needs_activate
def test_a_missing_socket_name_is_a_one_line_startup_error(tmp_path: Path) -> None:
    script = write_service(tmp_path / "svc.py")
    wrapper = (*activate(str(tmp_path / "web.sock"), names="web"), "-E", "LISTEN")
    with running(script, env={"LISTEN": "systemd:nope"}, wrapper=wrapper) as svc:
        first_connection(tmp_path / "web.sock").close()
        assert svc.wait_exit() == 2
        errors = [line for line in svc.lines if "ERROR" in line]
        assert errors == [errors[0]]
        assert (
            "listen spec 'systemd:nope': systemd passed no socket named 'nope' (names passed: web"
            in errors[0]
        )


def test_a_wrong_listen_pid_is_refused(tmp_path: Path) -> None:
    script = write_service(tmp_path / "svc.py")
    with socket.socket() as inherited:
        inherited.bind(("127.0.0.1", 0))
        inherited.listen()
        env = {"LISTEN": "systemd", "LISTEN_FDS": "1", "LISTEN_PID": "1"}
        with running(script, env=env, pass_fds=(inherited.fileno(),)) as svc:
            assert svc.wait_exit() == 2
            svc.wait_for(r"LISTEN_PID='1' does not name this process \(\d+\)")
        env = {"LISTEN": "systemd"}
        with running(script, env=env) as svc:
            assert svc.wait_exit() == 2
            svc.wait_for("listen spec 'systemd' needs socket activation, but LISTEN_FDS is not set")


def _unshare_available() -> str | None:
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        [unshare, "--fork", "--pid", "--mount-proc", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"this machine does not allow a new PID namespace: {probe.stderr.strip()}"
    return None


def test_as_pid_1_the_supervisor_reaps_orphans_of_its_workers(tmp_path: Path) -> None:
    reason = _unshare_available()
    if reason is not None:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    # The worker starts a shell that backgrounds a sleep and exits at once: the
    # sleep is re-parented to PID 1 (the supervisor), and becomes its zombie when
    # it ends unless the supervisor reaps it.
    orphan_maker = (
        "    import subprocess\n    subprocess.run(['sh', '-c', 'sleep 2 & exit 0'], check=True)"
    )
    script = write_service(tmp_path / "svc.py", before_serve=orphan_maker)
    wrapper = ("unshare", "--fork", "--pid", "--mount-proc")
    with running(script, env={"LISTEN": "127.0.0.1:0"}, wrapper=wrapper) as svc:
        svc.wait_serving(1)
        [supervisor] = children_of(svc.pid)
        assert environ_of(supervisor).get("LISTEN") == "127.0.0.1:0"

        def children() -> dict[int, tuple[str, str]]:
            """The supervisor's children: their state and command line."""
            found: dict[int, tuple[str, str]] = {}
            for pid in children_of(supervisor):
                try:
                    process = psutil.Process(pid)
                    found[pid] = (process.status(), " ".join(process.cmdline()))
                except psutil.ZombieProcess:
                    found[pid] = (psutil.STATUS_ZOMBIE, "")
                except psutil.NoSuchProcess:
                    pass  # reaped meanwhile
            return found

        own = " ".join(psutil.Process(supervisor).cmdline())

        def orphans() -> list[int]:
            # neither a worker, a standby (nor one forked and not exec'd yet, which
            # has the supervisor's command line), multiprocess's resource tracker nor
            # the orphan guard: the re-parented child of the worker's shell (it may
            # not have exec'd sleep)
            return [
                pid
                for pid, (_, cmd) in children().items()
                if cmd != own
                and not any(
                    mark in cmd for mark in ("spawn_main", "resource_tracker", "child/guard.py")
                )
            ]

        poll_until(lambda: bool(orphans()), 10, "the orphan to be re-parented to the supervisor")
        found = orphans()
        poll_until(
            lambda: not any(pid in children() for pid in found), 10, "the orphan to be reaped"
        )
        assert all(state != psutil.STATUS_ZOMBIE for state, _ in children().values())
        os.kill(supervisor, signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_an_activated_listener_outlives_a_full_restart_of_the_supervisor(tmp_path: Path) -> None:
    """Like systemd's .socket unit, the test owns the listening socket and passes it
    in as fd 3 with LISTEN_* set; a connection made while no supervisor runs waits
    in the socket's queue and is answered by the next supervisor."""
    script = write_service(tmp_path / "svc.py", prefix="first")
    with socket.socket(socket.AF_UNIX) as listener:
        path = tmp_path / "held.sock"
        listener.bind(str(path))
        listener.listen(128)
        fd = listener.fileno()
        launcher = ("bash", "-c", f'exec 3<&{fd}; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"')
        env = {"LISTEN": "systemd"}
        with running(script, env=env, wrapper=launcher, pass_fds=(fd,)) as svc:
            svc.wait_serving(1)
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))
                assert ask(client, "one") == b"first: one\n"
            svc.send(signal.SIGTERM)
            assert svc.wait_exit() == 0
        # No supervisor runs now; the connection still succeeds and waits.
        waiting = socket.socket(socket.AF_UNIX)
        waiting.settimeout(30)
        waiting.connect(str(path))
        waiting.sendall(b"queued\n")
        script.write_text(service_source(prefix="second"))
        with running(script, env=env, wrapper=launcher, pass_fds=(fd,)) as svc:
            assert b"".join(iter(lambda: waiting.recv(1), b"\n")) == b"second: queued"
            waiting.close()
            svc.send(signal.SIGTERM)
            assert svc.wait_exit() == 0


def test_a_notify_reader_that_falls_behind_never_blocks_the_supervisor(tmp_path: Path) -> None:
    """A service manager that stops reading its notify socket: the supervisor goes on
    (status answers, a killed worker is replaced), and once the reader reads again it
    gets what waited, in order, ending with the newest state."""
    manager = NotifySocket(str(tmp_path / "notify.sock"))
    pid_file = tmp_path / "svc.pid"
    script = write_service(tmp_path / "svc.py", prefix="v1", pid_file=pid_file)
    env = {"LISTEN": "127.0.0.1:0", "NOTIFY_SOCKET": manager.address, "PROBATION": "0"}
    try:
        with running(script, env=env) as svc:
            svc.wait_serving(1)
            for generation in range(2, 14):  # a dozen reloads, about 4 messages each
                mark = svc.mark()
                svc.send(signal.SIGHUP)
                svc.wait_serving(generation, after=mark)
            status = Control(pid_file).status(timeout=5)
            assert status["generations"][-1]["generation"] == 13
            [worker] = [w["pid"] for w in status["generations"][-1]["workers"]]
            mark = svc.mark()
            os.kill(worker, signal.SIGKILL)
            svc.wait_for(r"generation 13 worker 0 .*restarting it", after=mark)
            poll_until(
                lambda: (
                    Control(pid_file)
                    .status(timeout=5)["status"]
                    .startswith("generation 13 serving, 1/1 workers ready")
                ),
                15,
                "the replacement",
            )
            # the reader comes back: what waited arrives in order, the newest last
            messages = []
            manager.sock.settimeout(2)
            with contextlib.suppress(TimeoutError):
                while True:
                    messages.append(manager.next())
            assert messages[0] == f"{EXTEND}\nSTATUS=starting generation 1"
            assert "generation 13 serving, 1/1 workers ready" in messages[-1]
            svc.send(signal.SIGTERM)
            assert svc.wait_exit() == 0
    finally:
        manager.close()


def test_a_new_guard_handed_hundreds_of_workers_at_once_takes_them_all() -> None:
    """A guard just started (not reading yet) is handed every live worker at once, as
    after a replacement: more than its socket holds. Nothing blocks, nothing is
    killed, and what waited is handed over as it reads (found by an attack: the new
    guard was killed as 'not reading', over and over)."""
    guard = OrphanGuard.start(drain_timeout=1.0, kill_grace=1.0)
    if guard is None:
        pytest.skip("no orphan guard here (no pidfds)")
    bystander = subprocess.Popen(["sleep", "60"])
    pidfd = os.pidfd_open(bystander.pid)
    try:
        started = time.monotonic()
        for _ in range(400):
            guard.watch(bystander.pid, pidfd)
        assert time.monotonic() - started < 5
        deadline = time.monotonic() + 20
        while guard.has_pending and time.monotonic() < deadline:
            select.select([], [guard.channel], [], 1.0)
            guard.flush()
        assert not guard.has_pending
        assert guard._process.poll() is None  # alive: it took them all
        # stopped, it takes nothing more, and the handover still never waits
        os.kill(guard.pid, signal.SIGSTOP)
        started = time.monotonic()
        for _ in range(2000):
            guard.watch(bystander.pid, pidfd)
        assert time.monotonic() - started < 5
        assert guard.has_pending
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(guard.pid, signal.SIGKILL)
        guard.reap()
        os.close(pidfd)
        bystander.kill()
        bystander.wait()


def test_notify_messages_a_stuck_reader_never_took_are_said_at_the_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reader = NotifySocket(str(tmp_path / "notify.sock"))
    notifier = Notifier(reader.address)
    try:
        started = time.monotonic()
        for index in range(200):  # far more than the reader's queue holds
            notifier.send(STATUS=f"line {index}")
        assert time.monotonic() - started < 5  # never waited
        notifier.close()
    finally:
        reader.close()
    assert re.search(r"\d+ sd_notify messages were not delivered", caplog.text), caplog.text
