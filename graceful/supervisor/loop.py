"""The supervisor's event loop: events in, the state machine's actions carried out.

:class:`graceful.core.machine.SupervisorStateMachine` decides; :class:`SupervisorLoop`
only feeds it events and carries out its actions. Every input (a signal, a
worker's message, a worker's exit, a timer) is funnelled into one memory object
stream and handled one at a time, so the decisions never race each other.

Task layout, all inside one task group whose lifetime is :meth:`SupervisorLoop.run`:

* one signal task (SIGHUP, SIGTERM, SIGINT, SIGUSR2 for a rollback, and SIGTTIN
  and SIGTTOU to scale);
* per worker, one spawn task (it waits for the bytecode check, then asks the
  :class:`~graceful.spawn.spawner.ProcessFactory`), then one watcher
  (:mod:`graceful.spawn.watcher`) that relays its messages, reaps it and reports its exit;
* per timer, one sleeping task (stale timers fire harmlessly: the state machine
  ignores events about workers that are gone);
* one task that restarts the orphan guard (:mod:`graceful.spawn.guard`) if it dies, and,
  as PID 1, one that reaps the orphans re-parented to it.
"""

from __future__ import annotations

import math
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import multiprocess.resource_tracker
from anyio.abc import TaskGroup, TaskStatus

from graceful.base import processes as _processes
from graceful.base.errors import ConfigError, GracefulError, name_some, one_line
from graceful.base.log import logger
from graceful.control.pidfile import PidFile
from graceful.control.server import ControlServer, ReloadWaiter
from graceful.core import actions, events
from graceful.core.fleet import Role, Settings, WorkerState
from graceful.core.machine import SupervisorStateMachine
from graceful.core.snapshot import Snapshot
from graceful.core.stop import Stopping
from graceful.core.succession import Succeeded
from graceful.core.timeline import Timelines
from graceful.dev.terminal import NARRATIVE, DevTerminal
from graceful.dev.watch import SourceWatcher
from graceful.sockets.listeners import BoundListener
from graceful.spawn.guard import GuardKeeper, OrphanGuard
from graceful.spawn.spawner import BytecodeGate, ProcessFactory, WorkerProcess, WorkerSetup
from graceful.spawn.watcher import Watcher
from graceful.supervisor import status
from graceful.supervisor.answers import AnswerBook
from graceful.supervisor.health import HealthServer
from graceful.supervisor.reconfigure import Configurations
from graceful.supervisor.runtimes import GenerationRuntimes
from graceful.supervisor.signals import follow_signals
from graceful.supervisor.succession import Successor
from graceful.supervisor.systemd import Notifier
from graceful.supervisor.upgrade import Upgrader, Upgrades
from graceful.supervisor.vitals import DUMP_WAIT, VitalsMonitor, dump_stack
from graceful.supervisor.waiters import SCALE_REQUEST, Waiters
from graceful.wire import messages as _wire


