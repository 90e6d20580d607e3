"""What happens to the workers of a supervisor that dies: the orphan guard.

Normally a worker hears of its supervisor's death within milliseconds (its control
channel reaches end-of-file), stops accepting, drains, and exits. Three things can
defeat that: an event loop that never runs again (a handler stuck in a blocking
call, or in C code that holds the GIL, where not even another thread of the worker
can run), a worker still importing the main script, and the processes a worker
started, which no supervisor is left to stop when the worker exits.

So each supervisor starts one guard: a small separate interpreter (``python -I -S``
running this file, which imports nothing but the standard library; about 6 MB). It
holds none of the service's descriptors and sits in a process group of its own.
The supervisor hands it a pidfd for each worker it starts, over a socket pair
(:class:`OrphanGuard`), and starts a new guard if this one dies. The guard waits
for that socket to reach end-of-file:

* after a clean stop every worker has exited: the guard exits;
* after the supervisor died, each worker still alive gets ``drain_timeout +
  kill_grace`` seconds to exit by itself, then it is SIGKILLed (through its pidfd,
  so even a worker that has no process group of its own yet is reached), with its
  process group if it leads one. What a worker left in its group, whether it
  exited just now or in the ``kill_grace`` seconds before the supervisor died (when
  the supervisor was still sweeping it), gets SIGTERM, then SIGKILL ``kill_grace``
  seconds later.

A group's number can be reused once its leader has been reaped and its last member
has gone, so the guard never signals a group by its number alone. It lists the
group's members in ``/proc``, keeps those that started before the worker exited
(a process that reused the number started later), opens a pidfd for each, checks
that it is still the process it listed, and signals that pidfd.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

# --- the supervisor's side --------------------------------------------------------------


class OrphanGuard:
    """The supervisor's handle on its guard process."""

    def __init__(self, process: subprocess.Popen[bytes], channel: socket.socket) -> None:
        self._process = process
        self._channel = channel
        self.pidfd: int | None = _pidfd(process.pid)
        #: workers not handed over yet (the socket was full), with a duplicate of
        #: each pidfd, in order
        self._pending: list[tuple[int, int]] = []

    @classmethod
    def start(cls, drain_timeout: float, kill_grace: float) -> OrphanGuard | None:
        """Start a guard, or return None where it cannot work (no pidfds, or no
        source to run)."""
        import subprocess  # noqa: PLC0415 - the guard itself does not need it

        program = _own_program()
        if program is None or not hasattr(os, "pidfd_open"):
            return None
        # SOCK_SEQPACKET: one message per worker, never merged; non-blocking on the
        # supervisor's side (see watch)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        try:
            process = subprocess.Popen(
                [_interpreter(), "-I", "-S", *program, str(drain_timeout), str(kill_grace)],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                close_fds=True,
                process_group=0,
                restore_signals=True,
            )
        except OSError:
            ours.close()
            return None
        finally:
            theirs.close()
        return cls(process, ours)

    @property
    def pid(self) -> int:
        return self._process.pid

    def watch(self, pid: int, pidfd: int) -> None:
        """Hand the guard worker ``pid`` (its pidfd is duplicated into the guard).

        Never blocks: what the socket cannot take now (a guard just started, and not
        reading yet, is handed every live worker at once) waits, in order, for
        :meth:`flush`; the supervisor's loop flushes it as the socket has room, and
        kills a guard that reads nothing for a long time (see ``_keep_guard``)."""
        with contextlib.suppress(OSError):  # (out of descriptors: not guarded)
            self._pending.append((pid, os.dup(pidfd)))
        self.flush()

    @property
    def has_pending(self) -> bool:
        """Some workers wait to be handed over (see :meth:`watch`)."""
        return bool(self._pending)

    @property
    def channel(self) -> socket.socket:
        """The supervisor's end of the guard's socket (to wait until it has room)."""
        return self._channel

    def flush(self) -> None:
        """Hand over what waits, in order, until the socket is full again."""
        while self._pending:
            pid, pidfd = self._pending[0]
            try:
                socket.send_fds(self._channel, [str(pid).encode()], [pidfd])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                pass  # it has exited: its successor is handed every live worker
            self._pending.pop(0)
            os.close(pidfd)

    def kill(self) -> None:
        """SIGKILL the guard (it is reaped by :meth:`reap`)."""
        with contextlib.suppress(OSError):
            self._process.kill()

    def reap(self) -> int | None:
        """Reap a guard that has exited on its own; its exit status."""
        self._close_descriptors()
        return self._process.wait()

    def close(self, timeout: float = 2.0) -> None:
        """Let the guard go (every worker has been reaped) and reap it."""
        self._close_descriptors()
        try:
            self._process.wait(timeout)
        except Exception:
            import logging  # noqa: PLC0415 - the guard itself runs without it

            logging.getLogger("graceful").warning(
                "the orphan guard did not exit within %gs; killing it", timeout
            )
            self._process.kill()
            self._process.wait()

    def _close_descriptors(self) -> None:
        for _, pidfd in self._pending:
            os.close(pidfd)
        self._pending.clear()
        self._channel.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _own_program() -> list[str] | None:
    """How ``python -I -S`` runs this file: by its path (a clean line in ``ps``), or
    as ``-c`` with its source where it is not a plain file (a zip archive), no
    longer there (a pruned release), or another graceful's now: the source is read
    when the first guard starts, and is the one run for the supervisor's life."""
    global _source  # noqa: PLW0603 - read once, for the supervisor's life
    path = globals().get("__file__")
    if _source is None:
        loader = globals().get("__loader__")
        try:
            _source = loader.get_source(__name__) if loader is not None else None
        except (ImportError, OSError):
            _source = None
    if path and _source is not None and _reads(path) == _source:
        return [path]
    return None if _source is None else ["-c", _source]


