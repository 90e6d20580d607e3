"""The supervisor's edges: signals, worker processes, control channels and timers.

:class:`graceful._decisions.Supervision` decides; this module only carries its
actions out and feeds it events. Every input (a signal, a worker's message, a
worker's exit, a timer) is funnelled into one memory object stream and handled
one at a time, so the decisions never race each other.

Task layout, all inside one task group whose lifetime is :meth:`Supervisor.run`:

* one signal task (SIGHUP, SIGTERM, SIGINT);
* per worker, one watcher that relays its control messages and waits for its exit
  (see ``_processes.py``), then reaps it;
* per timer, one sleeping task (stale timers fire harmlessly: the state machine
  ignores events about workers that are gone);
* per worker that left processes behind in its process group, one sweeper that
  gives them ``kill_grace`` seconds after SIGTERM, then SIGKILLs the group.

Nothing a worker does can stop the supervisor: a failure to start it (out of file
descriptors, say) is a failed start of that worker, a malformed message costs that
worker, and its exit is noticed whatever its descendants still hold.
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
import anyio.to_thread
import multiprocess
import multiprocess.resource_tracker
from anyio.abc import TaskGroup, TaskStatus

from . import _processes, _wire
from ._bytecode import BytecodeCheck, application_roots, bypass_environment, recompile
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
    StopAccepting,
    Stopping,
    StopRequested,
    Supervision,
    WorkerExited,
    WorkerFailed,
    WorkerMisbehaved,
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
from ._errors import ConfigError, GracefulError
from ._listeners import (
    BoundListener,
    bind_listeners,
    check_descriptor_headroom,
    format_address,
)
from ._logging import ensure_visible, logger
from ._orphan_guard import OrphanGuard
from ._pidfile import PidFile
from ._systemd import Notifier, monotonic_usec
from ._worker import WorkerBootstrap, worker_main

if TYPE_CHECKING:
    from ._service import Service

#: Signals a worker must not receive between fork and its own setup: the terminal's
#: Ctrl-C reaches the whole foreground process group, and SIGHUP may too.
_BLOCKED_DURING_SPAWN = {signal.SIGINT, signal.SIGHUP}

#: The longest start or reload systemd is told to wait for, in seconds (a
#: ready_timeout of days is allowed, but EXTEND_TIMEOUT_USEC must stay a sane number).
_MAX_EXTEND = 365 * 24 * 3600.0

#: How many stale source files a warning names before it says "and N more".
_STALE_FILES_NAMED = 5


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
    # A reload requested before the supervisor listens for it, or after it has
    # stopped, has nothing to reload: ignored, rather than its default action
    # killing the process (and leaving the PID file behind). It stays ignored when
    # this returns. SIGTERM and SIGINT are ignored from the end of the supervisor's
    # loop to the end of its clean-up, then restored.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop_handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _supervise(service, caller, pid_file)
    finally:
        for signum, handler in stop_handlers.items():
            signal.signal(signum, handler)


def _supervise(
    service: Service[Any],
    caller: types.FrameType | None,
    pid_file: str | os.PathLike[str] | None,
) -> int:
    claimed: PidFile | None = None
    listeners: list[BoundListener] = []
    try:
        entry = entry_ref_for(service, service.function)
        check_main_guard(caller)
        if pid_file is not None:
            claimed = PidFile.claim(pid_file)
        listeners = bind_listeners(service.listen)
        check_descriptor_headroom(len(listeners), service.workers)
    except ConfigError as exc:
        logger.error("%s", exc)
        for listener in listeners:
            listener.close()
        if claimed is not None:
            claimed.release()
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
            pid_file=claimed,
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
        if claimed is not None:
            claimed.release()


@dataclass
class WorkerHandle:
    serial: int
    generation: int
    worker_id: int
    process: Any  # multiprocess SpawnProcess
    channel: _wire.ControlChannel
    #: readable once the process has exited; None where pidfds are unavailable
    pidfd: int | None
    #: the worker reported why it is exiting (a Failed message)
    reported_cause: bool = False

    @property
    def pid(self) -> int:
        pid: int = self.process.pid
        return pid

    def describe(self) -> str:
        return f"generation {self.generation} worker {self.worker_id}"

    def close(self) -> None:
        """Release the supervisor's descriptors for a reaped worker."""
        self.process.close()
        self.channel.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Supervisor:
    """Carries out a :class:`Supervision`'s actions with real processes."""

    def __init__(
        self,
        service: Service[Any],
        entry: EntryRef,
        listeners: list[BoundListener],
        *,
        release: ReleaseDirectory,
        pid_file: PidFile | None = None,
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
        #: process groups of reaped workers that still have members, being stopped
        self._sweeping: set[int] = set()
        #: the bytecode check under way, shared by the spawns waiting for it
        self._bytecode_check: anyio.Event | None = None
        self._bytecode_environment: dict[str, str] = {}
        #: workers whose start waits for the bytecode check
        self._spawning: set[int] = set()
        #: those of them told to shut down or die meanwhile: they are not started
        self._called_off: set[int] = set()
        self._bytecode = BytecodeCheck()
        self._budget_warned = False
        #: the exit status is at least this (1 once the service had to stop itself)
        self._exit_at_least = 0
        #: stops the workers if this process dies (see ``_orphan_guard.py``)
        self._guard: OrphanGuard | None = None

    async def run(self) -> int:
        """Run until the state machine says to exit; return its exit status.

        Whatever way this ends (even by an exception or cancellation), every worker
        still alive, and whatever it left in its process group, is killed, and every
        worker is reaped before it returns.
        """
        self._guard = OrphanGuard.start(self.service.drain_timeout, self.machine.plan.kill_grace)
        if self._guard is None:
            logger.debug("no orphan guard: pidfds are not available")
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                await tasks.start(self._follow_signals)
                tasks.start_soon(self._keep_guard)
                if os.getpid() == 1:
                    await tasks.start(self._reap_orphans)
                code = await self._decide(Start())
                await self._finish_sweeps()
                tasks.cancel_scope.cancel()
            return max(code, self._exit_at_least)
        finally:
            self._kill_and_reap_all()
            if self._guard is not None:
                self._guard.close()

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
        | StopAccepting
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
                self._publish_pid_file(self.pid_file)
        elif isinstance(action, SpawnWorker):
            self._spawning.add(action.serial)
            self._task_group.start_soon(self._spawn_worker, action)
        elif isinstance(action, ShutdownWorker):
            handle = self.handles.get(action.serial)
            if handle is not None:
                handle.channel.send(_wire.Shutdown(action.drain_timeout))
            elif action.serial in self._spawning:
                self._called_off.add(action.serial)
        elif isinstance(action, KillWorker):
            handle = self.handles.get(action.serial)
            if handle is None:
                if action.serial in self._spawning:
                    self._called_off.add(action.serial)
            else:
                # Not reaped yet (its watcher does that): its PID and process group
                # number are still its own.
                _processes.kill_group_or_process(handle.pid)
        elif isinstance(action, StopAccepting):
            for listener in self.listeners:
                if not listener.adopted:
                    listener.close()
        else:
            self._task_group.start_soon(self._timer, action.delay, action.event)

    def _publish_pid_file(self, pid_file: PidFile) -> None:
        try:
            pid_file.publish()
        except GracefulError as exc:
            # Running on without it would leave `graceful stop` and `reload` to
            # whatever file someone else put there.
            logger.error("%s; stopping", exc)
            self._exit_at_least = 1
            self.events_in.send_nowait(StopRequested())

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
            fields["EXTEND_TIMEOUT_USEC"] = int(min(announce.extend, _MAX_EXTEND) * 1_000_000)
        fields["STATUS"] = announce.status
        self.notifier.send(**fields)

    @property
    def _task_group(self) -> TaskGroup:
        assert self._tasks is not None, "the supervisor is not running"
        return self._tasks

    @property
    def _stopping_now(self) -> bool:
        return self.machine.stopping is Stopping.NOW

    # -- inputs ---------------------------------------------------------------------

    async def _follow_signals(self, *, task_status: TaskStatus[None]) -> None:
        stops = {signal.SIGTERM, signal.SIGINT}
        try:
            with anyio.open_signal_receiver(signal.SIGHUP, *stops) as signals:
                try:
                    task_status.started()
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            logger.info("SIGHUP: reloading")
                            self.events_in.send_nowait(ReloadRequested())
                        else:
                            self.events_in.send_nowait(StopRequested())
                finally:
                    # The receiver resets these to their default actions (which kill,
                    # or raise KeyboardInterrupt) as it closes. Once the supervisor
                    # stops listening, a reload has nothing to reload and the stop is
                    # already under way: hold them until they are ignored.
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, *stops})
        finally:
            for signum in (signal.SIGHUP, *stops):
                signal.signal(signum, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP, *stops})

    async def _keep_guard(self) -> None:
        """Start a new orphan guard whenever the current one dies (someone killed it),
        and hand it every live worker."""
        while self._guard is not None and self._guard.pidfd is not None:
            await anyio.wait_readable(self._guard.pidfd)
            pid, status = self._guard.pid, self._guard.reap()
            self._guard = OrphanGuard.start(
                self.service.drain_timeout, self.machine.plan.kill_grace
            )
            logger.warning(
                "the orphan guard (PID %d) exited with status %s; %s",
                pid,
                status,
                "started a new one" if self._guard is not None else "could not start a new one",
            )
            for handle in self.handles.values():
                if self._guard is not None and handle.pidfd is not None:
                    self._guard.watch(handle.pid, handle.pidfd)

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
        ours = {handle.pid for handle in self.handles.values()}
        tracker: int | None = getattr(multiprocess.resource_tracker._resource_tracker, "_pid", None)
        guard = self._guard.pid if self._guard is not None else None
        for pid in _processes.stray_zombies(exclude={*ours, tracker, guard}):
            _processes.reap_zombie(pid)

    async def _timer(self, delay: float, event: Event) -> None:
        with anyio.CancelScope() as scope:
            self._timers[event] = scope
            try:
                await anyio.sleep(delay)
                self.events_in.send_nowait(event)
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

    # -- starting workers -----------------------------------------------------------

    async def _spawn_worker(self, action: SpawnWorker) -> None:
        """Start the worker ``action`` names, once the application's bytecode has
        been checked. Any failure, at any step, is reported as that worker failing
        to start, never raised. A worker called off meanwhile (a stop) is not
        started: it is reported as exited."""
        try:
            environment = await self._check_bytecode_once(action.generation)
        finally:
            self._spawning.discard(action.serial)
        if action.serial in self._called_off:
            self._called_off.discard(action.serial)
            self.events_in.send_nowait(WorkerExited(action.serial, None))
            return
        try:
            handle = self._start_worker(action, environment)
        except Exception as exc:
            self.events_in.send_nowait(
                WorkerFailed(action.serial, f"could not start a worker: {one_line(exc)}")
            )
            self.events_in.send_nowait(WorkerExited(action.serial, None))
            return
        self.handles[action.serial] = handle
        self._task_group.start_soon(self._watch, handle)

    async def _check_bytecode_once(self, generation: int) -> dict[str, str]:
        """The bytecode check (in a thread: it may compile files), run once for the
        spawns that wait for it together (a generation's workers), and again for
        later ones (a replacement after a crash)."""
        if self._bytecode_check is not None:
            await self._bytecode_check.wait()
            return self._bytecode_environment
        self._bytecode_check = done = anyio.Event()
        try:
            self._bytecode_environment = await anyio.to_thread.run_sync(
                self._check_bytecode_in_thread, generation
            )
        except Exception:
            logger.exception("could not check the application's bytecode")
            self._bytecode_environment = {}
        finally:
            self._bytecode_check = None
            done.set()
        return self._bytecode_environment

    def _start_worker(self, action: SpawnWorker, environment: dict[str, str]) -> WorkerHandle:
        with contextlib.ExitStack() as on_failure:
            control, child_control = self.spawn.Pipe(duplex=True)
            on_failure.callback(control.close)
            with contextlib.closing(child_control):
                channel = _wire.ControlChannel(control)
                on_failure.callback(channel.close)
                fd_channel, child_fd_channel = socket.socketpair()
                with fd_channel, child_fd_channel:
                    process = self.spawn.Process(
                        target=worker_main,
                        args=(self._bootstrap(action, child_fd_channel, child_control),),
                        name=f"graceful gen {action.generation} worker {action.worker_id}",
                    )
                    self._start(process, environment)
                    on_failure.callback(self._abandon, process)
                    pidfd = _processes.open_pidfd(process.pid)
                    if pidfd is not None and self._guard is not None:
                        self._guard.watch(process.pid, pidfd)
                    child_fd_channel.close()
                    # A generation may have made the shared listeners blocking (the flag
                    # lives on the open file description): hand them over non-blocking.
                    for listener in self.listeners:
                        os.set_blocking(listener.socket.fileno(), False)
                    _wire.send_fds(fd_channel, [lst.socket.fileno() for lst in self.listeners])
            on_failure.pop_all()
        return WorkerHandle(
            action.serial, action.generation, action.worker_id, process, channel, pidfd
        )

    def _bootstrap(
        self, action: SpawnWorker, fd_channel: socket.socket, control: Any
    ) -> WorkerBootstrap:
        return WorkerBootstrap(
            entry=self.entry,
            generation=action.generation,
            worker_id=action.worker_id,
            supervisor_pid=os.getpid(),
            listeners=[(listener.spec, listener.address) for listener in self.listeners],
            fd_channel=fd_channel,
            control=control,
            drain_timeout=self.service.drain_timeout,
            kill_grace=self.machine.plan.kill_grace,
            backend=self.service.backend,
            log_level=logger.getEffectiveLevel(),
            entry_options=self.service.entry_options,
            backend_options=self.service.backend_options,
        )

    def _start(self, process: Any, environment: dict[str, str]) -> None:
        """``process.start()``, with the terminal's signals blocked until the worker
        has set up its own handlers, and in a process group of its own."""
        self.release.enter()
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_DURING_SPAWN)
        saved = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)
        try:
            process.start()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        # The worker does the same as its first step; whichever runs first wins (this
        # one fails with EACCES once the child has exec'd).
        with contextlib.suppress(OSError):
            os.setpgid(process.pid, process.pid)

    def _abandon(self, process: Any) -> None:
        """Kill and reap a worker whose start failed half-way."""
        _processes.kill_group_or_process(process.pid)
        process.join()
        process.close()

    def _check_bytecode_in_thread(self, generation: int) -> dict[str, str]:
        # Signals are the main thread's: once the supervisor stops listening, their
        # default actions are back for a moment, and this thread must not take one.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM, signal.SIGINT})
        return self._check_bytecode(generation)

    def _check_bytecode(self, generation: int) -> dict[str, str]:
        """The extra environment generation ``generation`` needs. Stale bytecode in
        the application's directories (see ``_bytecode.py``) is recompiled from the
        source; where it cannot be, the generation bypasses the bytecode cache."""
        roots = application_roots()
        stale = self._bytecode.stale_sources(roots)
        if self._bytecode.budget_exhausted and not self._budget_warned:
            self._budget_warned = True
            logger.warning(
                "stale bytecode: only the first %d .py files under %s were checked",
                self._bytecode.budget,
                ", ".join(roots),
            )
        if not stale:
            return {}
        named = ", ".join(stale[:_STALE_FILES_NAMED])
        if len(stale) > _STALE_FILES_NAMED:
            named += f" and {len(stale) - _STALE_FILES_NAMED} more"
        failed = recompile(stale)
        if failed:
            reasons = ", ".join(f"{path} ({why})" for path, why in failed.items())
            what = (
                f"could not recompile {reasons}, so generation {generation} compiles "
                "everything from source"
            )
        else:
            what = "recompiled it"
        logger.warning(
            "stale bytecode: %s changed after its .pyc was written but kept its size and "
            "modification time (a deploy with rsync -a, tar or cp -p?); %s. See the README "
            "on stale bytecode to avoid this",
            named,
            what,
        )
        return bypass_environment() if failed else {}

    # -- watching and reaping workers -----------------------------------------------

    async def _watch(self, handle: WorkerHandle) -> None:
        """Relay the worker's messages until it exits, then reap it and report its exit
        once every message it wrote is in. Whatever goes wrong here costs this worker,
        never the supervisor."""
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._relay, handle)
                await self._exit_of(handle)
                tasks.cancel_scope.cancel()
            # What it wrote before it exited is in the channel's buffer by now.
            for item in handle.channel.receive_all_available():
                self._forward(handle, item)
            exitcode = self._reap(handle)
        except Exception:
            logger.exception("could not watch %s; killing it", handle.describe())
            exitcode = self._abandon_watch(handle)
        if exitcode and not handle.reported_cause:
            cause = main_script_syntax_error()
            if cause is not None:
                self.events_in.send_nowait(WorkerFailed(handle.serial, cause))
        self.events_in.send_nowait(WorkerExited(handle.serial, exitcode))

    def _abandon_watch(self, handle: WorkerHandle) -> int | None:
        with contextlib.suppress(Exception):
            if handle.serial in self.handles:
                _processes.kill_group_or_process(handle.pid)
                handle.process.join()
        exitcode: int | None = None
        with contextlib.suppress(Exception):
            exitcode = handle.process.exitcode
            handle.close()
        self.handles.pop(handle.serial, None)
        return exitcode

    async def _exit_of(self, handle: WorkerHandle) -> None:
        if handle.pidfd is not None:
            await anyio.wait_readable(handle.pidfd)
            return
        while not _processes.has_exited(handle.pid):
            await anyio.sleep(_processes.EXIT_POLL_INTERVAL)

    async def _relay(self, handle: WorkerHandle) -> None:
        while True:
            await anyio.wait_readable(handle.channel.fileno())
            for item in handle.channel.receive_available():
                self._forward(handle, item)
                if isinstance(item, _wire.PeerGone | _wire.ProtocolError):
                    return

    def _forward(self, handle: WorkerHandle, item: _wire.Received) -> None:
        if isinstance(item, _wire.Ready):
            self.events_in.send_nowait(WorkerReady(handle.serial))
        elif isinstance(item, _wire.Failed):
            handle.reported_cause = True
            self.events_in.send_nowait(WorkerFailed(handle.serial, item.cause))
        elif isinstance(item, _wire.ProtocolError):
            self.events_in.send_nowait(WorkerMisbehaved(handle.serial, item.detail))

    def _reap(self, handle: WorkerHandle) -> int | None:
        """Reap an exited worker, and start stopping what it left in its group."""
        pgid = handle.pid
        own_group = _processes.leads_own_group(pgid)
        if own_group:
            # Safe while the worker is an unreaped zombie: its number is not reused.
            _processes.signal_group(pgid, signal.SIGTERM)
        exitcode: int | None = handle.process.exitcode
        if exitcode is None:  # it has exited, so this does not wait
            handle.process.join()
            exitcode = handle.process.exitcode
        handle.close()
        self.handles.pop(handle.serial, None)
        if own_group and _processes.signal_group(pgid, 0):
            try:
                left: list[int] | None = _processes.group_members(pgid)
            except OSError:
                left = None  # cannot look (out of descriptors?): sweep all the same
            if left != []:  # [] means only zombies are left, which their parents reap
                logger.warning(
                    "%s left %s behind in its process group; sent SIGTERM, SIGKILL in %gs",
                    handle.describe(),
                    _processes.describe_pids(left),
                    self.machine.plan.kill_grace,
                )
                self._sweeping.add(pgid)
                self._task_group.start_soon(self._sweep, pgid)
        return exitcode

    async def _sweep(self, pgid: int) -> None:
        """Give what a worker left behind ``kill_grace`` seconds after SIGTERM, then
        SIGKILL its process group. (The group's number cannot be reused while any
        member is alive; it is checked right before the signal.)"""
        try:
            with anyio.move_on_after(self.machine.plan.kill_grace):
                while _processes.signal_group(pgid, 0) and not self._stopping_now:
                    await anyio.sleep(0.05)
            _processes.signal_group(pgid, signal.SIGKILL)
        finally:
            self._sweeping.discard(pgid)

    async def _finish_sweeps(self) -> None:
        """Before exiting, let the sweepers finish (each within ``kill_grace``)."""
        with anyio.move_on_after(self.machine.plan.kill_grace + 1):
            while self._sweeping and not self._stopping_now:
                await anyio.sleep(0.05)

    def _kill_and_reap_all(self) -> None:
        for handle in list(self.handles.values()):
            _processes.kill_group_or_process(handle.pid)
        for pgid in list(self._sweeping):
            _processes.signal_group(pgid, signal.SIGKILL)
        for handle in list(self.handles.values()):
            handle.process.join()
            handle.close()
        self.handles.clear()
