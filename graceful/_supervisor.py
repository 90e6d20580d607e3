"""The supervisor's edges: signals, worker processes, pipes and timers.

:class:`graceful._decisions.Supervision` decides; this module only carries its
actions out and feeds it events. Every input (a signal, a worker's message, a
worker's exit, a timer) is funnelled into one memory object stream and handled
one at a time, so the decisions never race each other.

Task layout, all inside one task group whose lifetime is :meth:`Supervisor.run`:

* one signal task (SIGHUP, SIGTERM, SIGINT);
* per worker, one watcher that pumps its pipe and waits on its process sentinel;
* per timer, one sleeping task (stale timers fire harmlessly: the state machine
  ignores events about workers that are gone).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import multiprocess
import multiprocess.resource_tracker
from anyio.abc import ObjectReceiveStream, TaskGroup, TaskStatus

from . import _wire
from ._decisions import (
    Announce,
    DrainTimeout,
    Event,
    Exit,
    GenerationServing,
    KillWorker,
    Log,
    Plan,
    ReadyTimeout,
    ReloadRequested,
    ShutdownWorker,
    SpawnWorker,
    Start,
    StartTimer,
    StopRequested,
    Supervision,
    WorkerExited,
    WorkerFailed,
    WorkerReady,
)
from ._entry import (
    EntryRef,
    ReleaseDirectory,
    check_main_guard,
    entry_ref_for,
    main_script_syntax_error,
    one_line,
)
from ._errors import ConfigError
from ._listeners import BoundListener, bind_listeners, format_address
from ._logging import ensure_visible, logger
from ._pidfile import check_pid_file_location, remove_pid_file, write_pid_file
from ._systemd import Notifier, monotonic_usec
from ._worker import WorkerBootstrap, worker_main

if TYPE_CHECKING:
    from ._service import Service

#: Signals a worker must not receive between fork and its own setup: the terminal's
#: Ctrl-C reaches the whole foreground process group, and SIGHUP may too.
_BLOCKED_DURING_SPAWN = {signal.SIGINT, signal.SIGHUP}

#: How long a watcher waits, after a worker process ended, for the last messages it
#: wrote into its pipe.
_LAST_WORDS_TIMEOUT = 1.0


def run_supervisor(
    service: Service[Any],
    caller: types.FrameType | None,
    pid_file: str | os.PathLike[str] | None = None,
) -> int:
    """Supervise ``service`` in this process; return the exit status.

    Configuration errors are logged as one line and give status 2 before anything
    is spawned or left bound.
    """
    ensure_visible("supervisor")
    try:
        entry = entry_ref_for(service, service.function)
        check_main_guard(caller)
        if pid_file is not None:
            check_pid_file_location(pid_file)
        listeners = bind_listeners(service.listen)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    try:
        for listener in listeners:
            logger.info(
                "listening on %s (listen spec %r)", format_address(listener.address), listener.spec
            )
        notifier = Notifier.from_environment()
        supervisor = Supervisor(
            service,
            entry,
            listeners,
            release=ReleaseDirectory.adopt(),
            pid_file=pid_file,
            notifier=notifier,
        )
        try:
            code = anyio.run(supervisor.run, backend="asyncio")
        finally:
            notifier.close()
        logger.info("stopped (exit status %d)", code)
        return code
    finally:
        for listener in listeners:
            listener.close()
        if pid_file is not None:
            remove_pid_file(pid_file)


def stray_zombies(exclude: set[int | None]) -> list[int]:
    """This process's children that have exited (zombies), except ``exclude``."""
    found = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as children:
                pids = [int(pid) for pid in children.read().split()]
        except OSError:
            continue
        for pid in pids:
            if pid in exclude:
                continue
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    text = stat.read()
            except OSError:
                continue
            if text[text.rindex(")") + 2] == "Z":
                found.append(pid)
    return found


@dataclass
class WorkerHandle:
    serial: int
    process: Any  # multiprocess SpawnProcess
    control: Any  # multiprocess Connection
    #: the worker reported why it is exiting (a Failed message)
    reported_cause: bool = False


