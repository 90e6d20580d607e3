"""Run a graceful service as a real subprocess and drive it.

:class:`ServiceProcess` starts a script (or ``python -m module``) in a fresh process
group, collects its log lines as they arrive, waits for a line to match with a
bounded wait, sends it signals, and finds every process it started. Every such
process (the supervisor, its workers, multiprocess's resource tracker, anything a
worker forks) inherits a marker in its environment, so
:meth:`ServiceProcess.processes` finds them whatever their process group or
parent, and :meth:`ServiceProcess.close` kills and reaps them all, even when a
test fails half-way::

    from graceful.testing import poll_until, running

    with running(Path("service.py"), env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        address = svc.address()
        ...  # talk to the service
        svc.send(signal.SIGHUP)
        svc.wait_serving(2)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
        poll_until(lambda: svc.processes() == [], 10, "every process to exit")

Process inspection goes through psutil: ``pip install 'graceful-restarts[testing]'``. Only
this module needs it; the rest of graceful does not import it. Linux only, as
graceful is.

Orphans (a worker whose supervisor was killed, a process a worker left behind) are
re-parented to the nearest child subreaper, else to init; :func:`reap` waits for
them either way, and collects those that became children of this process (make the
test process a subreaper with ``prctl(PR_SET_CHILD_SUBREAPER)`` for that).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import site
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

try:
    import psutil
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError(
        "graceful.testing inspects processes with psutil, which is not installed: "
        "pip install 'graceful-restarts[testing]'"
    ) from error

from graceful.base.processes import WORKER_NAME
from graceful.child.standby import STANDBY_NAME, STANDBY_VARIABLE
from graceful.child.template import TEMPLATE_NAME

__all__ = [
    "DEFAULT_WAIT",
    "MARKER_VARIABLE",
    "ServiceProcess",
    "children_of",
    "holds_socket",
    "is_alive",
    "is_standby",
    "is_worker",
    "listening_socket",
    "marked_processes",
    "poll_until",
    "process_name",
    "process_state",
    "reap",
    "running",
    "zombie_children",
]

#: Seconds that the bounded waits of :class:`ServiceProcess` allow by default.
DEFAULT_WAIT = 30.0

#: The environment variable that marks every process of one :class:`ServiceProcess`
#: (its value is unique to that service).
MARKER_VARIABLE = "GRACEFUL_TEST_SERVICE"

#: The directory that holds this ``graceful`` package; a service started here
#: imports the same graceful as the process that starts it.
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


class ServiceProcess:
    """A service (usually a graceful supervisor) started in a fresh process group,
    its output (stdout and stderr together) read line by line as it arrives.

    Use it as a context manager, or call :meth:`close` in a ``finally``: that kills
    and reaps every process the service started.
    """

    def __init__(
        self,
        script: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] | None = None,
        cwd: Path | None = None,
        module: str | None = None,
        stdin_script: bool = False,
        pass_fds: Sequence[int] = (),
        wrapper: Sequence[str] = (),
        on_line: Callable[[str], None] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        """Start ``python script ARGS`` now, in ``cwd`` (default: the script's
        directory), and return without waiting for anything. A relative ``script``
        is relative to ``cwd`` if that is given, else to this process's working
        directory.

        ``module`` runs ``python -m module ARGS`` instead (``script`` then only sets
        the default ``cwd``); ``stdin_script`` feeds the script to ``python -`` on
        stdin. ``wrapper`` is a command to run it behind (``systemd-socket-activate
        ...``, ``unshare ...``). ``env`` is added to this process's environment,
        with the marker variable and a ``PYTHONPATH`` under which the service
        imports this same graceful. ``pass_fds`` stay open in the service.
        ``on_line`` is called with each log line (without its newline) as it is
        read, from the reader thread. ``command`` runs that command (then ``ARGS``)
        instead of ``python script``, as a user's shell or service manager would
        (a console script, another interpreter): ``script`` then only sets the
        default ``cwd``.

        Raises what :class:`subprocess.Popen` raises if the command cannot start.
        """
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = _pythonpath(full_env.get("PYTHONPATH"))
        full_env.update(env or {})
        token = uuid.uuid4().hex
        #: ``NAME=value`` in the environment of every process of this service
        self.marker = f"{MARKER_VARIABLE}={token}"
        full_env[MARKER_VARIABLE] = token
        self.script = script
        if cwd is None:
            # the service runs in the script's directory: name the script absolutely
            # (keeping symlinks, as a user's command line does)
            script = Path(os.path.abspath(script))
            cwd = script.parent
        if command is not None:
            command = list(command)
        elif module is not None:
            command = [sys.executable, "-m", module]
        elif stdin_script:
            command = [sys.executable, "-"]
        else:
            command = [sys.executable, str(script)]
        self._on_line = on_line
        #: every log line so far, without its newline, in order; the reader thread
        #: only ever appends to it
        self.lines: list[str] = []
        self._changed = threading.Condition()
        stdin = script.open("rb") if stdin_script else None
        try:
            self.proc = subprocess.Popen(
                [*wrapper, *command, *(args or [])],
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=str(cwd),
                start_new_session=True,
                text=True,
                pass_fds=tuple(pass_fds),
            )
        finally:
            if stdin is not None:
                stdin.close()
        #: the PID of the started command (the wrapper's, if there is one)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            if self._on_line is not None:
                self._on_line(line)
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        """Every log line so far, joined with newlines."""
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(
        self, pattern: str, *, after: int = 0, timeout: float = DEFAULT_WAIT
    ) -> re.Match[str]:
        """Block until a log line from index ``after`` on matches the regular
        expression ``pattern``; return the first match.

        Raises AssertionError, with the whole output, if no line matches within
        ``timeout`` seconds or once the service has exited and its output has been
        read to the end.
        """
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
        """The index of the next log line: pass it as ``wait_for(after=...)`` to
        wait only for lines logged after this call."""
        with self._changed:
            return len(self.lines)

    def address(self, index: int = 0, *, timeout: float = DEFAULT_WAIT) -> str:
        """The ``index``-th address from the supervisor's ``listening on ADDRESS``
        log lines, once the first such line is there (AssertionError if not within
        ``timeout``; IndexError if there are fewer addresses)."""
        self.wait_for(r"listening on ", timeout=timeout)
        with self._changed:
            lines = list(self.lines)
        found = [
            m.group(1) for m in (re.search(r"listening on (\S+)", line) for line in lines) if m
        ]
        return found[index]

    def wait_serving(
        self, generation: int, *, after: int = 0, timeout: float = DEFAULT_WAIT
    ) -> None:
        """Block until the supervisor logs that ``generation`` is serving (see
        :meth:`wait_for` for ``after``, ``timeout`` and what it raises)."""
        self.wait_for(rf"generation {generation} is serving", after=after, timeout=timeout)

    def send(self, signum: int) -> None:
        """Send ``signum`` to the started process (the supervisor, unless there is
        a wrapper). Raises ProcessLookupError once it has been reaped."""
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = DEFAULT_WAIT) -> int:
        """Block until the started process exits, then until its output has been
        read (up to 5 s more); return its exit code (negative: killed by that
        signal). Raises AssertionError, with the output, if it still runs after
        ``timeout`` seconds."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"supervisor still running after {timeout}s:\n{self.output}"
            ) from None
        self._reader.join(5)
        return code

    def children(self) -> list[int]:
        """PIDs of the started process's children, zombies included; [] once it
        has gone."""
        return children_of(self.pid)

    def worker_pids(self) -> list[int]:
        """The started process's live children that are graceful workers (see
        :func:`is_worker`): not multiprocess's resource tracker, not the orphan
        guard."""
        return [pid for pid in self.children() if is_worker(pid)]

    def standby_pids(self) -> list[int]:
        """The started process's live children that are warm standbys (see
        :func:`is_standby`): warm, or still warming up."""
        return [pid for pid in self.children() if is_standby(pid)]

    def warm_standby(self, timeout: float = DEFAULT_WAIT) -> int:
        """Block until the service has one standby and it is warm (it has imported
        everything and named itself); its PID. AssertionError after ``timeout``."""
        found: list[int] = []

        def warm() -> bool:
            found[:] = self.standby_pids()
            return len(found) == 1 and process_name(found[0]) == STANDBY_NAME

        poll_until(warm, timeout, "a warm standby")
        return found[0]

    def processes(self) -> list[int]:
        """Every live (not zombie) process this service started, the started
        process included, wherever it now sits in the process tree."""
        return marked_processes(self.marker)

    def close(self) -> None:
        """Kill every process of the service with SIGKILL (the started process
        first, so that it starts nothing new) and reap them; close the output.

        Waits at most about 30 s in all; safe to call more than once, and after
        the service has exited.
        """
        killed: set[int] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # Popen.kill() signals only a process it has not reaped yet, so never
            # a reused PID.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self.proc.kill()
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


