"""Real supervisors as subprocesses, watched through their log lines.

Each supervisor runs in its own session, so :meth:`ServiceProcess.close` can kill
the whole process group (supervisor, workers, multiprocess's resource tracker)
and reap it, even when a test fails half-way.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WAIT = 30.0


class ServiceProcess:
    """A supervisor started with ``python script`` in a fresh process group."""

    def __init__(
        self,
        script: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: list[str] | None = None,
        cwd: Path | None = None,
        module: str | None = None,
        stdin_script: bool = False,
        pass_fds: tuple[int, ...] = (),
        wrapper: tuple[str, ...] = (),
    ) -> None:
        """Run ``python script`` (or ``python -m module`` with ``cwd``, or the script
        fed to ``python -`` on stdin with ``stdin_script``), behind the ``wrapper``
        command if one is given (``systemd-socket-activate ...``, ``unshare ...``)."""
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [full_env.get("PYTHONPATH")])]
        )
        full_env.update(env or {})
        self.script = script
        if module is not None:
            command = [sys.executable, "-m", module]
        elif stdin_script:
            command = [sys.executable, "-"]
        else:
            command = [sys.executable, str(script)]
        self.proc = subprocess.Popen(
            [*wrapper, *command, *(args or [])],
            stdin=script.open("rb") if stdin_script else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd or script.parent),
            start_new_session=True,
            text=True,
            pass_fds=pass_fds,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(
        self, pattern: str, *, after: int = 0, timeout: float = DEFAULT_WAIT
    ) -> re.Match[str]:
        """Wait until a log line (from index ``after`` on) matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no log line matched {pattern!r} within {timeout}s; output:\n{self.output}"
                    )
                self._changed.wait(min(remaining, 0.2))

    def mark(self) -> int:
        """The index of the next log line, for ``wait_for(after=...)``."""
        with self._changed:
            return len(self.lines)

    def address(self, index: int = 0) -> str:
        """The ``index``-th bound address from the 'listening on' log lines."""
        self.wait_for(r"listening on ")
        found = [
            m.group(1) for m in (re.search(r"listening on (\S+)", line) for line in self.lines) if m
        ]
        return found[index]

    def wait_serving(
        self, generation: int, *, after: int = 0, timeout: float = DEFAULT_WAIT
    ) -> None:
        self.wait_for(rf"generation {generation} is serving", after=after, timeout=timeout)

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = DEFAULT_WAIT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"supervisor still running after {timeout}s:\n{self.output}"
            ) from None
        self._reader.join(5)
        return code

    def children(self) -> list[int]:
        """PIDs of the supervisor's direct children."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        with contextlib.suppress(OSError):
            return [int(pid) for pid in path.read_text().split()]
        return []

    def worker_pids(self) -> list[int]:
        """The supervisor's children that are workers (not multiprocess's resource tracker)."""
        pids = []
        for pid in self.children():
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
            except OSError:
                continue
        return pids

    def close(self) -> None:
        """Kill the whole process group and reap the supervisor."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def running(script: Path, **kwargs: object) -> Iterator[ServiceProcess]:
    service = ServiceProcess(script, **kwargs)  # type: ignore[arg-type]
    try:
        yield service
    finally:
        service.close()


def group_alive(pgid: int) -> list[int]:
    """PIDs still alive (not zombies) in process group ``pgid``."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            alive.append(int(entry.name))
    return alive


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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
