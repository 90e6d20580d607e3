"""The contenders: the ways a user could restart an HTTP service, each behind one interface.

Every contender serves the same app (``apps/bench_app.py``, or its WSGI twin for
gunicorn's sync workers) on a loopback port from a working directory that holds
copies of ``apps/``. ``restart()`` performs one restart the way that contender
does it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def answering_pid(port: int, timeout: float = 1.0) -> int | None:
    """The ``x-pid`` of one answer on a new connection, or None if nothing answers."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.settimeout(timeout)
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (chunk := s.recv(4096)):
            data += chunk
        for line in data.split(b"\r\n"):
            if line.lower().startswith(b"x-pid:"):
                return int(line.split(b":", 1)[1])
    return None


def wait_answering(port: int, timeout: float = 60.0, pid: int | None = None) -> None:
    """Wait until the port answers (by process ``pid``, if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answered = answering_pid(port)
        if answered is not None and (pid is None or answered == pid):
            return
        time.sleep(0.02)
    raise RuntimeError(f"port {port} did not answer{f' from {pid}' if pid else ''} in {timeout}s")


class Contender:
    """A server started as a process group, restarted by SIGHUP unless overridden."""

    name = "?"

    def __init__(self, workdir: Path, slow_start: float = 0.0) -> None:
        self.workdir = workdir
        self.env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(ROOT), str(workdir)]),
            BENCH_SLOW_START=str(slow_start),
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _launch(
        self, command: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command,
            cwd=self.workdir,
            env={**self.env, **(extra_env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start(self, port: int) -> None:
        self.port = port
        self.process = self._launch(self.command(port))
        wait_answering(port)

    def restart(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None


def stop_group(process: subprocess.Popen[bytes], grace: float = 40.0) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace`` seconds; raises
    subprocess.TimeoutExpired if the process has not exited 10 s after that."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


class GracefulUvicorn(Contender):
    name = "graceful serve (uvicorn)"
    server = "uvicorn"

    def command(self, port: int) -> list[str]:
        return [str(BIN / "graceful"), "serve", "bench_app:app", "--server", self.server,
                "--listen", f"127.0.0.1:{port}", "--no-access-log"]  # fmt: skip


class GracefulUvicorn2(GracefulUvicorn):
    name = "graceful serve (uvicorn), 2 workers"

    def command(self, port: int) -> list[str]:
        return [*super().command(port), "--workers", "2"]


class GracefulHypercorn(GracefulUvicorn):
    name = "graceful serve (hypercorn)"
    server = "hypercorn"


class GracefulRaw(Contender):
    name = "@graceful.service (raw asyncio)"

    def command(self, port: int) -> list[str]:
        self.env["LISTEN"] = f"127.0.0.1:{port}"
        return [sys.executable, "raw_http_service.py"]


class GunicornUvicorn(Contender):
    name = "gunicorn + UvicornWorker"

    def command(self, port: int) -> list[str]:
        return [str(BIN / "gunicorn"), "bench_app:app", "-k", "uvicorn.workers.UvicornWorker",
                "-b", f"127.0.0.1:{port}", "-w", "1", "--graceful-timeout", "30"]  # fmt: skip


class GunicornSync(Contender):
    name = "gunicorn sync workers"

    def command(self, port: int) -> list[str]:
        return [str(BIN / "gunicorn"), "bench_wsgi:app", "-b", f"127.0.0.1:{port}", "-w", "1",
                "--graceful-timeout", "30"]  # fmt: skip


class GunicornGthread(Contender):
    name = "gunicorn gthread workers (10 threads)"

    def command(self, port: int) -> list[str]:
        return [str(BIN / "gunicorn"), "bench_wsgi:app", "-b", f"127.0.0.1:{port}", "-w", "1",
                "-k", "gthread", "--threads", "10", "--graceful-timeout", "30"]  # fmt: skip


class GracefulWsgi(Contender):
    name = "graceful serve --interface wsgi (10 threads)"

    def command(self, port: int) -> list[str]:
        return [str(BIN / "graceful"), "serve", "bench_wsgi:app", "--interface", "wsgi",
                "--listen", f"127.0.0.1:{port}", "--no-access-log"]  # fmt: skip


class UvicornWorkers(Contender):
    """uvicorn's own supervisor. Since 0.51, SIGHUP restarts its workers one at a
    time, each new one checked before the next old one is stopped."""

    name = "uvicorn --workers 2"

    def command(self, port: int) -> list[str]:
        return [str(BIN / "uvicorn"), "bench_app:app", "--host", "127.0.0.1", "--port", str(port),
                "--workers", "2", "--no-access-log"]  # fmt: skip


class Granian(Contender):
    """Granian (Rust). SIGHUP respawns its workers."""

    name = "granian --workers 2"

    def command(self, port: int) -> list[str]:
        return [str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "2", "bench_app:app"]  # fmt: skip


class NaiveUvicorn(Contender):
    """Stop the server, then start a new one: the classic deploy."""

    name = "naive stop/start (uvicorn)"

    def command(self, port: int) -> list[str]:
        return [str(BIN / "uvicorn"), "bench_app:app", "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log"]  # fmt: skip

    def restart(self) -> None:
        assert self.process is not None
        stop_group(self.process)
        self.process = self._launch(self.command(self.port))


class ReuseportUvicorn(Contender):
    """Start a new uvicorn on its own SO_REUSEPORT socket, wait until it answers, stop
    the old one."""

    name = "SO_REUSEPORT hand-over (uvicorn)"

    def command(self, port: int) -> list[str]:
        return [sys.executable, "reuseport_uvicorn.py", str(port)]

    def restart(self) -> None:
        assert self.process is not None
        new = self._launch(self.command(self.port))
        wait_answering(self.port, pid=_worker_pid(new))
        old, self.process = self.process, new
        stop_group(old)


def _worker_pid(process: subprocess.Popen[bytes]) -> int:
    return process.pid  # reuseport_uvicorn.py serves in its own process


ALL: list[type[Contender]] = [
    NaiveUvicorn,
    ReuseportUvicorn,
    GunicornUvicorn,
    GunicornSync,
    UvicornWorkers,
    Granian,
    GracefulUvicorn,
    GracefulUvicorn2,
    GracefulHypercorn,
    GracefulRaw,
]

#: what a Python user would pick to run 2 workers, compared without restarts
TWO_WORKERS: list[type[Contender]] = [GracefulUvicorn2, UvicornWorkers, Granian]

#: the same WSGI app (``apps/bench_wsgi.py``) three ways, one worker each
WSGI: list[type[Contender]] = [GracefulWsgi, GunicornSync, GunicornGthread]