#: ``with running(script, ...) as svc:`` starts a :class:`ServiceProcess` (same
#: arguments) and :meth:`~ServiceProcess.close`\ s it on the way out, whether the
#: block raised or not: a ServiceProcess is its own context manager.
running = ServiceProcess


def poll_until(
    predicate: Callable[[], object], timeout: float, what: str, *, interval: float = 0.05
) -> None:
    """Call ``predicate`` until it returns something true, sleeping ``interval``
    seconds between calls (0: poll without sleeping).

    Raises AssertionError naming ``what`` ("timed out after 10s waiting for
    {what}") if it has not within ``timeout`` seconds. Exceptions from
    ``predicate`` propagate.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if interval > 0:
            time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def marked_processes(marker: str) -> list[int]:
    """PIDs of the live (not zombie) processes whose environment holds
    ``marker`` (``NAME=value``), among those whose environment this process may
    read."""
    name, _, value = marker.partition("=")
    found = []
    for process in psutil.process_iter(["environ"]):
        environ = process.info["environ"]  # None: a zombie, or not ours to read
        if environ is not None and environ.get(name) == value and is_alive(process.pid):
            found.append(process.pid)
    return found


def process_state(pid: int) -> str | None:
    """The state of process ``pid`` as psutil names it (``psutil.STATUS_ZOMBIE``,
    ``psutil.STATUS_SLEEPING``, ...), or None if there is no such process (it has
    been reaped)."""
    try:
        state: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return None
    return state


def is_alive(pid: int) -> bool:
    """True if process ``pid`` exists and is not a zombie."""
    return process_state(pid) not in (None, psutil.STATUS_ZOMBIE)


def children_of(pid: int) -> list[int]:
    """PIDs of the children of process ``pid``, zombies included; [] if it has
    gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def zombie_children(pid: int) -> list[int]:
    """PIDs of the children of process ``pid`` that have exited and that it has not
    reaped yet."""
    return [child for child in children_of(pid) if process_state(child) == psutil.STATUS_ZOMBIE]


