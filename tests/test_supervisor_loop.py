"""The supervisor's loop through its process seam: stand-in workers, no processes.

:class:`graceful.supervisor.loop.SupervisorLoop` asks a
:class:`graceful.spawn.spawner.ProcessFactory` for workers and from then on uses only
their control channel, exit descriptor, kill and reap. Here the factory hands out
stand-ins whose channel is a real socketpair and whose exit descriptor is a real
pipe, each driven by a small script, so that the loop's own edges (a factory that
raises, last words before an exit, a watcher that fails, a stop while spawns
wait) are checked exactly, in milliseconds. The integration tests do the same with
real processes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import pytest

from graceful.core.machine import (
    ReadyTimeout,
    ReloadRequested,
    Settings,
    SpawnWorker,
    StopRequested,
)
from graceful.spawn import guard as orphan_guard
from graceful.spawn.guard import OrphanGuard
from graceful.spawn.spawner import Reaped, WorkerSetup
from graceful.supervisor.loop import SupervisorLoop
from graceful.wire import messages as _wire
from graceful.wire.vitals import VitalsPage

Script = Callable[["StandIn"], Coroutine[Any, Any, None]]


class StandIn:
    """A worker without a process: a control channel, an exit pipe, a script."""

    def __init__(self, spawn: SpawnWorker) -> None:
        self.serial = spawn.serial
        self.generation = spawn.generation
        self.worker_id = spawn.worker_id
        self.release: str | None = None
        self.says_hello = False
        self.vitals: VitalsPage | None = None
        ours, theirs = socket.socketpair()
        self.channel = _wire.ControlChannel(ours)
        #: the worker's own end
        self.peer = _wire.ControlChannel(theirs)
        self._exit_read, self._exit_write = os.pipe()
        self.exitcode: int | None = None
        self.exited = False
        self.killed = False
        self.reaped = False
        self.fail_to_reap = False
        self.listeners_handed = 0

    @property
    def pid(self) -> int:
        return 4_000_000 + self.serial  # never a real process: nothing signals it

    @property
    def exit_fd(self) -> int | None:
        return self._exit_read

    def has_exited(self) -> bool:
        return self.exited

    def exit(self, code: int) -> None:
        if self.exited:
            return
        self.exited, self.exitcode = True, code
        self.peer.close()
        os.write(self._exit_write, b"x")

    def kill(self) -> None:
        self.killed = True
        self.exit(-9)

    def hand_listeners(self) -> None:
        self.listeners_handed += 1

    def reap(self) -> Reaped:
        assert self.exited, "reaped before it exited"
        if self.fail_to_reap:
            raise OSError(errno.EIO, "injected")
        self._release()
        return Reaped(self.exitcode)

    def abandon(self) -> int | None:
        self.exit(-9)
        self._release()
        return self.exitcode

    def _release(self) -> None:
        if not self.reaped:
            self.reaped = True
            self.channel.close()
            os.close(self._exit_read)
            os.close(self._exit_write)

    # -- what scripts do --------------------------------------------------------------

    def send(self, message: _wire.Message) -> None:
        self.peer.send(message)

    async def shutdown_asked(self) -> None:
        while True:
            await anyio.wait_readable(self.peer.fileno())
            received = self.peer.receive_available()
            if any(isinstance(item, _wire.Shutdown) for item in received):
                return
            if any(isinstance(item, _wire.PeerGone) for item in received):
                return


class StandInFactory:
    """Starts stand-ins, each running the script ``scripts(spawn)`` chooses."""

    def __init__(self, scripts: Callable[[SpawnWorker], Script | Exception]) -> None:
        self.scripts = scripts
        self.started: list[StandIn] = []
        self.tasks: anyio.abc.TaskGroup | None = None
        self.ended: list[int] = []
        self.closed = False
        #: set: each start waits for it, and cannot be cancelled meanwhile
        self.uninterruptible: anyio.Event | None = None
        #: how many workers had been started at each call of quiet()
        self.quiet_at: list[int] = []

    async def start(self, spawn: SpawnWorker, setup: WorkerSetup) -> StandIn:
        if self.uninterruptible is not None:
            # as a template's fork: once asked, the start runs to its end
            with anyio.CancelScope(shield=True):
                await self.uninterruptible.wait()
        script = self.scripts(spawn)
        if isinstance(script, Exception):
            raise script
        worker = StandIn(spawn)
        self.started.append(worker)
        assert self.tasks is not None
        self.tasks.start_soon(script, worker)
        return worker

    def generation_ended(self, number: int) -> None:
        self.ended.append(number)

    async def run(self) -> None:
        pass

    def set_quiet(self, quiet: bool) -> None:
        if quiet:
            self.quiet_at.append(len(self.started))

    def standby_status(self) -> dict[str, Any] | None:
        return None

    def helper_pids(self) -> set[int]:
        return set()

    def collect_exited(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


async def serve_until_shutdown(worker: StandIn) -> None:
    worker.send(_wire.Ready())
    await worker.shutdown_asked()
    worker.exit(0)


def run(loop: SupervisorLoop, factory: StandInFactory, drive: Callable[[], Awaitable[None]]) -> int:
    """Run ``loop`` with ``drive`` beside it; return the loop's exit status."""

    async def main() -> int:
        code = -1
        async with anyio.create_task_group() as tasks:
            factory.tasks = tasks

            async def supervise() -> None:
                nonlocal code
                code = await loop.run()
                tasks.cancel_scope.cancel()

            with anyio.fail_after(20):
                tasks.start_soon(supervise)
                await drive()
                await anyio.sleep_forever()
        return code

    return anyio.run(main)


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await anyio.sleep(0.005)


