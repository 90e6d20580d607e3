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
import importlib.abc
import os
import socket
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import anyio

from graceful.base.log import logger
from graceful.child import guard as program
from graceful.spawn.spawner import WorkerProcess
from graceful.wire.fds import send_with

if TYPE_CHECKING:
    import subprocess


class OrphanGuard:
    """The supervisor's handle on its guard process."""

    def __init__(self, process: subprocess.Popen[bytes], channel: socket.socket) -> None:
        self._process = process
        self._channel = channel
        self.pidfd: int | None = program.pidfd_of(process.pid)
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
        kills a guard that reads nothing for a long time (see :class:`GuardKeeper`)."""
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
                send_with(self._channel, str(pid).encode(), [pidfd])
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


#: Seconds an orphan guard may leave what it is sent unread before it is replaced.
GUARD_STALL = 10.0

#: Seconds between two tries to start an orphan guard after one could not start.
GUARD_RETRY = 5.0


class GuardKeeper:
    """Keeps one orphan guard for the supervisor's life and hands it every worker.

    ``start`` starts a guard (None where none can run); ``live`` lists the workers
    alive now, each handed to a new guard. Nothing here blocks the supervisor: a
    guard that reads nothing for :data:`GUARD_STALL` seconds is killed and
    replaced, and one that cannot start is tried again every :data:`GUARD_RETRY`
    seconds.
    """

    def __init__(
        self,
        start: Callable[[], OrphanGuard | None] | None,
        live: Callable[[], Iterable[WorkerProcess]],
    ) -> None:
        self._start = start
        self._live = live
        self.guard: OrphanGuard | None = None
        #: set when the guard has workers waiting to be handed over
        self._has_pending: anyio.Event | None = None

    def start(self) -> None:
        """Start the first guard (before any worker)."""
        if self._start is not None:
            self.guard = self._start()
            if self.guard is None:
                logger.debug("no orphan guard: pidfds are not available")

    @property
    def pid(self) -> int | None:
        return self.guard.pid if self.guard is not None else None

    async def keep(self) -> None:
        """Start a new guard whenever the current one dies (someone killed it, or it
        read nothing for :data:`GUARD_STALL` seconds), and hand it every live worker.
        Runs until cancelled."""
        if self._start is None or self.guard is None:
            return  # none here (no pidfds)
        while True:
            guard = self.guard
            if guard is None or guard.pidfd is None:
                await anyio.sleep(GUARD_RETRY)
                self.guard = self._start()
                if self.guard is not None:
                    logger.warning("started a new orphan guard (PID %d)", self.guard.pid)
                    self._hand_every_worker()
                continue
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._flush, guard)
                await anyio.wait_readable(guard.pidfd)
                tasks.cancel_scope.cancel()
            pid, status = guard.pid, guard.reap()
            self.guard = self._start()
            logger.warning(
                "the orphan guard (PID %d) exited with status %s; %s",
                pid,
                status,
                "started a new one"
                if self.guard is not None
                else f"could not start a new one (trying again every {GUARD_RETRY:g}s)",
            )
            self._hand_every_worker()

    def watch(self, worker: WorkerProcess) -> None:
        """Hand ``worker`` to the guard (never blocks)."""
        if self.guard is not None and worker.exit_fd is not None:
            self.guard.watch(worker.pid, worker.exit_fd)
            if self.guard.has_pending and self._has_pending is not None:
                self._has_pending.set()

    def close(self) -> None:
        """Let the guard go (every worker has been reaped) and reap it."""
        if self.guard is not None:
            self.guard.close()

    def _hand_every_worker(self) -> None:
        for worker in self._live():
            self.watch(worker)

    async def _flush(self, guard: OrphanGuard) -> None:
        """Hand ``guard`` what its socket could not take at once, as it reads; kill it
        if it reads nothing for :data:`GUARD_STALL` seconds."""
        while True:
            self._has_pending = anyio.Event()
            if not guard.has_pending:
                await self._has_pending.wait()
            while guard.has_pending:
                with anyio.move_on_after(GUARD_STALL) as waited:
                    await anyio.wait_writable(guard.channel)
                if waited.cancelled_caught:
                    logger.warning(
                        "the orphan guard (PID %d) read nothing for %gs; killing it, a new "
                        "one takes over",
                        guard.pid,
                        GUARD_STALL,
                    )
                    guard.kill()
                    return
                guard.flush()


def _own_program() -> list[str] | None:
    """How ``python -I -S`` runs the guard's program (:mod:`graceful.child.guard`):
    by its path (a clean line in ``ps``), or
    as ``-c`` with its source where it is not a plain file (a zip archive), no
    longer there (a pruned release), or another graceful's now: the source is read
    when the first guard starts, and is the one run for the supervisor's life."""
    global _source  # noqa: PLW0603 - read once, for the supervisor's life
    path = program.__file__
    if _source is None:
        loader = program.__spec__.loader if program.__spec__ is not None else None
        try:
            if isinstance(loader, importlib.abc.InspectLoader):
                _source = loader.get_source(program.__name__)
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