def is_worker(pid: int) -> bool:
    """True if process ``pid`` is alive and is a graceful worker, or a template
    (``preload``): started by multiprocess's spawn method (how graceful starts
    them, or forked from a process that was) and not a warm standby (which is not a
    worker until it is given work; see :func:`is_standby`)."""
    try:
        command = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False  # gone (or a zombie, which has no command line), or not ours
    return any("spawn_main" in arg for arg in command) and not is_standby(pid)


def is_standby(pid: int) -> bool:
    """True if process ``pid`` is alive and is a warm standby (see
    :mod:`graceful.spawn.standby`), warm or still warming up, and not given work yet."""
    name = process_name(pid)
    if name == STANDBY_NAME:
        return True
    if name in ("", WORKER_NAME, TEMPLATE_NAME):
        return False
    try:  # not named yet: its environment says what it was started as
        return STANDBY_VARIABLE in psutil.Process(pid).environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def process_name(pid: int) -> str:
    """The name of process ``pid`` as ``/proc/PID/comm`` has it (``graceful-worker``,
    ``graceful-warm``, ``graceful-tmpl``, ...); empty if there is no such process."""
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def listening_socket(pid: int, port: int) -> str:
    """How ``/proc`` names the TCP socket that process ``pid`` listens on at ``port``
    (``socket:[INODE]``): the same in every process that holds a copy of it.

    Raises:
        StopIteration: if ``pid`` listens on no such port.
    """
    fd = next(
        connection.fd
        for connection in psutil.Process(pid).net_connections("tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    )
    return os.readlink(f"/proc/{pid}/fd/{fd}")


def holds_socket(pid: int, socket_name: str) -> bool:
    """True if process ``pid`` has a descriptor on the socket ``/proc`` names
    ``socket_name`` (see :func:`listening_socket`); False once it has gone. Reads
    ``/proc`` only: fast enough to sample many processes often."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == socket_name:
                return True
        except OSError:
            continue
    return False


def reap(pids: Collection[int], timeout: float = 10.0) -> None:
    """Wait until none of ``pids`` is alive, reaping those that are (now) children
    of this process. Gives up silently after ``timeout`` seconds: check with
    :func:`is_alive` where it matters."""
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


def _pythonpath(existing: str | None) -> str:
    """``existing`` with the directory of this graceful in front, unless that is a
    site-packages directory (which the same interpreter finds anyway, after the
    standard library)."""
    entries = [entry for entry in (existing or "").split(os.pathsep) if entry]
    site_dirs = {
        Path(path).resolve() for path in [*site.getsitepackages(), site.getusersitepackages()]
    }
    if _PACKAGE_PARENT not in site_dirs:
        entries.insert(0, str(_PACKAGE_PARENT))
    return os.pathsep.join(entries)