class SupervisorLoop:
    """Runs the supervisor: a :class:`SupervisorStateMachine` and the processes,
    signals and timers it decides about.

    Args:
        settings: the state machine's settings.
        factory: starts the workers (the seam to the kernel).
        listeners: released at the stop, those this process bound itself.
        bytecode: the stale-bytecode check spawns wait for; None for none.
        pid_file: published once generation 1 serves.
        notifier: told what the state machine announces.
        start_guard: starts an orphan guard (None where it cannot run); None for no
            guard.
        follow_signals: turn SIGHUP into a reload and SIGTERM and SIGINT into stops
            (and leave them ignored afterwards). Off only for tests in a shared
            process, which send their events through :attr:`events_in`.
        control: a listening control socket (see :mod:`graceful.control.server`) to serve.
        health: a listening socket for the health endpoint (see :mod:`graceful.supervisor.health`).
        reap_orphans: reap every child that is not a worker nor the factory's (also
            done as PID 1): this process is a child subreaper.
        watch: reload when these sources change (development mode, :mod:`graceful.dev.watch`),
            and report each reload on ``terminal``.
        upgrades: starts a successor supervisor for ``graceful upgrade``, and says
            who removes the sockets' files (:mod:`graceful.supervisor.upgrade`);
            None: upgrades are refused.
        successor: this supervisor was started by ``graceful upgrade``: its side of
            the hand-over (:mod:`graceful.supervisor.succession`).
    """

    def __init__(
        self,
        settings: Settings,
        factory: ProcessFactory,
        *,
        listeners: list[BoundListener] | None = None,
        bytecode: BytecodeGate | None = None,
        pid_file: PidFile | None = None,
        notifier: Notifier | None = None,
        start_guard: Callable[[], OrphanGuard | None] | None = None,
        follow_signals: bool = True,
        control: socket.socket | None = None,
        health: socket.socket | None = None,
        reap_orphans: bool = False,
        watch: SourceWatcher | None = None,
        terminal: DevTerminal | None = None,
        upgrades: Upgrades | None = None,
        successor: Successor | None = None,
        configurations: Configurations | None = None,
    ) -> None:
        self.machine = SupervisorStateMachine(settings)
        #: how each generation is started (read again for each: None for as launched)
        self.configurations = configurations
        self._reap_orphans_too = reap_orphans
        self.sources = watch
        self.terminal = terminal
        self.factory = factory
        self.listeners = listeners or []
        self.bytecode = bytecode
        self.pid_file = pid_file
        self.notifier = notifier or Notifier(None)
        self._follow_signals_too = follow_signals
        self.events_in, self._events = anyio.create_memory_object_stream[events.Event](math.inf)
        #: what each generation runs (its release, its graceful, its Python)
        self.runtimes = GenerationRuntimes()
        #: every generation's answers (see :mod:`graceful.supervisor.answers`)
        self.answers = AnswerBook(
            lambda: self.watcher.live, lambda: self.machine, self.events_in.send_nowait
        )
        self.watcher = Watcher(
            self.events_in,
            settings.kill_grace,
            self._stopping_now,
            self._progress,
            lambda worker, hello: self.runtimes.hello(worker.generation, worker.release, hello),
            last_words=self.answers.last_words,
        )
        #: the phases of the newest reloads (see :mod:`graceful.core.timeline`)
        self.timelines = Timelines()
        #: finds hung and worn-out workers (see :mod:`graceful.supervisor.vitals`)
        self.vitals = VitalsMonitor(
            settings,
            lambda: self.watcher.live,
            lambda: self.machine.workers,
            self.events_in.send_nowait,
            self.answers,
        )
        #: stack dumps under way, by serial: a kill waits for the dump
        self._dumps: dict[int, anyio.Event] = {}
        self._tasks: TaskGroup | None = None
        #: pending timers by the event they will send
        self._timers: dict[events.Event, anyio.CancelScope] = {}
        #: workers being started (waiting for the bytecode check, or for the
        #: factory), by serial: told to shut down or die meanwhile, they are called
        #: off (cancelled) instead
        self._spawning: dict[int, anyio.CancelScope] = {}
        #: generations the factory may still start workers for
        self._generations_known: set[int] = set()
        #: the exit status is at least this (1 once the service had to stop itself)
        self._exit_at_least = 0
        #: stops the workers if this process dies (see :mod:`graceful.spawn.guard`)
        self.guard = GuardKeeper(start_guard, self.watcher.live.values)
        self.control = ControlServer(control, self) if control is not None else None
        if self.control is not None and successor is not None:
            self.control.serving = False  # until it takes over
        self.health = HealthServer(health, self) if health is not None else None
        #: the requests through the control socket, until answered
        self.waiters = Waiters()
        self._started_at = 0.0
        #: a stop was asked for through the control socket
        self._stop_requested = False
        #: stop signals (SIGTERM, SIGINT) received
        self._stop_signals = 0
        #: since when no worker accepts connections while a generation serves (the
        #: loop's clock); None while one does (see :meth:`is_live`)
        self.unready_since: float | None = None
        #: this supervisor's side of ``graceful upgrade``
        self.upgrader = Upgrader(
            self,
            upgrades.start if upgrades is not None else None,
            refused=upgrades.refused if upgrades is not None else "refused: not supported here",
            busy=lambda: successor is not None and not successor.settled_in,
        )
        self.successor = successor
        #: who removes the sockets' files (see graceful.supervisor.socket_files)
        self.files = upgrades.files if upgrades is not None else None
        #: serves the control socket and the health endpoint (see serve_own_sockets)
        self._own_sockets: anyio.CancelScope | None = None

    async def run(self) -> int:
        """Run until the state machine says to exit; return its exit status.

        Whatever way this ends (even by an exception or cancellation), every worker
        still alive, and whatever it left in its process group, is killed, and every
        worker is reaped before it returns.
        """
        self.guard.start()
        self._started_at = anyio.current_time()
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                if self.successor is None:
                    self.serve_own_sockets(True)
                else:
                    tasks.start_soon(self.successor.follow, self)
                if self._follow_signals_too:
                    await tasks.start(follow_signals, self.events_in, self._stop_signalled)
                tasks.start_soon(self.notifier.run)
                tasks.start_soon(self.guard.keep)
                tasks.start_soon(self.factory.run)
                tasks.start_soon(self.vitals.run)
                if self.sources is not None:
                    tasks.start_soon(self.sources.run, self._sources_changed)
                if os.getpid() == 1 or self._reap_orphans_too:
                    await tasks.start(self._reap_orphans)
                code = await self._decide(events.Start())
                await self.watcher.finish_sweeps()
                tasks.cancel_scope.cancel()
            return max(code, self._exit_at_least)
        finally:
            self.upgrader.close()
            self.watcher.kill_and_reap_all()
            self.factory.close()
            self.guard.close()

    async def _decide(self, first: events.Event) -> int:
        event: events.Event = first
        while True:
            for action in self.machine.handle(event, anyio.current_time()):
                if isinstance(action, actions.Exit):
                    return action.code
                self._carry_out(action)
            self._tell_factory_of_ended_generations()
            self.factory.set_quiet(self._quiet())
            if self.successor is not None:
                self.successor.after_event(self)
            self.upgrader.step()
            self._note_accepting()
            if self.machine.stop_announced:
                self.waiters.stopping()
            event = await self._events.receive()
            if isinstance(event, events.ReloadRequested):
                self.timelines.asked(anyio.current_time())
            elif isinstance(event, events.WorkerExited):
                self._dumps.pop(event.serial, None)
            self._drop_stale_timers(event)

    def _carry_out(self, action: actions.Action) -> None:
        match action:
            case actions.Log(level, message, narrative):
                logger.log(level, "%s", message, extra={NARRATIVE: narrative})
            case actions.GenerationServing(number, first):
                self.timelines.mark(number, "serving", anyio.current_time())
                if first and self.successor is not None:
                    self.successor.first_generation_serving(self)
                elif first:
                    self.publish_pid_file()
            case actions.SpawnWorker():
                self._spawning[action.serial] = anyio.CancelScope()
                self._task_group.start_soon(self._spawn_worker, action)
            case actions.ShutdownWorker(serial, drain_timeout):
                worker = self.watcher.live.get(serial)
                if worker is not None:
                    self._tell(worker, _wire.Shutdown(drain_timeout))
                elif serial in self._spawning:
                    self._spawning[serial].cancel()
            case actions.KillWorker(serial):
                self._kill(serial)
            case actions.DumpStack(serial):
                self._dump_stack(serial)
            case actions.ParkWorker(serial, drain_timeout):
                worker = self.watcher.live.get(serial)
                if worker is not None:
                    self._tell(worker, _wire.Park(drain_timeout))
            case actions.ResumeWorker(serial):
                self._resume(serial)
            case actions.StopAccepting():
                for listener in self.listeners:
                    if not listener.adopted:
                        listener.close()
                self.waiters.stopping()
            case actions.GenerationStarted(number, first):
                self.timelines.started(number, anyio.current_time())
                if self.terminal is not None:
                    self.terminal.started(number)
                if not first:
                    self.waiters.generation_started(number)
            case actions.ReloadEnded() | actions.ProbationEnded() | actions.RollbackEnded():
                self._answer_waiters(action)
            case actions.ScaleEnded():
                self.waiters.scale_ended(action)
            case actions.StartTimer(delay, event):
                self._task_group.start_soon(self._timer, delay, event)
            case actions.Announce():
                self.notifier.announce(action)

    def _progress(self, worker: WorkerProcess, phase: str) -> None:
        """``worker`` reached ``phase`` (one of ``_timeline.PHASES``): on its own
        generation's timeline, or for ``closed`` (a worker being replaced), on the
        serving generation's."""
        generation = worker.generation
        serving = self.machine.serving
        if phase == "closed":
            if serving is None or serving == generation:
                return
            generation = serving
        self.timelines.mark(generation, phase, anyio.current_time())

    def _quiet(self) -> bool:
        """A generation serves, and nothing is starting, resuming or stopping: the
        factory's background work (a standby to warm up) slows nothing down."""
        machine = self.machine
        return (
            machine.serving is not None
            and machine.starting is None
            and machine.rollback is None
            and not machine.stop_announced
            and not self._spawning
            and not any(
                worker.state in (WorkerState.STARTING, WorkerState.RESUMING)
                for worker in machine.workers.values()
            )
        )

    def _tell_factory_of_ended_generations(self) -> None:
        """Tell the factory of each generation retired or forgotten since the last
        event: no worker will be started into it again."""
        live = {
            number
            for number, generation in self.machine.generations.items()
            if generation.role is not Role.RETIRED
        }
        for number in sorted(self._generations_known - live):
            self.factory.generation_ended(number)
            if self.configurations is not None:
                self.configurations.ended(number)
        self._generations_known = live

    def _answer_waiters(
        self,
        ended: actions.ReloadEnded | actions.ProbationEnded | actions.RollbackEnded,
    ) -> None:
        """Tell whoever waits for a reload, its probation, or a rollback how it ended."""
        match ended:
            case actions.ReloadEnded(outcome):
                if self.health is not None and self.health.metrics is not None:
                    self.health.metrics.observe_reload(outcome)
                if self.terminal is not None:
                    self.terminal.reload_ended(outcome, self.machine.serving)
                probation = self.machine.probation
                on_probation = probation is not None and probation.generation == outcome.generation
                self.waiters.reload_ended(outcome, on_probation)
            case actions.ProbationEnded():
                self.waiters.probation_ended(ended)
            case actions.RollbackEnded(ok, detail):
                if self.terminal is not None:
                    self.terminal.rollback_ended(ok, detail)
                self.waiters.rollback_ended(ended)

    def _resume(self, serial: int) -> None:
        """Hand a parked worker the listeners again, then tell it to resume. One that
        cannot take them is killed (its exit ends its part in the rollback)."""
        worker = self.watcher.live.get(serial)
        if worker is None:
            return
        try:
            worker.hand_listeners()
        except OSError as exc:
            logger.error(
                "%s: cannot hand it the listeners (%s); killing it",
                self.watcher.describe(worker),
                exc.strerror or exc,
            )
            worker.kill()
            return
        self._tell(worker, _wire.Resume())

    def _kill(self, serial: int) -> None:
        """Kill worker ``serial`` with its process group (once its stack dump, if one
        was asked for, is logged), or call off its start."""
        worker = self.watcher.live.get(serial)
        if worker is not None and serial in self._dumps:
            self._task_group.start_soon(self._kill_after_dump, serial)
        elif worker is not None:
            worker.kill()
        elif serial in self._spawning:
            self._spawning[serial].cancel()

    def _dump_stack(self, serial: int) -> None:
        """Have hung worker ``serial`` dump its stacks, and log them."""
        worker = self.watcher.live.get(serial)
        if worker is None:
            return
        self._dumps[serial] = anyio.Event()
        self._task_group.start_soon(
            dump_stack,
            worker,
            f"{self.watcher.describe(worker)} (PID {worker.pid})",
            self._dumps[serial],
            lambda text: logger.error("%s", text),
        )

    async def _kill_after_dump(self, serial: int) -> None:
        """Kill worker ``serial`` once its stack dump is logged (or has had its time)."""
        done = self._dumps.get(serial)
        if done is not None:
            with anyio.move_on_after(DUMP_WAIT * 2):
                await done.wait()
        self._dumps.pop(serial, None)
        worker = self.watcher.live.get(serial)
        if worker is not None:
            worker.kill()

    def _tell(self, worker: WorkerProcess, message: _wire.Message) -> None:
        """Send ``message`` to ``worker`` without waiting; a live worker that does not
        read its control channel (stopped, stuck) cannot be told anything: it is
        killed (its exit is reported as usual)."""
        try:
            worker.channel.send_nowait(message)  # False: gone, its exit is on its way
        except BlockingIOError:
            logger.error(
                "%s does not read its control channel; killing it",
                self.watcher.describe(worker),
            )
            worker.kill()

    # -- requests through the control socket ----------------------------------------

    def request_rollback(self, by: str) -> ReloadWaiter:
        """Ask for a rollback of the generation on probation; the waiter learns how it
        ended (a :class:`~graceful.core.actions.RollbackEnded`)."""
        waiter = self.waiters.rollback()
        handed_back = (
            self.successor.request_rollback(self, by) if self.successor is not None else None
        )
        if handed_back is not None:
            self.waiters.rollback_ended(handed_back)
            return waiter
        self.events_in.send_nowait(events.RollbackRequested(by))
        return waiter

    def request_upgrade(self, through_probation: bool) -> ReloadWaiter:
        """Ask for an upgrade of this supervisor (``graceful upgrade``); the waiter
        learns how it ended (an :class:`~graceful.control.server.UpgradeEnded`)."""
        return self.upgrader.request(through_probation)

    # -- what the upgrade needs (graceful.supervisor.upgrade and .succession) --------

    def send_event(self, event: events.Event) -> None:
        self.events_in.send_nowait(event)

    def start_task(self, function: Callable[[], Coroutine[Any, Any, object]]) -> None:
        self._task_group.start_soon(function)

    def serve_own_sockets(self, serving: bool) -> None:
        """Serve the control socket and the health endpoint (listening anew, so that
        the control socket's peer credentials name this process), or stop serving
        them (connections already accepted are still answered)."""
        if self._own_sockets is not None:
            self._own_sockets.cancel()
            self._own_sockets = None
        if self.control is not None:
            self.control.serving = serving
        if not serving or (self.control is None and self.health is None):
            return
        scope = self._own_sockets = anyio.CancelScope()
        tasks = self._task_group

        async def serve() -> None:
            with scope:
                async with anyio.create_task_group() as servers:
                    if self.control is not None:
                        self.control.sock.listen(64)
                        servers.start_soon(self.control.serve, tasks)
                    if self.health is not None:
                        servers.start_soon(self.health.serve, tasks)

        tasks.start_soon(serve)

    def request_scale(self, workers: int) -> ReloadWaiter:
        """Ask for ``workers`` workers per generation; the waiter learns what was done
        (a :class:`~graceful.core.actions.ScaleEnded`)."""
        waiter = self.waiters.scale()
        self.events_in.send_nowait(events.ScaleRequested(SCALE_REQUEST, workers=workers))
        return waiter

    def _sources_changed(self, paths: list[str]) -> None:
        logger.debug("changed: %s", name_some(paths, most=10))
        if self.terminal is not None:
            self.terminal.changed(paths)
        self.events_in.send_nowait(events.ReloadRequested())

    def request_reload(self, through_probation: bool = False) -> ReloadWaiter:
        """Ask for a reload; the waiter learns how the reload that runs code read
        after this request ended (coalesced requests share one), and with
        ``through_probation``, how its probation ended."""
        waiter = self.waiters.reload(through_probation)
        if self.machine.stop_announced:
            self.waiters.stopping()
            return waiter
        self.events_in.send_nowait(events.ReloadRequested())
        return waiter

    def _note_accepting(self) -> None:
        """Keep :attr:`unready_since` (after every event)."""
        if self.machine.accepting > 0 or self.machine.serving is None:
            self.unready_since = None
        elif self.unready_since is None:
            self.unready_since = anyio.current_time()

    def _stop_signalled(self) -> None:
        """SIGTERM or SIGINT: a stop, if none was asked for; a second signal escalates
        it (an operator's decision), but a first one after a stop asked for through
        the control socket (``graceful stop``) only joins it."""
        handed_over = isinstance(self.machine.succession, Succeeded)
        if self._stop_signals or not (self._stop_requested or handed_over):
            self.events_in.send_nowait(events.StopRequested())
        else:
            logger.info("stop signal: the stop already asked for goes on")
        self._stop_signals += 1
        self._stop_requested = True

    def request_stop(self) -> None:
        """Ask for a stop, as the first SIGTERM does. Unlike a second SIGTERM, a request
        after any stop (a signal's included) changes nothing: waiting for a stop (a
        retried ``graceful stop --wait``, a second tool stopping the same service)
        must never turn a drain into a kill, nor cut ``stop_delay`` short."""
        if not self._stop_requested and not self.machine.stop_announced:
            self._stop_requested = True
            self.events_in.send_nowait(events.StopRequested())

    def snapshot(self) -> Snapshot:
        """The supervisor's state now: what ``status``, ``/ready``, ``/live`` and
        ``/metrics`` render."""
        return status.take(
            self.machine,
            anyio.current_time(),
            status.Surroundings(
                started_at=self._started_at,
                unready_since=self.unready_since,
                pid_of=lambda serial: getattr(self.watcher.live.get(serial), "pid", None),
                runtimes=self.runtimes,
                timelines=self.timelines,
                standby=self.factory.standby_status(),
                listeners=self.listeners,
                upgrade=(
                    self.successor.status()
                    if self.successor is not None and not self.successor.settled_in
                    else self.upgrader.status()
                ),
                settings_of=(
                    self.configurations.describe
                    if self.configurations is not None
                    else lambda _: None
                ),
                vitals_of=self.vitals.describe,
                answers=self.answers.recent,
            ),
        )

    def publish_pid_file(self) -> None:
        """Put the PID file in place (once the first generation serves), if there is
        one; if it cannot be, stop."""
        pid_file = self.pid_file
        if pid_file is None:
            return
        try:
            pid_file.publish()
        except GracefulError as exc:
            # Running on without it would leave `graceful stop` and `reload` to
            # whatever file someone else put there.
            logger.error("%s; stopping", exc)
            self._exit_at_least = 1
            self._stop_requested = True
            self.events_in.send_nowait(events.StopRequested())

    @property
    def _task_group(self) -> TaskGroup:
        assert self._tasks is not None, "the supervisor is not running"
        return self._tasks

    def _stopping_now(self) -> bool:
        return self.machine.stopping is Stopping.NOW

    # -- inputs ---------------------------------------------------------------------

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
        self.factory.collect_exited()
        ours = {worker.pid for worker in self.watcher.live.values()} | self.factory.helper_pids()
        ours |= self.upgrader.successor_pids()
        tracker: int | None = getattr(multiprocess.resource_tracker._resource_tracker, "_pid", None)
        for pid in _processes.stray_zombies(exclude={*ours, tracker, self.guard.pid}):
            _processes.reap_zombie(pid)

    async def _timer(self, delay: float, event: events.Event) -> None:
        with anyio.CancelScope() as scope:
            self._timers[event] = scope
            try:
                await anyio.sleep(delay)
                self.events_in.send_nowait(event)
            finally:
                self._timers.pop(event, None)

    def _drop_stale_timers(self, event: events.Event) -> None:
        """Cancel the timers that ``event`` made pointless, so that frequent reloads do
        not pile up sleeping tasks. (The state machine ignores stale timers anyway.)"""
        stale: list[events.Event] = []
        if isinstance(event, events.WorkerReady):
            stale = [events.ReadyTimeout(event.serial)]
        elif isinstance(event, events.WorkerExited):
            stale = [events.ReadyTimeout(event.serial), events.DrainTimeout(event.serial)]
        for timer in stale:
            scope = self._timers.get(timer)
            if scope is not None:
                scope.cancel()

    # -- starting workers -----------------------------------------------------------

    async def _spawn_worker(self, spawn: actions.SpawnWorker) -> None:
        """Start the worker ``spawn`` names, once the application's bytecode has been
        checked. Any failure, at any step, is reported as that worker failing to
        start, never raised. A worker called off meanwhile (a stop, a missed
        ready_timeout) is not started: it is reported as exited."""
        worker: WorkerProcess | None = None
        called_off = self._spawning[spawn.serial]
        try:
            with called_off:
                setup = (
                    await self.configurations.setup_for(spawn.generation)
                    if self.configurations is not None
                    else WorkerSetup()
                )
                bypass = (
                    await self.bytecode.environment_for(spawn.generation)
                    if self.bytecode is not None
                    else {}
                )
                if bypass:
                    setup = WorkerSetup(setup.options, {**setup.environment, **bypass}, True)
                self.timelines.mark(spawn.generation, "spawn", anyio.current_time())
                worker = await self.factory.start(spawn, setup)
                self.timelines.mark(spawn.generation, "started", anyio.current_time())
        except ConfigError as exc:  # the configuration, read again: said as it is
            self.events_in.send_nowait(events.WorkerFailed(spawn.serial, str(exc)))
        except Exception as exc:
            self.events_in.send_nowait(
                events.WorkerFailed(spawn.serial, f"could not start a worker: {one_line(exc)}")
            )
        finally:
            del self._spawning[spawn.serial]
        if worker is None:  # failed, or called off before it started
            self.events_in.send_nowait(events.WorkerExited(spawn.serial, None))
            return
        if called_off.cancel_called:
            # called off while the factory could not be interrupted (a template's
            # fork): it started all the same, and never served; its exit is
            # reported once it is reaped
            worker.kill()
        self.guard.watch(worker)
        self.watcher.live[worker.serial] = worker
        self._task_group.start_soon(self.watcher.watch, worker, self._task_group)
