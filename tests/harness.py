"""Test-only helpers around :mod:`graceful.testing`.

The service harness itself (:class:`ServiceProcess`, :func:`running`,
:func:`poll_until`, the process helpers) is public in :mod:`graceful.testing` and
re-exported here, so tests import everything from one place. ``conftest.py`` makes
the test process a child subreaper: orphans of the services a test starts come
back to it, not to init, and :func:`reap` collects them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil

from graceful.testing import (
    DEFAULT_WAIT,
    ServiceProcess,
    children_of,
    is_alive,
    is_worker,
    marked_processes,
    poll_until,
    process_state,
    reap,
    running,
    zombie_children,
)

__all__ = [
    "AS_ANOTHER_USER",
    "DEFAULT_WAIT",
    "ROOT",
    "ServiceProcess",
    "ask",
    "cannot_act_as_another_user",
    "children_of",
    "connect",
    "graceful_cli",
    "graceful_serve",
    "holds_listener",
    "hup",
    "is_alive",
    "is_worker",
    "marked_processes",
    "poll_until",
    "process_state",
    "read_line",
    "reap",
    "reload",
    "running",
    "sticky_directory",
    "zombie_children",
]

ROOT = Path(__file__).resolve().parent.parent


def graceful_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m graceful ARGS`` to completion (within 60 s); its result."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "graceful", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )


def graceful_serve(
    app: Path, *options: str, env: Mapping[str, str] | None = None
) -> ServiceProcess:
    """``graceful serve app:app`` for the ``app.py`` at ``app``, started in its directory:
    on a free port, without an access log, with ``options`` added."""
    args = ["serve", "app:app", "--listen", "127.0.0.1:0", "--no-access-log", *options]
    return ServiceProcess(app, module="graceful", args=args, env=env)


def hup(svc: ServiceProcess) -> int:
    """Send SIGHUP (a reload); the mark of the output just before it, for the waits
    on what the reload logs."""
    mark = svc.mark()
    svc.send(signal.SIGHUP)
    return mark


def reload(svc: ServiceProcess, generation: int, timeout: float = 60.0) -> None:
    """SIGHUP, then wait until ``generation`` serves."""
    svc.wait_serving(generation, after=hup(svc), timeout=timeout)


def connect(address: str) -> socket.socket:
    """A client connection to ``HOST:PORT``."""
    host, _, port = address.rpartition(":")
    return socket.create_connection((host.strip("[]"), int(port)), timeout=10)


def read_line(sock: socket.socket) -> bytes:
    """Read up to and including the next newline (or until the peer closes)."""
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        answer += chunk
    return answer


def ask(sock: socket.socket, line: str) -> bytes:
    """Send one line, return the one-line answer."""
    sock.sendall(line.encode() + b"\n")
    return read_line(sock)


#: Runs the rest of its command line in a new user namespace: the process keeps its
#: user id but loses root's power over other users' files (CAP_FOWNER and the like),
#: as an ordinary user has none.
AS_ANOTHER_USER = ("unshare", "--user")


def cannot_act_as_another_user() -> str | None:
    """Why tests cannot set up files of other users and run a service without root's
    power over them (:data:`AS_ANOTHER_USER`), or None if they can."""
    if os.geteuid() != 0:
        return "needs root to give files to other users"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    probe = subprocess.run(["unshare", "--user", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"user namespaces are not available: {probe.stderr.decode().strip()}"
    return None


def sticky_directory(tmp_path: Path) -> Path:
    """A world-writable sticky directory like /tmp, owned by a third user."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 65533, 65533)
    shared.chmod(0o1777)
    tmp_path.chmod(0o755)
    return shared


def holds_listener(pid: int, address: str) -> bool:
    """True if process ``pid`` has a descriptor on a TCP socket listening on the
    port of ``HOST:PORT`` (False once it has exited)."""
    port = int(address.rpartition(":")[2])
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(
        conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
        for conn in connections
    )


class NotifySocket:
    """The datagram socket a service manager would listen on."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address if not address.startswith("@") else "\0" + address[1:])
        self.sock.settimeout(30)
        self.address = address

    def next(self) -> str:
        return self.sock.recv(4096).decode()

    def close(self) -> None:
        self.sock.close()
