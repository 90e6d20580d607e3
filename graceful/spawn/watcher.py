"""Following started workers until they are reaped.

:class:`Watcher` keeps the live (unreaped) workers. For each one, a task relays
its control messages to the supervisor's event stream as they arrive, waits for
its exit (through its exit descriptor, a pidfd, whatever its children still hold),
then collects what it wrote before it exited, reaps it, and reports the exit last.

What a worker left in its process group gets SIGTERM as the worker is reaped, and
a sweeper task SIGKILLs the group ``kill_grace`` seconds later. (The group's
number cannot be reused while any member is alive; it is checked right before the
signal.)

Nothing a worker does here can stop the supervisor: whatever goes wrong while
watching one worker costs that worker (it is killed and reported exited).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from graceful.base import processes as _processes
from graceful.base.log import logger
from graceful.core.machine import (
    Event,
    WorkerBroken,
    WorkerExited,
    WorkerFailed,
    WorkerMisbehaved,
    WorkerReady,
)
from graceful.spawn.spawner import WorkerProcess
from graceful.wire import messages as _wire


def _silent_exit(worker: WorkerProcess, exitcode: int | None) -> str:
    """Why a worker exited before its first message, as far as the supervisor can tell."""
    where = f" of release {worker.release}" if worker.release is not None else ""
    return (
        f"exited with code {exitcode} before it said which graceful it runs: the "
        f"interpreter{where} could not start graceful's boot entry (graceful missing "
        "from its environment, a broken environment, or a graceful older than the "
        "version contract); its own output above says which"
    )


class Watcher:
    """The live workers and the tasks that follow them (see the module docstring)."""

    def __init__(
        self,
        events: MemoryObjectSendStream[Event],
        kill_grace: float,
        stopping_now: Callable[[], bool],
        progress: Callable[[WorkerProcess, str], None] = lambda worker, phase: None,
        hello: Callable[[WorkerProcess, _wire.Hello], str | None] = lambda worker, hello: None,
        *,
        last_words: Callable[[WorkerProcess], None] = lambda worker: None,
    ) -> None:
        self.events = events
        #: told when a worker reaches a phase of its start (:mod:`graceful.core.timeline`)
        self._progress = progress
        #: told what a worker runs (:mod:`graceful.supervisor.runtimes`); a cause
        #: means it is refused
        self._hello = hello
        #: told of each worker once it has exited, before it is reaped (its vitals
        #: page is still open: :mod:`graceful.supervisor.answers`)
        self._last_words = last_words
        self.kill_grace = kill_grace
        #: True once the service stops at once: sweeps kill without waiting
        self._stopping_now = stopping_now
        #: started and not yet reaped, by serial
        self.live: dict[int, WorkerProcess] = {}
        #: process groups of reaped workers that still have members, being stopped
        self._sweeping: set[int] = set()
        #: the live workers that have said hello
        self._greeted: set[int] = set()

    def describe(self, worker: WorkerProcess) -> str:
        return f"generation {worker.generation} worker {worker.worker_id}"

    async def watch(self, worker: WorkerProcess, tasks: TaskGroup) -> None:
        """Relay ``worker``'s messages until it exits, then reap it and report its exit
        once every message it wrote is in. Sweeps of what it left run in ``tasks``."""
        self.live[worker.serial] = worker
        try:
            async with anyio.create_task_group() as relaying:
                relaying.start_soon(self._relay, worker)
                await self._exit_of(worker)
                relaying.cancel_scope.cancel()
            # What it wrote before it exited is in the channel's buffer by now.
            for item in worker.channel.receive_all_available():
                self._forward(worker, item)
            self._last_words(worker)
            reaped = worker.reap()
            self.live.pop(worker.serial, None)
            exitcode = reaped.exitcode
            if worker.says_hello and worker.serial not in self._greeted and (exitcode or 0) > 0:
                self.events.send_nowait(WorkerFailed(worker.serial, _silent_exit(worker, exitcode)))
            if reaped.left_in_group is not None:
                self._sweep_later(worker, reaped.left_in_group, reaped.left_pids, tasks)
        except Exception:
            logger.exception("could not watch %s; killing it", self.describe(worker))
            self.live.pop(worker.serial, None)
            exitcode = worker.abandon()
        self._greeted.discard(worker.serial)
        self.events.send_nowait(WorkerExited(worker.serial, exitcode))

    async def _exit_of(self, worker: WorkerProcess) -> None:
        if worker.exit_fd is not None:
            await anyio.wait_readable(worker.exit_fd)
            return
        while not worker.has_exited():
            await anyio.sleep(_processes.EXIT_POLL_INTERVAL)

    async def _relay(self, worker: WorkerProcess) -> None:
        while True:
            await anyio.wait_readable(worker.channel.fileno())
            for item in worker.channel.receive_available():
                self._forward(worker, item)
                if isinstance(item, _wire.PeerGone | _wire.ProtocolError):
                    return

    def _forward(self, worker: WorkerProcess, item: _wire.Received) -> None:
        if isinstance(item, _wire.Hello):
            self._greeted.add(worker.serial)
            refused = self._hello(worker, item)
            if refused is not None:
                self.events.send_nowait(WorkerFailed(worker.serial, refused))
                worker.kill()
        elif isinstance(item, _wire.Progress):
            self._progress(worker, item.phase)
        elif isinstance(item, _wire.Ready):
            self._progress(worker, "ready")
            self.events.send_nowait(WorkerReady(worker.serial, item.parkable))
        elif isinstance(item, _wire.Broken):
            self.events.send_nowait(WorkerBroken(worker.serial, item.cause))
        elif isinstance(item, _wire.Failed):
            self.events.send_nowait(WorkerFailed(worker.serial, item.cause))
        elif isinstance(item, _wire.ProtocolError):
            self.events.send_nowait(WorkerMisbehaved(worker.serial, item.detail))

    def _sweep_later(
        self, worker: WorkerProcess, pgid: int, pids: list[int] | None, tasks: TaskGroup
    ) -> None:
        logger.warning(
            "%s left %s behind in its process group; sent SIGTERM, SIGKILL in %gs",
            self.describe(worker),
            _processes.describe_pids(pids),
            self.kill_grace,
        )
        self._sweeping.add(pgid)
        tasks.start_soon(self._sweep, pgid)

    async def _sweep(self, pgid: int) -> None:
        try:
            with anyio.move_on_after(self.kill_grace):
                while _processes.signal_group(pgid, 0) and not self._stopping_now():
                    await anyio.sleep(0.05)
            _processes.signal_group(pgid, signal.SIGKILL)
        finally:
            self._sweeping.discard(pgid)

    async def finish_sweeps(self) -> None:
        """Let the sweepers finish (each within ``kill_grace``), unless the service
        stops at once."""
        with anyio.move_on_after(self.kill_grace + 1):
            while self._sweeping and not self._stopping_now():
                await anyio.sleep(0.05)

    def kill_and_reap_all(self) -> None:
        """Kill every live worker and everything being swept, and reap the workers:
        the last thing a supervisor does, however it ends."""
        for worker in list(self.live.values()):
            with contextlib.suppress(Exception):
                worker.kill()
        for pgid in list(self._sweeping):
            _processes.signal_group(pgid, signal.SIGKILL)
        for worker in list(self.live.values()):
            worker.abandon()
        self.live.clear()
