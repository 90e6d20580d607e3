"""Real supervisors as subprocesses, watched through their log lines.

Every process a service starts (supervisor, workers, multiprocess's resource
tracker, anything a worker forks) inherits a marker in its environment, so
:meth:`ServiceProcess.processes` finds them whatever their process group or
parent, and :meth:`ServiceProcess.close` kills and reaps them all, even when a
test fails half-way. (``conftest.py`` makes the test process a child subreaper:
orphans come back to it, not to init.)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
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
        self.marker = f"{_MARKER}={uuid.uuid4().hex}"
        full_env[_MARKER] = self.marker.partition("=")[2]
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

    def processes(self) -> list[int]:
        """Every live (not zombie) process this service started, the supervisor
        included, wherever it now sits in the process tree."""
        return marked_processes(self.marker)

    def close(self) -> None:
        """Kill every process of the service (supervisor first, so that it starts
        nothing new) and reap them."""
        killed: set[int] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
            alive = [pid for pid in self.processes() if pid != self.pid]
            if not alive and self.proc.poll() is not None:
                break
            for pid in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            killed.update(alive)
            time.sleep(0.02)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        reap(killed)
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


_MARKER = "GRACEFUL_TEST_SERVICE"


def marked_processes(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (``NAME=value``)."""
    needle = b"\0" + marker.encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or a zombie
        if needle in b"\0" + environ + b"\0" and is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def process_state(pid: int) -> str | None:
    """The state letter in ``/proc/PID/stat`` (``Z`` for a zombie), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    return process_state(pid) not in (None, "Z")


def reap(pids: set[int] | list[int], timeout: float = 10.0) -> None:
    """Wait until none of ``pids`` is alive, reaping those that are (now) children
    of this process."""
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid if not is_alive(pid) else 0
            if done:
                pending.discard(pid)
        if pending:
            time.sleep(0.02)


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


def poll_until(predicate: object, timeout: float, what: str) -> None:
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


def listening_inode(address: str) -> int:
    """The inode of the TCP socket listening on ``HOST:PORT`` (from /proc/net)."""
    port = int(address.rpartition(":")[2])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, state, inode = fields[1], fields[3], int(fields[9])
                if state == "0A" and int(local.rpartition(":")[2], 16) == port:
                    return inode
    raise AssertionError(f"nothing listens on {address}")


def holds_socket(pid: int, inode: int) -> bool:
    """True if process ``pid`` has a descriptor on the socket with ``inode``."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False  # exited
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                return True
    return False