def _reads(path: str) -> str | None:
    """What the file at ``path`` holds now (None if it cannot be read): a newer
    graceful installed meanwhile must not run as this supervisor's guard."""
    try:
        with open(path, encoding="utf-8") as source:
            return source.read()
    except (OSError, UnicodeDecodeError):
        return None


#: This module's source, read when the first guard starts.
_source: str | None = None


def _interpreter() -> str:
    """The interpreter to run a guard with: the one this environment is based on
    (outside any release directory, so a restart never needs a pruned one)."""
    base = getattr(sys, "_base_executable", None)
    if base and os.access(base, os.X_OK):
        return str(base)
    return sys.executable


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


# --- the guard's side (runs in its own interpreter) -------------------------------------


class _Worker:
    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        #: when it was seen to exit (boot-time clock ticks), or None while alive
        self.exited_at: int | None = None


def _run_guard(channel: socket.socket, drain_timeout: float, kill_grace: float) -> None:
    for ignored in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(ignored, signal.SIG_IGN)
    alive: dict[int, _Worker] = {}  # by pidfd
    exited: list[_Worker] = []  # while the supervisor may still be sweeping their groups
    while True:
        poller = select.poll()
        poller.register(channel, select.POLLIN)
        for pidfd in alive:
            poller.register(pidfd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(int(kill_grace * 1000) + 1000)}
        now = _ticks()
        for pidfd in ready & alive.keys():
            worker = alive.pop(pidfd)
            worker.exited_at = now
            os.close(pidfd)
            exited.append(worker)
        horizon = now - int((kill_grace + 1) * _TICKS_PER_SECOND)
        exited = [worker for worker in exited if worker.exited_at and worker.exited_at > horizon]
        if channel.fileno() in ready:
            try:
                data, fds, _, _ = socket.recv_fds(channel, 32, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                break  # the supervisor is gone
            for pidfd in fds:
                alive[pidfd] = _Worker(int(data), pidfd)
    _outlive_the_supervisor(list(alive.values()), exited, drain_timeout, kill_grace)


def _outlive_the_supervisor(
    alive: list[_Worker], exited: list[_Worker], drain_timeout: float, kill_grace: float
) -> None:
    deadline = time.monotonic() + drain_timeout + kill_grace
    sweeps: list[tuple[float, list[int]]] = []  # (when to SIGKILL, pidfds of leftovers)
    for worker in exited:
        _add_sweep(sweeps, _start_sweep(worker, kill_grace))
    while alive or sweeps:
        poller = select.poll()
        for worker in alive:
            poller.register(worker.pidfd, select.POLLIN)
        wait = min([deadline, *(when for when, _ in sweeps)]) - time.monotonic()
        ready = {fd for fd, _ in poller.poll(max(0, int(wait * 1000)) + 1)}
        now = time.monotonic()
        for worker in list(alive):
            if worker.pidfd in ready:
                worker.exited_at = _ticks()
                alive.remove(worker)
                _add_sweep(sweeps, _start_sweep(worker, kill_grace))
                os.close(worker.pidfd)
            elif now >= deadline:
                _say(
                    f"the supervisor is gone and worker {worker.pid} did not exit within "
                    f"{drain_timeout + kill_grace:g}s; killing it"
                )
                if _leads_group(worker.pid):  # alive: the number is its own
                    _signal_group(worker.pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(worker.pidfd, signal.SIGKILL)
                alive.remove(worker)
                os.close(worker.pidfd)
        for sweep in list(sweeps):
            when, pidfds = sweep
            if now >= when or not any(_is_alive(pidfd) for pidfd in pidfds):
                for pidfd in pidfds:
                    if _is_alive(pidfd):
                        _say("a worker left processes behind; killing them")
                        with contextlib.suppress(OSError):
                            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    os.close(pidfd)
                sweeps.remove(sweep)


def _add_sweep(sweeps: list[tuple[float, list[int]]], sweep: tuple[float, list[int]]) -> None:
    """Keep ``sweep`` if it has anything to sweep: an empty one would only make the
    guard wait ``kill_grace`` for nothing (and the supervisor's stop with it)."""
    if sweep[1]:
        sweeps.append(sweep)


def _start_sweep(worker: _Worker, kill_grace: float) -> tuple[float, list[int]]:
    """SIGTERM what ``worker`` (exited) left in its process group."""
    pidfds = _leftovers(worker.pid, worker.exited_at or _ticks())
    for pidfd in pidfds:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
    return time.monotonic() + kill_grace, pidfds


def _leftovers(pgid: int, exited_at: int) -> list[int]:
    """Pidfds for the live members of group ``pgid`` that started before ``exited_at``
    (boot-time clock ticks): what the worker left, never a process that reused the
    number later."""
    pidfds = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        identity = _identity(int(entry))
        if identity is None or identity[0] != pgid or identity[1] >= exited_at:
            continue
        pidfd = _pidfd(int(entry))
        if pidfd is None:
            continue
        if _identity(int(entry)) != identity:  # not the process listed any more
            os.close(pidfd)
            continue
        pidfds.append(pidfd)
    return pidfds


def _identity(pid: int) -> tuple[int, int] | None:
    """Process group and start time (boot-time clock ticks) of live process ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[2]), int(fields[19])


_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _ticks() -> int:
    """Now, on the clock /proc's start times use (boot time, in clock ticks)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS_PER_SECOND)


def _is_alive(pidfd: int) -> bool:
    return not select.select([pidfd], [], [], 0)[0]


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signum)


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"graceful[{os.getpid()}] orphan guard: ERROR {text}\n".encode())


if __name__ == "__main__":
    _run_guard(socket.socket(fileno=0), float(sys.argv[1]), float(sys.argv[2]))
