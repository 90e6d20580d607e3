"""``graceful upgrade`` attacked: a hostile operator and environment against the
hand-over between the running supervisor (A) and its successor (B).

Every test here failed on the code it was written against; each names the fault in
its docstring. The services are the line-echo services of ``services.py``, run as
``python svc.py`` (``@graceful.service`` and ``main.run(pid_file=...)``): the
successor re-runs ``svc.py`` from disk, so a test changes the successor's
configuration or behaviour by rewriting the script after A has started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import ROOT, ServiceProcess, graceful_cli, poll_until, running
from services import write_service

#: A line ``hold`` is answered once this file (beside the script) exists.
HOLD = """\
        if line == b"hold":
            while not os.path.exists(os.path.join(os.path.dirname(__file__), "gate")):
                await anyio.sleep(0.01)"""


def cli(pid_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return graceful_cli(*args, "--pid-file", str(pid_file))


def in_background(pid_file: Path, *args: str) -> subprocess.Popen[str]:
    """``graceful ARGS --pid-file PID_FILE`` started, not waited for."""
    return subprocess.Popen(
        [sys.executable, "-m", "graceful", *args, "--pid-file", str(pid_file)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def echo(address: str, line: bytes = b"hi", timeout: float = 5.0) -> bytes:
    """One line sent to the TCP or unix (``unix:PATH``) listener, its answer."""
    if address.startswith("unix:"):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(timeout)
        try:
            client.connect(address[len("unix:") :])
        except BaseException:
            client.close()
            raise
    else:
        host, _, port = address.rpartition(":")
        client = socket.create_connection((host, int(port)), timeout=timeout)
    with client:
        client.sendall(line + b"\n")
        return client.recv(100)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def pid_in(pid_file: Path) -> int:
    return int(pid_file.read_text())


def service(
    tmp_path: Path, *, listen: str = "127.0.0.1:0", kind: str = "asyncio", **env: str
) -> tuple[Path, Path, dict[str, str]]:
    """``svc.py`` in ``tmp_path``, whose PID file is ``svc.pid`` beside it, and the
    environment to run it with: (script, PID file, environment)."""
    pid_file = tmp_path / "svc.pid"
    options: dict[str, object] = {"pid_file": pid_file}
    if kind != "sync":
        options["on_line"] = HOLD
    script = write_service(tmp_path / "svc.py", kind, **options)
    settings = {"LISTEN": listen, "WORKERS": "1", "DRAIN_TIMEOUT": "30", **env}
    return script, pid_file, settings


def start(tmp_path: Path, **options: str) -> tuple[Path, Path, ServiceProcess]:
    """:func:`service`, started (use the ServiceProcess in a ``with``)."""
    script, pid_file, env = service(tmp_path, **options)
    return script, pid_file, running(script, env=env)


def rewrite(script: Path, old: str, new: str) -> None:
    text = script.read_text()
    assert old in text, old
    script.write_text(text.replace(old, new, 1))


LISTEN_FROM_ENV = 'listen=os.environ["LISTEN"].split(","),'


# -- garbage from the successor ---------------------------------------------------------


def test_a_successor_sending_deeply_nested_json_costs_only_the_upgrade(tmp_path: Path) -> None:
    """A reads the successor's datagrams with ``json.loads`` and catches only
    ValueError: a 60 KiB datagram of ``[`` raises RecursionError, which escapes the
    reader task, ends A's task group with a traceback and takes every worker down
    (the control server, by contrast, catches RecursionError)."""
    script, pid_file, svc = start(tmp_path, PROBATION="0")
    with svc:
        svc.wait_serving(1)
        address = svc.address()
        # the successor (a graceful of another version, or a broken one) says this
        # before anything else
        rewrite(
            script,
            'if __name__ == "__main__":\n',
            'if __name__ == "__main__":\n'
            "    from graceful.child.successor import inherited\n"
            "    if inherited() is not None:\n"
            '        inherited().link.send(b"[" * 60000)\n',
        )
        result = cli(pid_file, "upgrade", "--wait")
        assert result.returncode == 1, result.stdout + result.stderr
        time.sleep(1)
        assert svc.proc.poll() is None, svc.output
        assert echo(address) == b"v1: hi\n"
        assert pid_in(pid_file) == svc.pid
        assert "Traceback" not in svc.output, svc.output


# -- a predecessor that could not park -----------------------------------------------------


def test_a_rollback_during_the_probation_never_leaves_the_service_without_a_supervisor(
    tmp_path: Path,
) -> None:
    """A's generation cannot be parked (a server that does not take part in
    probation: ``ctx.ready()`` without ``parkable``), so A drains and stops at the
    hand-over; but A's upgrader still says "parked for its probation", and B, told
    nothing, runs its probation as if A were parked. ``graceful rollback`` at B (or
    a crash of B's worker) makes B give the service back and exit, while A, which
    is draining, ignores the take-back and exits too: the rollback answers
    "supervisor A serves again" and nothing serves at all."""
    script, pid_file, env = service(tmp_path, kind="sync", PROBATION="60", DRAIN_TIMEOUT="20")
    rewrite(script, "ctx.ready(parkable=True)", "ctx.ready()")
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        address = svc.address()
        host, _, port = address.rpartition(":")
        # a request in flight keeps A draining for a few seconds after the hand-over
        with socket.create_connection((host, int(port)), timeout=30) as slow:
            slow.sendall(b"sleep 6\n")
            assert slow.recv(100) == b"v1: sleeping\n"
            upgraded = cli(pid_file, "upgrade", "--wait")
            assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
            successor = pid_in(pid_file)
            assert successor != svc.pid
            rollback = cli(pid_file, "rollback")
            # either refused (the upgrade cannot be rolled back), or A serves again
            assert slow.recv(100) == b"v1: sleep 6\n"
        poll_until(lambda: not alive(successor) or rollback.returncode != 0, 30, "B settled")
        time.sleep(2)
        serving = [pid for pid in (svc.pid, successor) if alive(pid)]
        assert serving, f"no supervisor left after {rollback!r}:\n{svc.output}"
        assert echo(address) == b"v1: hi\n"
        assert pid_in(pid_file) in serving


# -- signals to the predecessor ------------------------------------------------------------


def test_a_first_sigterm_to_the_draining_predecessor_lets_its_requests_finish(
    tmp_path: Path,
) -> None:
    """After the hand-over (probation 0) A drains its in-flight requests. A single
    SIGTERM to A (``systemctl stop`` with the default KillMode=control-group signals
    every process of the unit; so does Ctrl-C in a terminal) is taken as a *second*
    stop signal: "stopping now: killing 1 workers", the request is cut and A exits
    with status 1. A first stop signal drains everywhere else."""
    _script, pid_file, svc = start(tmp_path, PROBATION="0")
    with svc:
        svc.wait_serving(1)
        host, _, port = svc.address().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=30) as held:
            held.sendall(b"hold\n")
            time.sleep(0.5)  # in the handler of A's worker
            upgraded = cli(pid_file, "upgrade", "--wait")
            assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
            mark = svc.mark()
            svc.send(signal.SIGTERM)
            time.sleep(1)
            (tmp_path / "gate").touch()
            assert held.recv(100) == b"v1: hold\n", "\n".join(svc.lines[mark:])
        assert svc.wait_exit(30) == 0, svc.output


# -- the shared control socket -------------------------------------------------------------


def test_the_exiting_predecessor_does_not_answer_requests_meant_for_its_successor(
    tmp_path: Path,
) -> None:
    """A and B hold the same listening control socket. When A exits after the
    hand-over, its ``last_words`` accepts whatever waits in the socket's backlog and
    answers it itself: a ``graceful stop`` meant for B (the PID file names B, and
    SO_PEERCRED names B) is answered "stop requested" by A, which exits anyway, and
    B never stops. (Here B is held with SIGSTOP so that the request waits in the
    backlog when A exits; a busy B on a loaded host opens the same window.)"""
    _script, pid_file, svc = start(tmp_path, PROBATION="0")
    with svc:
        svc.wait_serving(1)
        host, _, port = svc.address().rpartition(":")
        held = socket.create_connection((host, int(port)), timeout=30)
        held.sendall(b"hold\n")
        time.sleep(0.5)
        upgraded = cli(pid_file, "upgrade", "--wait")
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        successor = pid_in(pid_file)
        os.kill(successor, signal.SIGSTOP)
        try:
            stop = in_background(pid_file, "stop")
            time.sleep(2)  # connected, its request sent, waiting in the backlog
            (tmp_path / "gate").touch()  # A's last request ends: A exits
            with held:
                assert held.recv(100) == b"v1: hold\n"
            assert svc.wait_exit(5) == 0, svc.output
        finally:
            os.kill(successor, signal.SIGCONT)
        output, _ = stop.communicate(timeout=30)
        poll_until(
            lambda: not alive(successor),
            30,
            f"the successor stopped by `graceful stop` (which exited {stop.returncode}, "
            f"saying {output.strip()!r}):\n" + svc.output,
        )


# -- listeners and their files ---------------------------------------------------------------


def test_a_listener_dropped_from_the_new_configuration_is_closed(tmp_path: Path) -> None:
    """B takes, by spec, the listeners its configuration names; the others A handed
    over stay open in B, unserved, for B's whole life (they are closed only when the
    command returns, with ``socket.close()``): clients connecting to the dropped
    listener hang in its backlog instead of being refused, and its unix socket
    file is still there after the final stop."""
    dropped = tmp_path / "old.sock"
    script, pid_file, svc = start(tmp_path, listen=f"127.0.0.1:0,unix:{dropped}", PROBATION="0")
    with svc:
        svc.wait_serving(1)
        address = svc.address()
        assert echo(f"unix:{dropped}") == b"v1: hi\n"
        rewrite(script, LISTEN_FROM_ENV, 'listen=["127.0.0.1:0"],')
        upgraded = cli(pid_file, "upgrade", "--wait")
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        assert svc.wait_exit(30) == 0, svc.output
        assert echo(address) == b"v1: hi\n"
        try:
            answer = echo(f"unix:{dropped}", timeout=3)
        except (ConnectionRefusedError, FileNotFoundError):
            answer = None
        except TimeoutError:
            answer = b"(accepted into a backlog nobody serves: timed out)"
        stopped = cli(pid_file, "stop", "--wait")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert answer is None, answer
        assert not dropped.exists()


def test_a_listener_the_successor_added_is_removed_when_it_gives_the_service_back(
    tmp_path: Path,
) -> None:
    """B binds a unix listener its new configuration adds. When B gives the service
    back (``graceful rollback`` during its probation) it disowns every socket file
    (``own_files(False)``), its own new one included, which A never knew of: B exits
    and leaves the dead socket file behind for good."""
    added = tmp_path / "new.sock"
    script, pid_file, svc = start(tmp_path, PROBATION="60")
    with svc:
        svc.wait_serving(1)
        rewrite(script, LISTEN_FROM_ENV, f'listen=["127.0.0.1:0", "unix:{added}"],')
        upgraded = cli(pid_file, "upgrade", "--wait")
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        successor = pid_in(pid_file)
        assert echo(f"unix:{added}") == b"v1: hi\n"
        rolled_back = cli(pid_file, "rollback")
        assert rolled_back.returncode == 0, rolled_back.stdout + rolled_back.stderr
        poll_until(lambda: not alive(successor), 30, "the successor gone")
        assert pid_in(pid_file) == svc.pid
        assert not added.exists(), "B's listener file is left behind after it gave back"


# -- what a killed successor leaves ------------------------------------------------------------


def test_a_successor_killed_before_it_serves_leaves_nothing_behind(tmp_path: Path) -> None:
    """B stages its PID file (``.svc.pid.graceful-successor``) as it starts. Killed
    before it serves (here SIGKILL; A's own kills, at its ``start_timeout`` or when
    the service stops during the upgrade, are the same), the staged file stays, and
    nobody removes it: not A's clean-up, not the final stop."""
    script, pid_file, svc = start(tmp_path, PROBATION="0")
    with svc:
        svc.wait_serving(1)
        rewrite(
            script,
            "    pass\n    await ctx.serve(echo)",
            "    while not os.path.exists(os.path.join(os.path.dirname(__file__), 'gate')):\n"
            "        await anyio.sleep(0.01)\n"
            "    await ctx.serve(echo)",
        )
        upgrade = in_background(pid_file, "upgrade", "--wait")
        successor = int(svc.wait_for(r"upgrading: successor (\d+) starting").group(1))
        svc.wait_for(rf"graceful\[{successor}\] supervisor: INFO starting generation 1")
        os.kill(successor, signal.SIGKILL)
        output, _ = upgrade.communicate(timeout=30)
        assert upgrade.returncode == 1, output
        stopped = cli(pid_file, "stop", "--wait")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        left = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("."))
        assert left == [], left