class Supervisor:
    """Carries out a :class:`Supervision`'s actions with real processes."""

    def __init__(
        self,
        service: Service[Any],
        entry: EntryRef,
        listeners: list[BoundListener],
        *,
        release: ReleaseDirectory,
        pid_file: str | os.PathLike[str] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.service = service
        self.release = release
        self.pid_file = pid_file
        self.notifier = notifier or Notifier(None)
        self.entry = entry
        self.listeners = listeners
        self.machine = Supervision(
            Plan(
                workers=service.workers,
                ready_timeout=service.ready_timeout,
                drain_timeout=service.drain_timeout,
            )
        )
        self.spawn = multiprocess.get_context("spawn")
        self.handles: dict[int, WorkerHandle] = {}
        self.events_in, self.events = anyio.create_memory_object_stream[Event](math.inf)
        self._tasks: TaskGroup | None = None
        #: pending timers by the event they will send
        self._timers: dict[Event, anyio.CancelScope] = {}

    async def run(self) -> int:
        """Run until the state machine says to exit; return its exit status.

        Whatever way this ends (even by an exception or cancellation), every worker
        still alive is killed and reaped before it returns.
        """
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                await tasks.start(self._follow_signals)
                if os.getpid() == 1:
                    await tasks.start(self._reap_orphans)
                code = await self._decide(Start())
                tasks.cancel_scope.cancel()
            return code
        finally:
            self._kill_and_reap_all()

    async def _decide(self, first: Event) -> int:
        event: Event = first
        while True:
            for action in self.machine.handle(event, anyio.current_time()):
                if isinstance(action, Exit):
                    return action.code
                self._carry_out(action)
            event = await self.events.receive()
            self._drop_stale_timers(event)

    def _carry_out(
        self,
        action: SpawnWorker
        | ShutdownWorker
        | KillWorker
        | StartTimer
        | GenerationServing
        | Announce
        | Log,
    ) -> None:
        if isinstance(action, Log):
            logger.log(action.level, "%s", action.message)
        elif isinstance(action, Announce):
            self._notify(action)
        elif isinstance(action, GenerationServing):
            if action.first and self.pid_file is not None:
                try:
                    write_pid_file(self.pid_file)
                except OSError as exc:
                    logger.error("cannot write PID file %s: %s", self.pid_file, exc.strerror)
        elif isinstance(action, SpawnWorker):
            self._spawn_worker(action)
        elif isinstance(action, ShutdownWorker):
            handle = self.handles.get(action.serial)
            if handle is not None:
                _wire.send(handle.control, _wire.Shutdown(action.drain_timeout))
        elif isinstance(action, KillWorker):
            handle = self.handles.get(action.serial)
            if handle is not None:
                handle.process.kill()
        else:
            self._task_group.start_soon(self._timer, action.delay, action.event)

    def _notify(self, announce: Announce) -> None:
        """Tell systemd (if it listens) what the state machine announced."""
        fields: dict[str, str | int] = {}
        if announce.phase == "ready":
            fields["READY"] = 1
        elif announce.phase == "reloading":
            fields["RELOADING"] = 1
            fields["MONOTONIC_USEC"] = monotonic_usec()
        elif announce.phase == "stopping":
            fields["STOPPING"] = 1
        if announce.extend is not None:
            fields["EXTEND_TIMEOUT_USEC"] = int(announce.extend * 1_000_000)
        fields["STATUS"] = announce.status
        self.notifier.send(**fields)

    @property
    def _task_group(self) -> TaskGroup:
        assert self._tasks is not None, "the supervisor is not running"
        return self._tasks

    # -- inputs ---------------------------------------------------------------------

    async def _follow_signals(self, *, task_status: TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    logger.info("SIGHUP: reloading")
                    await self.events_in.send(ReloadRequested())
                else:
                    await self.events_in.send(StopRequested())

    async def _reap_orphans(self, *, task_status: TaskStatus[None]) -> None:
        """As PID 1 (in a container), reap every child that is not a worker.

        Processes a worker leaves behind are re-parented to PID 1 when the worker
        exits; without this they would stay zombies for the container's life.
        Workers themselves are reaped by their watchers, which need their status.
        """
        with anyio.open_signal_receiver(signal.SIGCHLD) as signals:
            task_status.started()
            self._reap_strays()
            async for _ in signals:
                self._reap_strays()

    def _reap_strays(self) -> None:
        ours = {handle.process.pid for handle in self.handles.values()}
        tracker = getattr(multiprocess.resource_tracker._resource_tracker, "_pid", None)
        for pid in stray_zombies(exclude=ours | {tracker}):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    async def _timer(self, delay: float, event: Event) -> None:
        with anyio.CancelScope() as scope:
            self._timers[event] = scope
            try:
                await anyio.sleep(delay)
                await self.events_in.send(event)
            finally:
                self._timers.pop(event, None)

    def _drop_stale_timers(self, event: Event) -> None:
        """Cancel the timers that ``event`` made pointless, so that frequent reloads do
        not pile up sleeping tasks. (The state machine ignores stale timers anyway.)"""
        stale: list[Event] = []
        if isinstance(event, WorkerReady):
            stale = [ReadyTimeout(event.serial)]
        elif isinstance(event, WorkerExited):
            stale = [ReadyTimeout(event.serial), DrainTimeout(event.serial)]
        for timer in stale:
            scope = self._timers.get(timer)
            if scope is not None:
                scope.cancel()

    # -- workers --------------------------------------------------------------------

    def _spawn_worker(self, action: SpawnWorker) -> None:
        control, child_control = self.spawn.Pipe(duplex=True)
        fd_channel, child_fd_channel = socket.socketpair()
        boot = WorkerBootstrap(
            entry=self.entry,
            generation=action.generation,
            worker_id=action.worker_id,
            listeners=[(listener.spec, listener.address) for listener in self.listeners],
            fd_channel=child_fd_channel,
            control=child_control,
            drain_timeout=self.service.drain_timeout,
            backend=self.service.backend,
            log_level=logger.getEffectiveLevel(),
            entry_options=self.service.entry_options,
            backend_options=self.service.backend_options,
        )
        process = self.spawn.Process(
            target=worker_main,
            args=(boot,),
            name=f"graceful gen {action.generation} worker {action.worker_id}",
        )
        self.release.enter()
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_DURING_SPAWN)
        try:
            process.start()
        except Exception as exc:
            control.close()
            fd_channel.close()
            self._report_spawn_failure(action.serial, f"could not start a worker: {one_line(exc)}")
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            child_control.close()
            child_fd_channel.close()
        try:
            _wire.send_fds(fd_channel, [listener.socket.fileno() for listener in self.listeners])
        except OSError as exc:
            logger.error("could not send the listeners to a worker: %s", exc)
            process.kill()
        finally:
            fd_channel.close()
        handle = WorkerHandle(action.serial, process, control)
        self.handles[action.serial] = handle
        self._task_group.start_soon(self._watch, handle)

    def _report_spawn_failure(self, serial: int, cause: str) -> None:
        self.events_in.send_nowait(WorkerFailed(serial, cause))
        self.events_in.send_nowait(WorkerExited(serial, None))

    async def _watch(self, handle: WorkerHandle) -> None:
        """Forward the worker's messages, then report its exit once they are all in."""
        send, receive = anyio.create_memory_object_stream[_wire.Message | _wire.PeerGone](math.inf)
        heard_all = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_wire.pump, handle.control, send)
            tasks.start_soon(self._forward, handle, receive, heard_all)
            await anyio.wait_readable(handle.process.sentinel)
            with anyio.move_on_after(_LAST_WORDS_TIMEOUT):
                await heard_all.wait()
            tasks.cancel_scope.cancel()
        exitcode = self._reap(handle)
        if exitcode and not handle.reported_cause:
            cause = main_script_syntax_error()
            if cause is not None:
                await self.events_in.send(WorkerFailed(handle.serial, cause))
        await self.events_in.send(WorkerExited(handle.serial, exitcode))

    async def _forward(
        self,
        handle: WorkerHandle,
        messages: ObjectReceiveStream[_wire.Message | _wire.PeerGone],
        heard_all: anyio.Event,
    ) -> None:
        async with messages:
            async for message in messages:
                if isinstance(message, _wire.Ready):
                    await self.events_in.send(WorkerReady(handle.serial))
                elif isinstance(message, _wire.Failed):
                    handle.reported_cause = True
                    await self.events_in.send(WorkerFailed(handle.serial, message.cause))
                elif isinstance(message, _wire.PeerGone):
                    break
        heard_all.set()

    def _reap(self, handle: WorkerHandle) -> int | None:
        handle.process.join(timeout=5)
        exitcode: int | None = handle.process.exitcode
        handle.control.close()
        if exitcode is not None:
            handle.process.close()
        self.handles.pop(handle.serial, None)
        return exitcode

    def _kill_and_reap_all(self) -> None:
        for handle in list(self.handles.values()):
            handle.process.kill()
        for handle in list(self.handles.values()):
            self._reap(handle)