def reload_once_then_stop(loop: SupervisorLoop) -> Callable[[], Awaitable[None]]:
    """A drive: once generation 1 serves, one reload; once it is over, a stop."""

    async def drive() -> None:
        await until(lambda: loop.machine.serving == 1)
        loop.events_in.send_nowait(ReloadRequested())
        await until(lambda: loop.machine.last_reload is not None)
        loop.events_in.send_nowait(StopRequested())

    return drive


def make_loop(factory: StandInFactory, workers: int = 2) -> SupervisorLoop:
    return SupervisorLoop(
        Settings(workers=workers, ready_timeout=5.0, drain_timeout=5.0, kill_grace=0.5),
        factory,
        follow_signals=False,
    )


def test_a_generation_serves_and_stops_cleanly() -> None:
    factory = StandInFactory(lambda spawn: serve_until_shutdown)
    loop = make_loop(factory)

    async def drive() -> None:
        await until(lambda: loop.machine.serving == 1)
        loop.events_in.send_nowait(StopRequested())

    assert run(loop, factory, drive) == 0
    assert [w.generation for w in factory.started] == [1, 1]
    assert factory.ended == [1]
    assert factory.closed
    assert all(w.reaped and not w.killed and w.exitcode == 0 for w in factory.started)
    assert loop.watcher.live == {}


def test_a_factory_that_fails_is_a_failed_reload_and_the_old_generation_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def scripts(spawn: SpawnWorker) -> Script | Exception:
        if spawn.generation == 2 and spawn.worker_id == 1:
            return OSError(errno.EMFILE, "Too many open files")
        return serve_until_shutdown

    factory = StandInFactory(scripts)
    loop = make_loop(factory)

    async def drive() -> None:
        await until(lambda: loop.machine.serving == 1)
        loop.events_in.send_nowait(ReloadRequested())
        await until(lambda: loop.machine.last_reload is not None)
        assert loop.machine.serving == 1
        loop.events_in.send_nowait(StopRequested())

    with caplog.at_level(logging.INFO, logger="graceful"):
        assert run(loop, factory, drive) == 0
    assert str(loop.machine.last_reload) == (
        "generation 2 failed: worker 1: could not start a worker: "
        "OSError: [Errno 24] Too many open files"
    )
    # generation 2's worker that did start was drained, not killed
    [sibling] = [w for w in factory.started if w.generation == 2]
    assert sibling.exitcode == 0
    assert not sibling.killed
    assert all(w.reaped for w in factory.started)