def test_failed_upgrades_release_their_descriptors(tmp_path: Path) -> None:
    """Each failed upgrade keeps two pipe descriptors of A (the multiprocess
    process's sentinel) open for ``start_timeout`` (2 * ready_timeout + 30 s, 90 s
    by default): the attempt stays referenced by its ``_deadline`` task, which
    sleeps on after the attempt has ended. A retry loop against a broken release
    piles them up."""
    script, pid_file, svc = start(tmp_path, PROBATION="0", STANDBY="0")
    with svc:
        svc.wait_serving(1)
        time.sleep(1)

        def descriptors() -> int:
            return len(os.listdir(f"/proc/{svc.pid}/fd"))

        before = descriptors()
        rewrite(script, "import os\n", "import os\nraise RuntimeError('release is broken')\n")
        for _ in range(10):
            result = cli(pid_file, "upgrade", "--wait")
            assert result.returncode == 1, result.stdout + result.stderr
            assert "release is broken" in result.stderr
        poll_until(
            lambda: descriptors() <= before + 1,
            15,
            f"A's descriptors back to {before} (now {descriptors()})",
        )


def test_a_socket_activated_service_can_be_upgraded(tmp_path: Path) -> None:
    """With ``listen=["systemd"]`` A names each activated listener
    ``systemd:NAME`` (here ``systemd:unknown``), and takes ``LISTEN_*`` out of the
    environment; B looks up the handed-over listeners by the spec of its
    configuration, ``systemd``, finds none, and tries socket activation itself:
    "listen spec 'systemd' needs socket activation, but LISTEN_FDS is not set".
    A service started from a .socket unit can never be upgraded. (A socket held
    by the test and passed as fd 3 with LISTEN_PID and LISTEN_FDS, as systemd does.)"""
    script, pid_file, env = service(tmp_path, listen="systemd", PROBATION="0")
    with socket.socket(socket.AF_UNIX) as activation:
        path = tmp_path / "activated.sock"
        activation.bind(str(path))
        activation.listen(128)
        fd = activation.fileno()
        launcher = ("bash", "-c", f'exec 3<&{fd}; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"')
        with running(script, env=env, wrapper=launcher, pass_fds=(fd,)) as svc:
            svc.wait_serving(1)
            assert echo(f"unix:{path}") == b"v1: hi\n"
            upgraded = cli(pid_file, "upgrade", "--wait")
            assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
            assert svc.wait_exit(30) == 0, svc.output
            assert echo(f"unix:{path}") == b"v1: hi\n"
            stopped = cli(pid_file, "stop", "--wait")
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.mark.parametrize("init", ["catatonit", "tini-static"])
def test_an_upgrade_is_refused_under_a_container_init_that_ends_with_its_child(
    tmp_path: Path, init: str
) -> None:
    """The upgrade is refused under ``docker-init``, ``tini`` and ``dumb-init``
    (``TRACKING_MANAGERS``, matched on ``/proc/PPID/comm``), which end the container
    when their child, the supervisor, exits. Podman's ``--init`` runs the supervisor
    under ``catatonit``, and Debian's tini package also ships ``tini-static``: the
    upgrade proceeds, A exits after the hand-over, the init exits with it and the
    container's PID namespace (B and every worker) is killed. (The init here is a
    shell script of that name that waits for its child.)"""
    script, pid_file, env = service(tmp_path, PROBATION="0")
    wrapper = tmp_path / init
    wrapper.write_text('#!/bin/sh\n"$@" &\nwait $!\n')
    wrapper.chmod(0o755)
    with running(script, env=env, wrapper=(str(wrapper),)) as svc:
        svc.wait_serving(1)
        with open(f"/proc/{svc.pid}/comm") as comm:
            assert comm.read().strip() == init
        result = cli(pid_file, "upgrade", "--wait")
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"refused: the parent process is {init}" in result.stderr