def test_a_cause_written_just_before_the_exit_names_the_failure() -> None:
    async def crash(worker: StandIn) -> None:
        worker.send(_wire.Failed("RuntimeError: boom (app.py, line 3)"))
        worker.exit(1)

    factory = StandInFactory(lambda spawn: crash if spawn.generation == 2 else serve_until_shutdown)
    loop = make_loop(factory, workers=1)

    drive = reload_once_then_stop(loop)
    assert run(loop, factory, drive) == 0
    assert str(loop.machine.last_reload) == (
        "generation 2 failed: worker 0: RuntimeError: boom (app.py, line 3)"
    )


def test_a_worker_that_writes_junk_is_killed_through_the_seam() -> None:
    async def junk(worker: StandIn) -> None:
        worker.peer._socket.sendall(b"GET / HTTP/1.1\r\n")  # not a control message
        await anyio.sleep_forever()

    factory = StandInFactory(lambda spawn: junk if spawn.generation == 2 else serve_until_shutdown)
    loop = make_loop(factory, workers=1)

    drive = reload_once_then_stop(loop)
    assert run(loop, factory, drive) == 0
    [liar] = [w for w in factory.started if w.generation == 2]
    assert liar.killed
    assert liar.reaped
    assert loop.machine.last_reload is not None
    assert "sent a malformed control message" in str(loop.machine.last_reload)


def test_a_watcher_that_fails_costs_only_its_worker(caplog: pytest.LogCaptureFixture) -> None:
    async def fail_to_reap_then_exit(worker: StandIn) -> None:
        worker.fail_to_reap = True
        worker.send(_wire.Ready())
        await worker.shutdown_asked()
        worker.exit(0)

    factory = StandInFactory(
        lambda spawn: fail_to_reap_then_exit if spawn.generation == 1 else serve_until_shutdown
    )
    loop = make_loop(factory, workers=1)

    async def drive() -> None:
        await until(lambda: loop.machine.serving == 1)
        loop.events_in.send_nowait(ReloadRequested())
        await until(lambda: loop.machine.serving == 2 and not loop.watcher.live.get(1))
        loop.events_in.send_nowait(StopRequested())

    with caplog.at_level(logging.INFO, logger="graceful"):
        assert run(loop, factory, drive) == 0
    assert "could not watch generation 1 worker 0; killing it" in caplog.text
    assert all(w.reaped for w in factory.started)


def test_a_stop_while_spawns_wait_for_the_bytecode_check_starts_nothing() -> None:
    release = anyio.Event()

    class SlowGate:
        async def environment_for(self, generation: int) -> dict[str, str]:
            await release.wait()
            return {}

    factory = StandInFactory(lambda spawn: serve_until_shutdown)
    loop = make_loop(factory)
    loop.bytecode = SlowGate()  # type: ignore[assignment]

    async def drive() -> None:
        await until(lambda: len(loop._spawning) == 2)
        loop.events_in.send_nowait(StopRequested())
        await until(lambda: loop.machine.stopping.value == "draining")
        release.set()

    # a stop asked for while generation 1 starts is a clean stop
    assert run(loop, factory, drive) == 0
    assert factory.started == []


def test_a_worker_called_off_during_a_start_that_cannot_be_interrupted_is_killed() -> None:
    async def ready_late(worker: StandIn) -> None:
        await anyio.sleep(0.2)
        if not worker.exited:
            worker.send(_wire.Ready())
            await worker.shutdown_asked()
            worker.exit(0)

    factory = StandInFactory(lambda spawn: ready_late)
    loop = SupervisorLoop(
        Settings(workers=1, ready_timeout=0.2, drain_timeout=5.0, kill_grace=0.5),
        factory,
        follow_signals=False,
    )

    async def drive() -> None:
        factory.uninterruptible = anyio.Event()
        # ready_timeout kills the worker while its start cannot be interrupted (as
        # a template's fork); the start ends all the same
        await until(lambda: loop.machine.stop_announced)
        factory.uninterruptible.set()

    assert run(loop, factory, drive) == 1  # generation 1 failed to start
    [worker] = factory.started
    assert worker.killed  # not left running (and serving) unknown to the supervisor
    assert worker.reaped
    assert loop.watcher.live == {}


def test_the_factory_hears_the_service_is_quiet_only_while_a_generation_serves_alone() -> None:
    """A standby warms up (and costs a core) only when nothing starts: never while
    a generation's workers start, nor once the stop is asked for."""
    gate = anyio.Event()

    async def slow_start(worker: StandIn) -> None:
        await gate.wait()
        await serve_until_shutdown(worker)

    factory = StandInFactory(
        lambda spawn: slow_start if spawn.generation == 2 else serve_until_shutdown
    )
    loop = make_loop(factory, workers=2)
    quiet_while_starting: list[int] = []

    async def drive() -> None:
        await until(lambda: loop.machine.serving == 1)
        await until(lambda: bool(factory.quiet_at))
        assert factory.quiet_at[0] == 2  # once generation 1's two workers were ready
        before = len(factory.quiet_at)
        loop.events_in.send_nowait(ReloadRequested())
        await until(lambda: len(factory.started) == 4)
        # an event while generation 2 starts (a stale timer, which changes nothing)
        loop.events_in.send_nowait(ReadyTimeout(999))
        await anyio.wait_all_tasks_blocked()  # the loop has handled it
        quiet_while_starting.extend(factory.quiet_at[before:])
        gate.set()
        await until(lambda: loop.machine.serving == 2)
        await until(lambda: len(factory.quiet_at) > before)
        stop_at = len(factory.quiet_at)
        loop.events_in.send_nowait(StopRequested())
        await until(lambda: loop.machine.stop_announced)
        assert len(factory.quiet_at) == stop_at

    assert run(loop, factory, drive) == 0
    assert quiet_while_starting == []


def test_the_supervisors_sends_to_a_worker_never_wait() -> None:
    """A worker that does not read its control channel: a send fails at once (and the
    loop kills the worker, see SupervisorLoop._tell); one that is gone: False."""
    ours, theirs = socket.socketpair()
    channel = _wire.ControlChannel(ours)
    try:
        with pytest.raises(BlockingIOError):  # noqa: PT012 - fills the buffer first
            for _ in range(1_000_000):
                channel.send_nowait(_wire.Park(1.0))
        theirs.close()
        assert channel.send_nowait(_wire.Resume()) is False
    finally:
        channel.close()
        theirs.close()


def test_a_guard_that_reads_nothing_is_replaced_and_the_loop_never_waits_for_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real orphan guard, stopped, with a small socket: the workers it cannot take
    wait in the supervisor, the loop goes on (reloads serve), and after GUARD_STALL
    the guard is killed and a new one is handed every live worker."""
    monkeypatch.setattr(orphan_guard, "GUARD_STALL", 0.5)
    guards: list[OrphanGuard] = []

    def start_guard() -> OrphanGuard | None:
        guard = OrphanGuard.start(drain_timeout=1.0, kill_grace=1.0)
        if guard is not None:
            if not guards:  # the first one: stopped, and its socket as small as can be
                guard.channel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
                os.kill(guard.pid, signal.SIGSTOP)
            guards.append(guard)
        return guard

    factory = StandInFactory(lambda spawn: serve_until_shutdown)
    loop = SupervisorLoop(
        Settings(workers=2, ready_timeout=5.0, drain_timeout=5.0, kill_grace=0.5),
        factory,
        follow_signals=False,
        start_guard=start_guard,
    )

    async def drive() -> None:
        await until(lambda: loop.machine.serving == 1)
        for generation in range(2, 12):  # far more workers than the stopped guard takes
            loop.events_in.send_nowait(ReloadRequested())

            def serving(generation: int = generation) -> bool:
                return loop.machine.serving == generation

            await until(serving)
        await until(lambda: len(guards) == 2)
        loop.events_in.send_nowait(StopRequested())

    try:
        assert run(loop, factory, drive) == 0
    finally:
        for guard in guards:
            with contextlib.suppress(ProcessLookupError):
                os.kill(guard.pid, signal.SIGKILL)
    assert "read nothing for 0.5s; killing it" in caplog.text
