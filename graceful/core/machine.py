"""The supervisor's decisions: a state machine over events, with no I/O.

Theory of operation
-------------------
Everything the supervisor learns arrives as an *event*: a signal, a worker's
control message, a worker's exit, a timer firing. :meth:`SupervisorStateMachine.handle`
takes one event and the current monotonic time, updates the state, and returns
the *actions* the supervisor must carry out: spawn a worker, tell one to shut
down, kill one, start a timer, log a line, exit. The process, pipe, signal and
timer plumbing lives in :mod:`graceful.supervisor.loop` and does nothing but translate
between the world and these two vocabularies, so every rule below is testable with
plain function calls.

States
------
The state is held once: each worker's :class:`WorkerState` and each generation's
:class:`Role`. Which generation serves and which starts are read from the roles,
never stored beside them.

=========================  ===============================================  ====================
worker state               entered when                                     left when
=========================  ===============================================  ====================
``STARTING``               spawned                                          ready, told to stop,
                                                                            or exited
``READY``                  it reported ready                                told to drain, or
                                                                            exited
``DRAINING``               told to shut down (its generation retired, or    exited (it is then
                           the service stops)                               forgotten)
``PARKED``                 told to park (its generation was replaced, with  told to resume, or
                           probation on, and its server can be parked)      to shut down
``RESUMING``               told to resume (a rollback)                      ready, or exited
=========================  ===============================================  ====================

=========================  ===============================================  ====================
generation role            entered when                                     left when
=========================  ===============================================  ====================
``STARTING`` (at most 1)   started by ``Start`` or a reload                 promoted, or failed
``SERVING`` (at most 1)    every one of its workers is ready                replaced by the next
                                                                            one, or the stop
``RETIRED``                replaced, failed, or the service stops           its last worker
                                                                            exited (forgotten)
``PARKED`` (at most 1)     replaced, with probation on and every ready      the probation ends,
                           worker parkable                                  a rollback, the next
                                                                            promotion, the stop
``RESUMING`` (at most 1)   a rollback began                                 every worker resumed
                                                                            (serving) or none
                                                                            did (retired)
=========================  ===============================================  ====================

Events
------
======================  ==========================================================
event                   effect
======================  ==========================================================
``Start``               generation 1 starts
``ReloadRequested``     a generation starts; while one is starting, one follow-up
                        is queued; while stopping, ignored
``WorkerReady``         a starting generation is promoted once all its workers are
                        ready; a replacement rejoins its serving generation; a
                        worker of a retired generation is drained at once
``WorkerFailed``        the cause is kept for the worker's exit
``WorkerMisbehaved``    the worker is killed (and a starting generation fails)
``WorkerExited``        a starting generation fails; a serving worker is restarted
                        after a backoff; a draining one is forgotten
``ReadyTimeout``        a starting generation fails; a late replacement is killed
``DrainTimeout``        the worker is killed
``RestartDue``          the empty slot of the serving generation is filled
``StopRequested``       first: every worker drains and the listeners are released
                        (with ``stop_delay``: only announced, see below); second:
                        every worker is killed
``StopDelayOver``       the announced stop begins: every worker drains
``ProbationOver``       the parked generation is retired (it exits)
``WorkerBroken``        during its generation's probation: a rollback; while it
                        starts: the generation fails; else only logged
``RollbackRequested``   during a probation: a rollback; else refused, with why
``ScaleRequested``      the workers per generation change: the serving generation
                        (and one starting) start or drain workers to match
======================  ==========================================================

Rolling reloads and scaling
---------------------------
With ``strategy=ROLLING``, a reload starts ``max_surge`` new workers, and for each
new worker ready, one old worker of the serving generation is parked (or, with
``preload`` and no probation, drained), and the next new worker starts
(:meth:`SupervisorStateMachine._advance_rollout`): at most ``size + max_surge``
workers hold the listeners. The serving generation keeps its role until the new
one is promoted. If the new one fails, the parked old workers resume and empty
slots are refilled (:meth:`SupervisorStateMachine._restore_after_rollout`), so a
failed rollout never leaves a mixed fleet. A rolling reload needs old workers that
can be parked, or ``preload`` (whose template forks the old code again); else it
warns and replaces all at once. An old worker that crashes during a rollout is not
restarted: the rollout fills its room.

:attr:`SupervisorStateMachine.size` is the number of workers per generation.
``ScaleRequested`` changes it: the serving generation starts workers in the lowest
free slots, or drains its highest ones (those not ready first); a generation
starting all at once is resized the same way, a rolling one grows by itself. A
crash replacement due after a scale-down is dropped. Scaling is refused below 1,
above ``max_workers`` (the descriptor limit), while stopping or rolling back, and
upward after a rollback (the code on disk was rejected).

Probation and rollback
----------------------
With ``probation`` above 0, a promotion parks the previous generation instead of
draining it, if every one of its ready workers said it can be parked: its workers
stop accepting and drain, and stay alive with no listener. The new generation is
on probation (:attr:`SupervisorStateMachine.probation`) until ``ProbationOver``,
the next promotion, or the stop, which retire the parked one.

During the probation, an unexpected exit of a new worker, a ``WorkerBroken`` or a
``RollbackRequested`` starts a rollback: the parked generation's workers are told
to resume (the loop hands them the listeners again) and the generation becomes
``RESUMING``; the new generation keeps serving meanwhile. Once no worker is still
resuming, the parked generation serves again and the new one is retired; if none
resumed, the rollback failed and the new one keeps serving (its crashed slots are
refilled). No reload starts during a rollback: a request is queued, and a
generation that became ready meanwhile is promoted when the rollback ends.

After a rollback, the code on disk is the rejected code (:attr:`rejected`), until
the next promotion: a worker of the serving generation that dies is not replaced
while another one still serves; the last one is, loudly, as a last resort.

With ``stop_delay``, the first stop request only announces the stop
(:attr:`SupervisorStateMachine.stop_announced`, which health checks report) and
starts a timer; the service keeps serving, and restarting crashed workers, until
:class:`StopDelayOver`, or until a second request drains at once. Reloads are
ignored from the first request on.

Every generation started is announced (:class:`GenerationStarted`), and every
reload's end, either way (:class:`ReloadEnded`), so that whoever asked for a
reload can be told how it ended. A reload still starting when the service stops
ends as failed ("the service is stopping").

Invariants (checked by ``tests/test_decisions_properties.py`` over random event
sequences): at most one generation serves and at most one starts; each slot
names a live worker of its generation; no generation has more than ``size``
workers holding the listeners (those being killed aside); a rollout has at most
``size + max_surge``; once no reload or rollback runs, only the serving generation
has ready workers (never a mixed fleet); a worker is told to shut down at most
once and killed at most once, and never after its exit; nothing is spawned once
the service stops; ``Exit`` comes once, and only when no worker is left.

The rules (without probation):

* A **generation** is the set of ``workers`` processes started together. At most
  one generation is *serving*, at most one is *starting*; any number may be
  *retired* (draining, or failed and being cleaned up).
* A reload starts a new generation. While one is starting, further reload requests
  are coalesced into a single follow-up, started when the current one ends either
  way, so that the newest code on disk wins.
* A starting generation becomes the serving one when every worker has reported
  ready. Only then is the previous serving generation told to shut down.
* A starting generation *fails* if a worker exits, reports a failure, or misses
  ``ready_timeout``. The culprit is killed; its siblings, which may already have
  accepted connections, are drained like an old generation; the serving generation
  is untouched. If there is no serving generation (the first start), the
  supervisor exits with status 1 once everything is reaped.
* A worker that writes anything but a control message on its channel is killed;
  its exit is then handled like any other.
* A worker of the serving generation that exits unexpectedly is replaced after an
  exponential backoff. The backoff resets once a replacement has stayed ready for
  ``backoff_reset`` seconds.
* A draining worker that outlives ``drain_timeout`` (plus ``kill_grace`` for its
  cancelled handlers to clean up) is killed. When the service stops, a worker that
  never became ready is not waited for that long: it gets ``kill_grace`` to stop,
  then it is killed, without making the exit status 1.
* The first stop request drains every worker and releases the listeners the
  supervisor bound (new connections are refused, not queued for nobody); a second
  kills them all at once. The
  supervisor exits once no worker is left: 0 if every worker finished on its own,
  1 if any had to be killed or the first generation failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from enum import Enum

from graceful.core.actions import (
    STOPPING,
    SUPERSEDED,
    Action,
    Announce,
    Exit,
    GenerationServing,
    GenerationStarted,
    KillWorker,
    Log,
    ParkWorker,
    Phase,
    ProbationEnded,
    ReloadEnded,
    ReloadOutcome,
    ResumeWorker,
    RollbackEnded,
    ScaleEnded,
    ShutdownWorker,
    SpawnWorker,
    StartTimer,
    StopAccepting,
    WorkerOrder,
)
from graceful.core.events import (
    DrainTimeout,
    Event,
    ProbationOver,
    ReadyTimeout,
    ReloadRequested,
    RestartDue,
    RollbackRequested,
    ScaleRequested,
    Start,
    StopDelayOver,
    StopRequested,
    WorkerBroken,
    WorkerEvent,
    WorkerExited,
    WorkerFailed,
    WorkerMisbehaved,
    WorkerReady,
)

__all__ = [
    "STOPPING",
    "SUPERSEDED",
    "Action",
    "Announce",
    "DrainTimeout",
    "Event",
    "Exit",
    "GenerationServing",
    "GenerationStarted",
    "KillWorker",
    "Log",
    "ParkWorker",
    "Phase",
    "ProbationEnded",
    "ProbationOver",
    "ReadyTimeout",
    "ReloadEnded",
    "ReloadOutcome",
    "ReloadRequested",
    "RestartDue",
    "ResumeWorker",
    "RollbackEnded",
    "RollbackRequested",
    "ScaleEnded",
    "ScaleRequested",
    "ShutdownWorker",
    "SpawnWorker",
    "Start",
    "StartTimer",
    "StopAccepting",
    "StopDelayOver",
    "StopRequested",
    "WorkerBroken",
    "WorkerEvent",
    "WorkerExited",
    "WorkerFailed",
    "WorkerMisbehaved",
    "WorkerOrder",
    "WorkerReady",
]

# --- state -------------------------------------------------------------------------


class Strategy(Enum):
    """How a reload replaces the serving generation's workers."""

    #: start every new worker at once; the old ones drain once all are ready
    ALL_AT_ONCE = "all-at-once"
    #: start ``max_surge`` new workers at a time; park an old one per new one ready
    ROLLING = "rolling"


@dataclass(frozen=True)
class Settings:
    """The supervisor's settings, all in seconds except ``workers``, ``strategy`` and
    ``max_surge``."""

    #: workers per generation at the start (scaling changes
    #: :attr:`SupervisorStateMachine.size`)
    workers: int = 1
    ready_timeout: float = 30.0
    #: how long a parked worker has to be ready again once told to resume (at most
    #: ``ready_timeout``): its code is loaded, so this takes milliseconds, and a
    #: rollback must not wait for one that is stopped or stuck
    resume_timeout: float = 3.0
    drain_timeout: float = 30.0
    kill_grace: float = 2.0
    backoff_initial: float = 0.1
    backoff_max: float = 30.0
    backoff_reset: float = 10.0
    #: after the first stop request, keep serving this long before draining (while
    #: health checks already report the stop)
    stop_delay: float = 0.0
    #: after a reload, keep the previous generation parked this long, for a rollback
    #: (0: no probation, the previous generation exits once drained)
    probation: float = 0.0
    strategy: Strategy = Strategy.ALL_AT_ONCE
    #: with the rolling strategy: new workers started beyond ``workers`` at a time
    max_surge: int = 1
    #: scaling above this is refused (the descriptor limit's reckoning); None: no cap
    max_workers: int | None = None
    #: one import per generation: a worker started into a generation at any time
    #: runs that generation's code (it is forked from the generation's template)
    preload: bool = False
    #: development mode (``--watch``): a newer change supersedes a generation still
    #: starting, and a generation that fails with nothing serving waits for the next
    #: change instead of stopping the service
    development: bool = False


class WorkerState(Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    #: told to park: no listener, code loaded, waiting to be resumed or shut down
    PARKED = "parked"
    #: a parked worker told to resume, until it reports ready
    RESUMING = "resuming"


class Role(Enum):
    STARTING = "starting"
    SERVING = "serving"
    RETIRED = "retired"
    #: the previous generation, kept through the serving one's probation
    PARKED = "parked"
    #: a parked generation being brought back by a rollback
    RESUMING = "resuming"


@dataclass
class Worker:
    serial: int
    generation: int
    worker_id: int
    started_at: float
    state: WorkerState = WorkerState.STARTING
    ready_at: float | None = None
    cause: str | None = None
    #: ``cause`` is what the worker itself reported (a ``Failed`` message): a noun
    #: phrase, said as "failed: CAUSE"
    reported: bool = False
    killed: bool = False
    #: told to stop while still starting (by a stop of the service): it gets only
    #: ``kill_grace`` to finish
    abandoned: bool = False
    #: its server can be parked and resumed (it said so when it became ready)
    parkable: bool = False
    #: started from the code on disk after that code was rolled back (the last
    #: resort of the rejected-code rule)
    runs_rejected_code: bool = False
    #: it declared itself broken (only the first declaration counts)
    declared_broken: bool = False


@dataclass
class Counters:
    """What happened since the supervisor started, for status and metrics."""

    reloads_serving: int = 0
    reloads_failed: int = 0
    #: serving workers that exited unexpectedly
    worker_crashes: int = 0
    #: replacements spawned for them
    worker_restarts: int = 0
    #: rollbacks to a parked generation that completed
    rollbacks: int = 0


@dataclass
class Generation:
    number: int
    role: Role
    started_at: float
    #: worker_id -> serial of the process currently in that slot (absent while a
    #: crashed worker waits for its replacement)
    slots: dict[int, int] = field(default_factory=dict)
    #: serials of workers that left their slot while the generation goes on (scaled
    #: down, replaced by a rollout) and still drain: their slot may be refilled
    leaving: set[int] = field(default_factory=set)
    #: worker_id -> consecutive crashes, for the backoff
    crashes: dict[int, int] = field(default_factory=dict)
    #: worker_id -> how its last crash happened (one line), for ``status``
    crash_causes: dict[int, str] = field(default_factory=dict)
    #: started by a rolling reload: its workers come ``max_surge`` at a time
    rolling: bool = False
    #: workers started into it after it started (crash replacements, scaling up):
    #: they imported the code on disk at their own start
    late_spawns: int = 0


@dataclass(frozen=True)
class Probation:
    """Generation ``generation`` serves on probation until ``until``; generation
    ``parked`` waits, parked, to be resumed if it fails."""

    generation: int
    parked: int
    started_at: float
    until: float


@dataclass(frozen=True)
class Rollback:
    """A rollback under way: generation ``to_generation`` is resuming, and
    ``from_generation`` will be drained once it has."""

    from_generation: int
    to_generation: int
    cause: str
    started_at: float


@dataclass(frozen=True)
class RejectedCode:
    """Generation ``generation`` was rolled back because of ``cause``: the code on
    disk is the rejected one until the next reload."""

    generation: int
    cause: str
    #: the generation that serves again
    serving: int


class Stopping(Enum):
    NO = "no"
    DRAINING = "draining"
    NOW = "now"


class SupervisorStateMachine:
    """The supervisor's state and rules. See the module docstring.

    Call :meth:`handle` with each event in the order it happened; carry out the
    returned actions in order.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: live workers by serial (a worker is forgotten once it has exited)
        self.workers: dict[int, Worker] = {}
        #: generations by number, until they are retired and empty
        self.generations: dict[int, Generation] = {}
        self.reload_queued = False
        self.stopping = Stopping.NO
        self.exit_code = 0
        self.exited = False
        #: how the last reload ended, for status reporting
        self.last_reload: ReloadOutcome | None = None
        self.counters = Counters()
        #: a stop was asked for with ``stop_delay``: still serving, until this time
        self.stop_delayed_until: float | None = None
        #: why the service stops, if not by request
        self.stop_reason: str | None = None
        #: the serving generation's probation, while one runs
        self.probation: Probation | None = None
        #: the rollback under way, if any
        self.rollback: Rollback | None = None
        #: set by a completed rollback, until the next generation is promoted: crashed
        #: workers are not restarted from the (rejected) code on disk
        self.rejected: RejectedCode | None = None
        #: workers per generation, as scaling left it
        self.size = settings.workers
        self._now = 0.0
        self._next_serial = 1
        self._next_generation = 1
        self._actions: list[Action] = []

    @property
    def serving(self) -> int | None:
        """The number of the generation that serves, if any."""
        return self._with_role(Role.SERVING)

    @property
    def starting(self) -> int | None:
        """The number of the generation that is starting, if any."""
        return self._with_role(Role.STARTING)

    @property
    def accepting(self) -> int:
        """How many workers accept connections now (ready, of whichever generation)."""
        return sum(1 for worker in self.workers.values() if worker.state is WorkerState.READY)

    def _with_role(self, role: Role) -> int | None:
        generation = self._generation_with(role)
        return generation.number if generation is not None else None

    def _generation_with(self, role: Role) -> Generation | None:
        for generation in self.generations.values():
            if generation.role is role:
                return generation
        return None

    # -- entry point ----------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply ``event`` at monotonic time ``now``; return the actions to carry out."""
        self._actions = []
        self._now = now
        if self.exited:
            return []
        match event:
            case Start():
                self._start_generation(now)
            case ReloadRequested():
                if self.settings.development:
                    self._supersede_starting(now)
                self._on_reload()
                if self.starting is None and self.rollback is None and not self.stop_announced:
                    self._start_generation(now)
            case StopRequested():
                self._on_stop_requested(now)
            case StopDelayOver():
                if self.stop_delayed_until is not None and self.stopping is Stopping.NO:
                    self._on_stop(now)
            case WorkerReady(serial, parkable):
                self._on_ready(serial, parkable, now)
            case WorkerFailed(serial, cause):
                self._on_failed(serial, cause)
            case WorkerMisbehaved(serial, detail):
                self._on_misbehaved(serial, detail, now)
            case WorkerExited(serial, exitcode):
                self._on_exit(serial, exitcode, now)
            case ReadyTimeout(serial):
                self._on_ready_timeout(serial, now)
            case DrainTimeout(serial):
                self._on_drain_timeout(serial)
            case RestartDue(generation, worker_id):
                self._on_restart_due(generation, worker_id)
            case WorkerBroken(serial, cause):
                self._on_broken(serial, cause, now)
            case RollbackRequested(by):
                self._on_rollback_requested(by, now)
            case ProbationOver(generation):
                self._on_probation_over(generation)
            case ScaleRequested():
                self._on_scale(event, now)
        self._maybe_exit()
        return self._actions

    # -- helpers that emit actions --------------------------------------------------

    def _log(self, level: int, message: str, *, narrative: bool = False) -> None:
        self._actions.append(Log(level, message, narrative))

    def _spawn(self, generation: Generation, worker_id: int) -> None:
        serial = self._next_serial
        self._next_serial += 1
        self.workers[serial] = Worker(serial, generation.number, worker_id, self._now)
        generation.slots[worker_id] = serial
        if generation.role is Role.SERVING:
            generation.late_spawns += 1
        self._actions.append(SpawnWorker(serial, generation.number, worker_id))
        self._actions.append(StartTimer(self.settings.ready_timeout, ReadyTimeout(serial)))

    def _drain(self, worker: Worker, *, stopping: bool = False) -> None:
        if worker.state is WorkerState.DRAINING:
            return
        if stopping and worker.ready_at is None:
            # A worker that never became ready when the service stops: its start is
            # abandoned. It has promised nothing, but it holds the listeners, so it
            # gets kill_grace rather than drain_timeout to let go of them.
            worker.state = WorkerState.DRAINING
            worker.abandoned = True
            self._actions.append(ShutdownWorker(worker.serial, self.settings.kill_grace))
            self._actions.append(
                StartTimer(2 * self.settings.kill_grace, DrainTimeout(worker.serial))
            )
            return
        worker.state = WorkerState.DRAINING
        self._actions.append(ShutdownWorker(worker.serial, self.settings.drain_timeout))
        self._actions.append(
            StartTimer(
                self.settings.drain_timeout + self.settings.kill_grace, DrainTimeout(worker.serial)
            )
        )

    def _release(self, worker: Worker) -> None:
        """Drain ``worker`` out of its generation, which goes on without it: its slot
        is free at once (so worker ids stay below :attr:`size`; a worker that drains
        may share its id with its successor for a moment, as across generations)."""
        self._drain(worker)
        generation = self.generations[worker.generation]
        if generation.slots.get(worker.worker_id) == worker.serial:
            del generation.slots[worker.worker_id]
            generation.leaving.add(worker.serial)

    def _resume(self, worker: Worker) -> None:
        """Tell a parked worker to resume; it has ``ready_timeout`` to be ready again."""
        worker.state = WorkerState.RESUMING
        self._actions.append(ResumeWorker(worker.serial))
        self._actions.append(StartTimer(self._resume_timeout, ReadyTimeout(worker.serial)))

    @property
    def _resume_timeout(self) -> float:
        return min(self.settings.resume_timeout, self.settings.ready_timeout)

    def _kill(self, worker: Worker) -> None:
        if worker.killed or worker.serial not in self.workers:
            # already killed, or already exited: there is nothing left to kill
            return
        worker.killed = True
        self._actions.append(KillWorker(worker.serial))

    def _describe(self, worker: Worker) -> str:
        return f"generation {worker.generation} worker {worker.worker_id}"

    def _announce(self, phase: Phase, extend: float | None = None) -> None:
        self._actions.append(Announce(phase, self.status(), extend))

    def status(self) -> str:
        """One line on the service's state, for ``STATUS=``."""
        if self.stopping is not Stopping.NO:
            line = f"stopping: {self.stop_reason or f'{len(self.workers)} workers draining'}"
        elif self.stop_delayed_until is not None:
            line = f"stopping after stop_delay={self.settings.stop_delay:g}s, still serving"
        elif self.serving is None:
            line = "starting generation 1"
        else:
            generation = self.generations[self.serving]
            ready = sum(
                1
                for serial in generation.slots.values()
                if self.workers[serial].state is WorkerState.READY
            )
            line = f"generation {self.serving} serving, {ready}/{self.size} workers ready"
            if self.probation is not None:
                left = max(0.0, self.probation.until - self._now)
                parked = (
                    f"generation {self.probation.parked} parked"
                    if self.probation.parked in self.generations
                    else "nothing left to roll back to"
                )
                line += f" (probation, {left:.0f}s left; {parked})"
            if self.rollback is not None:
                line += f"; rolling back to generation {self.rollback.to_generation}"
            if self.rejected is not None:
                line += (
                    f"; rolled back from generation {self.rejected.generation}: "
                    f"{self.rejected.cause}"
                )
                empty = self._empty_slots(generation)
                if empty:
                    line += f"; {empty} slot(s) empty until the next reload"
            starting = self._generation_with(Role.STARTING)
            if starting is not None and starting.rolling:
                done = len(self._workers_in(starting, WorkerState.READY))
                line += f"; generation {starting.number} rolling in, {done}/{self.size} ready"
            elif starting is not None:
                line += f"; generation {starting.number} starting"
        if self.last_reload is not None:
            line += f"; last reload: {self.last_reload}"
        return line

    # -- rules ----------------------------------------------------------------------

    def _start_generation(self, now: float) -> None:
        number = self._next_generation
        self._next_generation += 1
        first = self.serving is None
        generation = Generation(number, Role.STARTING, started_at=now)
        self.generations[number] = generation
        self._actions.append(GenerationStarted(number, first))
        generation.rolling = self._may_roll()
        batches = 1
        if generation.rolling:
            surge = self.settings.max_surge
            batches = -(-self.size // surge)
            self._log(
                logging.INFO,
                f"starting generation {number} ({self.size} workers, rolling: {surge} at a time)",
                narrative=not first,
            )
            self._advance_rollout()
        else:
            self._log(
                logging.INFO,
                f"starting generation {number} ({self.size} workers)",
                narrative=not first,
            )
            for worker_id in range(self.size):
                self._spawn(generation, worker_id)
        wait = batches * self.settings.ready_timeout + self.settings.kill_grace
        self._announce(Phase.STARTING if self.serving is None else Phase.RELOADING, extend=wait)

    def _may_roll(self) -> bool:
        """Whether a reload starting now replaces the serving workers a few at a time:
        the rolling strategy, and every serving worker can be parked (the old code
        must stay at hand until the rollout completes, see :meth:`_advance_rollout`)."""
        serving = self._generation_with(Role.SERVING)
        if self.settings.strategy is not Strategy.ROLLING or serving is None:
            return False
        ready = self._workers_in(serving, WorkerState.READY)
        if self.settings.preload or (ready and all(worker.parkable for worker in ready)):
            return True
        self._log(
            logging.WARNING,
            f"rolling reload not possible: generation {serving.number}'s workers cannot be "
            "parked (their server does not take part: see Context.ready(parkable=True)) and "
            "there is no template to fork them again (preload), so a failed rollout could not "
            "bring their code back; replacing all workers at once",
        )
        return False

    def _members(self, generation: Generation) -> list[Worker]:
        """``generation``'s workforce: its workers not draining (parked ones included:
        they return if a rollout fails; one being killed too: it is replaced once it
        has exited)."""
        return [
            worker
            for worker in (self.workers[serial] for serial in generation.slots.values())
            if worker.state is not WorkerState.DRAINING
        ]

    def _holders(self, generation: Generation) -> list[Worker]:
        """``generation``'s workers that hold the listeners, or are about to: starting,
        ready or resuming (or being killed)."""
        return [
            worker for worker in self._members(generation) if worker.state is not WorkerState.PARKED
        ]

    def _free_ids(self, generation: Generation, count: int) -> list[int]:
        """The ``count`` lowest worker ids with no process in ``generation``."""
        free: list[int] = []
        worker_id = 0
        while len(free) < count:
            if worker_id not in generation.slots:
                free.append(worker_id)
            worker_id += 1
        return free

    def _advance_rollout(self) -> None:
        """Take a rolling reload one step further: for each new worker ready, park
        (or drain) one old one; then start new workers while fewer than
        ``size + max_surge`` hold the listeners.

        Never a mixed fleet: if a new worker fails, every replaced slot returns to
        the old code. Without preload, the replaced workers stay parked until the
        new generation is promoted, and resume. With preload, they drain and exit
        (unless a probation wants them parked), and the old generation's template
        forks their replacements."""
        starting = self._generation_with(Role.STARTING)
        if (
            starting is None
            or not starting.rolling
            or self.rollback is not None
            or self.stopping is not Stopping.NO
        ):
            return
        serving = self._generation_with(Role.SERVING)
        old = self._holders(serving) if serving is not None else []
        ready_new = len(self._workers_in(starting, WorkerState.READY))
        while len(old) + ready_new > self.size:
            alive = [worker for worker in old if not worker.killed]
            ready_old = [worker for worker in alive if worker.state is WorkerState.READY]
            if not alive:
                break  # only workers being killed: their exits make the room
            replaced = max(ready_old or alive, key=lambda worker: worker.worker_id)
            old.remove(replaced)
            keep = not self.settings.preload or self.settings.probation > 0
            if replaced.state is WorkerState.READY and replaced.parkable and keep:
                replaced.state = WorkerState.PARKED
                self._actions.append(ParkWorker(replaced.serial, self.settings.drain_timeout))
            else:
                self._release(replaced)
        members = self._members(starting)
        room = self.size + self.settings.max_surge - len(old) - len(members)
        if room < 0:
            # scaled down during the rollout: call off new workers still starting
            # (the latest first) rather than exceed the cap
            starting_up = sorted(
                (w for w in members if w.state is WorkerState.STARTING and not w.killed),
                key=lambda worker: -worker.worker_id,
            )
            for worker in starting_up[:-room]:
                self._release(worker)
        for worker_id in self._free_ids(starting, min(room, self.size - len(members))):
            self._spawn(starting, worker_id)

    @property
    def stop_announced(self) -> bool:
        """True from the first stop request on (for health checks), ``stop_delay``
        included."""
        return self.stopping is not Stopping.NO or self.stop_delayed_until is not None

    def _on_reload(self) -> None:
        if self.stop_announced:
            self._log(logging.INFO, "reload ignored: the service is stopping")
        elif self.rollback is not None:
            if not self.reload_queued:
                self._log(logging.INFO, "reload requested during a rollback; it will follow it")
            self.reload_queued = True
        elif self.starting is not None:
            if not self.reload_queued:
                self._log(
                    logging.INFO,
                    f"reload requested while generation {self.starting} is starting; "
                    "one more reload will follow it",
                    narrative=True,
                )
            self.reload_queued = True

    def _on_ready(self, serial: int, parkable: bool, now: float) -> None:
        worker = self.workers.get(serial)
        if worker is None or worker.killed:
            # a worker being killed (it missed ready_timeout) is not revived by a late
            # report: its kill is already on its way
            return
        if worker.state is WorkerState.RESUMING:
            worker.state = WorkerState.READY
            worker.parkable = parkable
            if self.generations[worker.generation].role is Role.SERVING:
                # parked by a rollout that failed
                self._log(logging.INFO, f"{self._describe(worker)} is back in service")
                self._announce(Phase.STATUS)
            self._rollback_progress(now)
            return
        if worker.state is not WorkerState.STARTING:
            return
        worker.state = WorkerState.READY
        worker.ready_at = now
        worker.parkable = parkable
        generation = self.generations[worker.generation]
        if generation.role is Role.SERVING:
            if generation.crashes.get(worker.worker_id):
                self._log(logging.INFO, f"{self._describe(worker)} is back in service")
            else:  # scaled up, or refilled after a failed rollout
                ready = len(self._workers_in(generation, WorkerState.READY))
                self._log(
                    logging.INFO,
                    f"{self._describe(worker)} is ready ({ready}/{self.size} workers ready)",
                )
            self._announce(Phase.STATUS)
        elif generation.role is Role.RETIRED or self.stopping is not Stopping.NO:
            self._drain(worker)
        else:
            self._advance_rollout()
            self._promote_if_ready(now)

    def _promote_if_ready(self, now: float) -> None:
        """Promote the starting generation once all its workers are ready; during a
        rollback, only once the rollback has ended (then the newer code wins)."""
        starting = self.starting
        if starting is None or self.rollback is not None:
            return
        generation = self.generations[starting]
        members = self._members(generation)
        if len(members) == self.size and all(w.state is WorkerState.READY for w in members):
            self._promote(generation, now)

    def _promote(self, generation: Generation, now: float) -> None:
        previous = self.serving
        if previous is not None:
            self.generations[previous].role = Role.RETIRED  # drained below
        generation.role = Role.SERVING
        took = now - generation.started_at
        self._actions.append(GenerationServing(generation.number, first=previous is None))
        if previous is None:
            self._log(
                logging.INFO, f"generation {generation.number} is serving (ready in {took:.3f}s)"
            )
            if self.last_reload is not None:
                # development mode: the first to serve after failed ones (see
                # _fail_generation), which was waited for as a reload is
                self._reload_served(generation, took)
        else:
            self._reload_served(generation, took)
            self.rejected = None
            self._end_probation("cut short", f"generation {generation.number} replaced it")
            parked = self._park(self.generations[previous], generation, now)
            then = (
                f"generation {previous} parked for {self.settings.probation:g}s of probation"
                if parked
                else f"draining generation {previous}"
            )
            self._log(
                logging.INFO,
                f"generation {generation.number} is serving (ready in {took:.3f}s); {then}",
                narrative=True,
            )
        self._announce(Phase.READY)
        self._follow_queued_reload(now)

    # -- probation and rollback -----------------------------------------------------

    def _park(self, previous: Generation, promoted: Generation, now: float) -> bool:
        """Park ``previous`` for ``promoted``'s probation if it can be (probation is
        on, and every ready worker's server takes part); else retire it. True if
        parked."""
        ready = self._workers_in(previous, WorkerState.READY)
        # a rolling reload parked them already, as it replaced them
        parked = self._workers_in(previous, WorkerState.PARKED)
        if self.settings.probation <= 0 or not (ready or parked):
            self._retire(previous)
            return False
        if any(worker.runs_rejected_code for worker in ready + parked):
            self._log(
                logging.WARNING,
                f"generation {previous.number} is not parked: it runs code that was rolled "
                "back, so it is no rollback target",
            )
            self._retire(previous)
            return False
        if not all(worker.parkable for worker in ready):
            self._log(
                logging.INFO,
                f"generation {previous.number} cannot be parked (its server does not take "
                "part in probation: see Context.wait_resume); no rollback is possible",
            )
            self._retire(previous)
            return False
        previous.role = Role.PARKED
        for serial in list(previous.slots.values()):
            worker = self.workers[serial]
            if worker in ready:
                worker.state = WorkerState.PARKED
                self._actions.append(ParkWorker(serial, self.settings.drain_timeout))
            elif worker in parked:
                continue  # parked by the rollout as it replaced it: kept for the rollback
            elif not worker.killed:
                self._drain(worker)  # a replacement still starting: not worth keeping
        self.probation = Probation(
            promoted.number, previous.number, now, now + self.settings.probation
        )
        self._actions.append(StartTimer(self.settings.probation, ProbationOver(promoted.number)))
        return True

    def _workers_in(self, generation: Generation, state: WorkerState) -> list[Worker]:
        """``generation``'s workers in ``state``, those being killed left out."""
        return [
            worker
            for worker in (self.workers[serial] for serial in generation.slots.values())
            if worker.state is state and not worker.killed
        ]

    def _end_probation(self, outcome: str, detail: str) -> None:
        """End the running probation, if any, without a rollback: the parked
        generation exits."""
        probation = self.probation
        if probation is None:
            return
        self.probation = None
        parked = self.generations.get(probation.parked)
        if parked is not None and parked.role is Role.PARKED:
            self._retire(parked)
        self._actions.append(ProbationEnded(probation.generation, outcome, detail))

    def _on_probation_over(self, number: int) -> None:
        probation = self.probation
        if probation is None or probation.generation != number:
            return
        self._log(
            logging.INFO,
            f"generation {number} passed its probation ({self.settings.probation:g}s); "
            f"parked generation {probation.parked} exits",
        )
        self._end_probation("passed", f"passed {self.settings.probation:g}s of probation")
        self._announce(Phase.STATUS)

    def _on_broken(self, serial: int, cause: str, now: float) -> None:
        worker = self.workers.get(serial)
        if (
            worker is None
            or worker.killed
            or worker.declared_broken
            or worker.state is WorkerState.DRAINING
        ):
            return
        worker.declared_broken = True
        generation = self.generations[worker.generation]
        declared = f"worker {worker.worker_id} declared itself broken: {cause}"
        if generation.role is Role.STARTING:
            worker.cause = worker.cause or f"declared itself broken: {cause}"
            self._fail_generation(generation, worker, declared, now)
        elif (
            generation.role is Role.SERVING
            and self.probation is not None
            and self.probation.generation == generation.number
        ):
            self._roll_back(f"generation {generation.number} {declared}", now)
        else:
            self._log(
                logging.WARNING,
                f"{self._describe(worker)} declared itself broken ({cause}); there is no "
                "probation to roll back from, so it goes on",
            )

    def _on_rollback_requested(self, by: str, now: float) -> None:
        if self.stopping is not Stopping.NO:
            refused = "the service is stopping"
        elif self.rollback is not None:
            return  # it is answered when the rollback under way ends
        elif self.probation is None:
            refused = "no generation is parked (no reload on probation)"
        elif not self._roll_back(
            f"generation {self.probation.generation} rolled back by {by}", now
        ):
            refused = "no parked worker is left to resume"
        else:
            return
        self._log(logging.WARNING, f"rollback requested by {by} refused: {refused}")
        self._actions.append(RollbackEnded(False, f"nothing to roll back to: {refused}"))

    def _roll_back(self, cause: str, now: float) -> bool:
        """Resume the parked generation in place of the one on probation. False (and
        the probation goes on) if no parked worker is left."""
        probation = self.probation
        if probation is None or self.rollback is not None:
            return False
        parked = self.generations.get(probation.parked)
        resumable = self._workers_in(parked, WorkerState.PARKED) if parked is not None else []
        if parked is None or not resumable:
            self._log(
                logging.ERROR,
                f"cannot roll back ({cause}): parked generation {probation.parked} has no "
                "worker left",
            )
            return False
        self.probation = None
        parked.role = Role.RESUMING
        resumable.sort(key=lambda worker: worker.worker_id)
        for worker in resumable[self.size :]:  # scaled down since it was parked
            self._release(worker)
        for worker in resumable[: self.size]:
            self._resume(worker)
        self.rollback = Rollback(probation.generation, parked.number, cause, now)
        self._log(
            logging.ERROR,
            f"rolling back: {cause}; parked generation {parked.number} resumes",
            narrative=True,
        )
        self._announce(Phase.STATUS)
        return True

    def _rollback_progress(self, now: float) -> None:
        """Complete the rollback once no worker of the resuming generation is still
        resuming; fail it if none resumed."""
        rollback = self.rollback
        if rollback is None:
            return
        target = self.generations.get(rollback.to_generation)
        workers = [self.workers[serial] for serial in target.slots.values()] if target else []
        if any(worker.state is WorkerState.RESUMING for worker in workers):
            return
        self.rollback = None
        rejected = self.generations.get(rollback.from_generation)
        if target is None or not any(w.state is WorkerState.READY for w in workers):
            if target is not None:
                self._retire(target)
            detail = (
                f"rollback to generation {rollback.to_generation} failed: no worker resumed; "
                f"generation {rollback.from_generation} keeps serving"
            )
            self._log(logging.ERROR, detail, narrative=True)
            self._actions.append(RollbackEnded(False, detail))
            self._actions.append(
                ProbationEnded(rollback.from_generation, "rollback failed", rollback.cause)
            )
            if rejected is not None:
                self._refill(rejected)
        else:
            self._complete_rollback(rollback, target, rejected, now)
        self._announce(Phase.READY)
        self._promote_if_ready(now)
        self._follow_queued_reload(now)

    def _complete_rollback(
        self, rollback: Rollback, target: Generation, rejected: Generation | None, now: float
    ) -> None:
        """The resumed generation serves again; the one rolled back drains."""
        target.role = Role.SERVING
        if rejected is not None:
            self._retire(rejected)
        took = now - rollback.started_at
        self.counters.rollbacks += 1
        self.rejected = RejectedCode(rollback.from_generation, rollback.cause, target.number)
        last = self.last_reload
        if last is not None and last.generation == rollback.from_generation:
            self.last_reload = replace(last, outcome="rolled back", cause=rollback.cause)
        self._log(
            logging.ERROR,
            f"rolled back: generation {target.number} serves again (resumed in {took:.3f}s), "
            f"generation {rollback.from_generation} drains. Until the next reload, crashed "
            "workers are not restarted from the code on disk, which was rolled back",
            narrative=True,
        )
        self._actions.append(
            RollbackEnded(
                True,
                f"generation {target.number} serves again (resumed in {took:.3f}s); "
                f"generation {rollback.from_generation} rolled back: {rollback.cause}",
            )
        )
        self._actions.append(
            ProbationEnded(rollback.from_generation, "rolled back", rollback.cause)
        )
        empty = self._empty_slots(target)
        if empty:
            self._log(
                logging.ERROR,
                f"generation {target.number} serves with {self.size - empty}/{self.size} "
                f"workers: {empty} slot(s) (added since it was parked, or whose parked worker "
                "did not resume) stay empty until the next reload, as they would start the "
                "code on disk, which was rolled back",
            )

    def empty_slots(self) -> int:
        """How many of the serving generation's slots have no worker, not even one
        starting (after a rollback, the rejected-code rule leaves them so)."""
        serving = self._generation_with(Role.SERVING)
        return self._empty_slots(serving) if serving is not None else 0

    def _empty_slots(self, generation: Generation) -> int:
        """How many of ``generation``'s slots have no worker (not even one starting)."""
        return max(0, self.size - len(self._members(generation)))

    def _retire(self, generation: Generation) -> None:
        generation.role = Role.RETIRED
        if not generation.slots and not generation.leaving:
            self.generations.pop(generation.number, None)
            return
        for serial in list(generation.slots.values()):
            worker = self.workers.get(serial)
            if worker is not None and not worker.killed:
                self._drain(worker)

    def _follow_queued_reload(self, now: float) -> None:
        if (
            self.reload_queued
            and not self.stop_announced
            and self.starting is None
            and self.rollback is None
        ):
            self.reload_queued = False
            self._start_generation(now)

    def _fail_generation(
        self, generation: Generation, culprit: Worker, cause: str, now: float
    ) -> None:
        self._kill(culprit)
        self._retire_starting(generation)
        if self.serving is None and self.settings.development:
            # nothing serves yet, and the next change may fix it: wait for it
            self._reload_failed(generation, cause, now)
            self._log(
                logging.ERROR,
                f"generation {generation.number} failed to start: {cause}; waiting for a change",
                narrative=True,
            )
            self._announce(Phase.STATUS)
            self._follow_queued_reload(now)
            return
        if self.serving is None:
            self._log(logging.ERROR, f"generation {generation.number} failed to start: {cause}")
            self.stop_reason = f"generation {generation.number} failed to start: {cause}"
            self._begin_stop(Stopping.DRAINING, exit_code=1, now=now)
            return
        self._reload_failed(generation, cause, now)
        self._log(
            logging.ERROR,
            f"reload failed: generation {generation.number}: {cause}; "
            f"generation {self.serving} keeps serving",
            narrative=True,
        )
        self._announce(Phase.READY)
        self._follow_queued_reload(now)

    def _supersede_starting(self, now: float) -> None:
        """Development mode: a change arrived while a generation starts. It will never
        serve the newest code, and it may hang: its workers still starting are
        killed, those ready drain, and the reload ends as superseded."""
        starting = self._generation_with(Role.STARTING)
        if starting is None or self.rollback is not None or self.stop_announced:
            return
        for worker in self._members(starting):
            if worker.state is WorkerState.STARTING:
                worker.cause = worker.cause or SUPERSEDED
                self._kill(worker)
        self._retire_starting(starting)
        self._reload_failed(starting, SUPERSEDED, now)

    def _retire_starting(self, generation: Generation) -> None:
        """A starting generation will not serve: it drains, and if it was rolling in,
        the serving generation gets back every slot it had replaced."""
        self._retire(generation)
        serving = self._generation_with(Role.SERVING)
        if generation.rolling and serving is not None:
            self._restore_after_rollout(serving)

    def _restore_after_rollout(self, serving: Generation) -> None:
        """A rolling reload failed: the old workers it parked resume (as many as the
        generation has room for), and empty slots are refilled, so that every slot
        runs the serving generation's code again."""
        parked = sorted(
            self._workers_in(serving, WorkerState.PARKED), key=lambda worker: worker.worker_id
        )
        room = self.size - len(self._holders(serving))
        for worker in parked[:room]:
            self._resume(worker)
        for worker in parked[room:]:
            self._release(worker)
        if parked:
            self._log(
                logging.INFO,
                f"resuming {min(len(parked), max(room, 0))} parked worker(s) of generation "
                f"{serving.number}, replaced by the failed rollout",
            )
        self._refill(serving)

    def _refill(self, generation: Generation) -> None:
        """Schedule a start for each worker ``generation`` lacks (after a failed
        rollout or rollback), after the initial backoff."""
        missing = self.size - len(self._members(generation))
        for worker_id in self._free_ids(generation, max(missing, 0)):
            self._actions.append(
                StartTimer(self.settings.backoff_initial, RestartDue(generation.number, worker_id))
            )

    def _reload_served(self, generation: Generation, took: float) -> None:
        self.last_reload = ReloadOutcome(generation.number, "serving", None, took)
        self.counters.reloads_serving += 1
        self._actions.append(ReloadEnded(self.last_reload))

    def _reload_failed(self, generation: Generation, cause: str, now: float) -> None:
        self.last_reload = ReloadOutcome(
            generation.number, "failed", cause, now - generation.started_at
        )
        self.counters.reloads_failed += 1
        self._actions.append(ReloadEnded(self.last_reload))

    def _on_exit(self, serial: int, exitcode: int | None, now: float) -> None:
        worker = self.workers.pop(serial, None)
        if worker is None:
            return
        generation = self.generations[worker.generation]
        if generation.slots.get(worker.worker_id) == serial:
            del generation.slots[worker.worker_id]
        generation.leaving.discard(serial)
        how = worker.cause or _exit_description(exitcode)
        # what it did, as a verb phrase ("generation 1 worker 2 failed: RuntimeError...")
        did = f"failed: {how}" if worker.reported else how
        if worker.state is WorkerState.DRAINING:
            if worker.killed or exitcode in (0, None):
                pass
            elif worker.ready_at is None and generation.role is Role.RETIRED:
                # a sibling of the worker that failed its generation: the same cause,
                # most likely, already reported
                self._log(
                    logging.INFO,
                    f"{self._describe(worker)} also failed before it was ready: {how}",
                    narrative=True,
                )
            else:
                self._log(logging.WARNING, f"{self._describe(worker)} exited while draining: {how}")
        elif worker.state is WorkerState.PARKED:
            self._log(
                logging.WARNING, f"parked {self._describe(worker)} {did}; it cannot be resumed"
            )
        elif worker.state is WorkerState.RESUMING:
            if not worker.killed:  # a kill was logged with its reason
                self._log(logging.WARNING, f"{self._describe(worker)} {did} while resuming")
            if generation.role is Role.SERVING and self.stopping is Stopping.NO:
                # resumed after a failed rollout: its slot is refilled as for a crash
                self._schedule_restart(generation, worker, did, now)
            self._rollback_progress(now)
        elif generation.role is Role.STARTING:
            when = (
                "before it was ready"
                if worker.state is WorkerState.STARTING
                else "after it was ready"
            )
            cause = (
                f"worker {worker.worker_id} {how} {when}"
                if worker.cause is None
                else (f"worker {worker.worker_id}: {how}")
            )
            self._fail_generation(generation, worker, cause, now)
        elif generation.role is Role.SERVING and self.stopping is Stopping.NO:
            self._on_serving_exit(generation, worker, did, now)
        if (
            not generation.slots
            and not generation.leaving
            and generation.role in (Role.RETIRED, Role.PARKED)
        ):
            self.generations.pop(generation.number, None)

    def _on_serving_exit(
        self, generation: Generation, worker: Worker, how: str, now: float
    ) -> None:
        """A worker of the serving generation exited unexpectedly: roll back if it is
        on probation, else restart it, unless the code on disk was rolled back."""
        probation = self.probation
        if self.rollback is not None:
            self.counters.worker_crashes += 1
            self._log(logging.WARNING, f"{self._describe(worker)} {how}; a rollback is under way")
            return
        if probation is not None and probation.generation == generation.number:
            into = now - probation.started_at
            cause = (
                f"generation {generation.number} worker {worker.worker_id} {how} "
                f"{into:.1f}s into its probation"
            )
            if self._roll_back(cause, now):
                self.counters.worker_crashes += 1
                return
        starting = self._generation_with(Role.STARTING)
        if starting is not None and starting.rolling:
            # The rollout fills the room it leaves; if the rollout fails, the slot is
            # refilled then (see _restore_after_rollout).
            self.counters.worker_crashes += 1
            self._log(
                logging.WARNING,
                f"{self._describe(worker)} {how}; generation {starting.number} is rolling in "
                "to replace it",
            )
            self._advance_rollout()
            self._promote_if_ready(now)
            return
        if self.rejected is not None and not self._may_respawn_from_disk(generation, worker):
            self.counters.worker_crashes += 1
            self._announce(Phase.STATUS)
            return
        self._schedule_restart(generation, worker, how, now)

    def _may_respawn_from_disk(self, generation: Generation, worker: Worker) -> bool:
        """The rejected-code rule: after a rollback, the code on disk is the code that
        was rolled back. A crashed worker is not replaced from it while any worker of
        its generation still serves; when none is left, it is, as the last resort,
        and said loudly."""
        rejected = self.rejected
        if rejected is None:
            return True
        left = len(generation.slots)
        if left:
            self._log(
                logging.ERROR,
                f"{self._describe(worker)} is gone; not restarting it: the code on disk is "
                f"generation {rejected.generation}'s, which was rolled back "
                f"({rejected.cause}). Serving with {left}/{self.size} workers "
                "until the next reload",
            )
            return False
        self._log(
            logging.ERROR,
            f"{self._describe(worker)} was the last worker: restarting it from the code on "
            f"disk, although generation {rejected.generation}'s code was rolled back "
            f"({rejected.cause})",
        )
        return True

    def _schedule_restart(
        self, generation: Generation, worker: Worker, how: str, now: float
    ) -> None:
        crashes = generation.crashes.get(worker.worker_id, 0)
        if worker.ready_at is not None and now - worker.ready_at >= self.settings.backoff_reset:
            crashes = 0
        crashes += 1
        generation.crashes[worker.worker_id] = crashes
        generation.crash_causes[worker.worker_id] = how
        self.counters.worker_crashes += 1
        delay = min(self.settings.backoff_initial * 2 ** (crashes - 1), self.settings.backoff_max)
        self._log(
            logging.WARNING,
            f"{self._describe(worker)} {how}; restarting it in {delay:.1f}s",
        )
        self._actions.append(StartTimer(delay, RestartDue(generation.number, worker.worker_id)))
        self._announce(Phase.STATUS)

    def _on_failed(self, serial: int, cause: str) -> None:
        worker = self.workers.get(serial)
        if worker is None:
            return
        # reported just before the worker exits: its exit is described by it
        worker.cause = cause
        worker.reported = True
        if worker.state is WorkerState.PARKED:
            # it gave up its park: it cannot be resumed, and it gets kill_grace to go;
            # its slot is free at once (a refill takes its id, see _release)
            worker.state = WorkerState.DRAINING
            generation = self.generations[worker.generation]
            if generation.slots.get(worker.worker_id) == serial:
                del generation.slots[worker.worker_id]
                generation.leaving.add(serial)
            self._log(
                logging.WARNING, f"parked {self._describe(worker)} cannot be resumed: {cause}"
            )
            self._actions.append(StartTimer(self.settings.kill_grace, DrainTimeout(worker.serial)))

    def _on_misbehaved(self, serial: int, detail: str, now: float) -> None:
        worker = self.workers.get(serial)
        if worker is None or worker.killed:
            return
        problem = f"sent a malformed control message ({detail})"
        worker.cause = worker.cause or problem
        self._log(logging.WARNING, f"{self._describe(worker)} {problem}; killing it")
        generation = self.generations[worker.generation]
        if generation.role is Role.STARTING:
            # as for a missed ready_timeout: decided now, not when the kill lands
            self._fail_generation(generation, worker, f"worker {worker.worker_id}: {problem}", now)
        else:
            self._kill(worker)

    def _on_ready_timeout(self, serial: int, now: float) -> None:
        worker = self.workers.get(serial)
        if worker is not None and worker.state is WorkerState.RESUMING and not worker.killed:
            worker.cause = f"did not resume within {self._resume_timeout:g}s"
            self._log(logging.WARNING, f"{self._describe(worker)} {worker.cause}; killing it")
            self._kill(worker)
            return
        if worker is None or worker.state is not WorkerState.STARTING or worker.killed:
            return
        cause = f"not ready within ready_timeout={self.settings.ready_timeout:g}s"
        worker.cause = worker.cause or cause
        generation = self.generations[worker.generation]
        if generation.role is Role.STARTING:
            # Failing the generation right away, rather than when the kill lands, keeps
            # the decision independent of how fast the process dies.
            self._fail_generation(generation, worker, f"worker {worker.worker_id} {cause}", now)
        else:
            self._kill(worker)

    def _on_drain_timeout(self, serial: int) -> None:
        worker = self.workers.get(serial)
        if worker is None or worker.state is not WorkerState.DRAINING or worker.killed:
            return
        if worker.abandoned:
            self._log(
                logging.INFO,
                f"{self._describe(worker)} was still starting when the service stopped; killing it",
            )
            self._kill(worker)
            return
        self.exit_code = 1 if self.stopping is not Stopping.NO else self.exit_code
        self._log(
            logging.WARNING,
            f"{self._describe(worker)} did not finish draining within "
            f"drain_timeout={self.settings.drain_timeout:g}s; killing it",
        )
        self._kill(worker)

    def _on_restart_due(self, number: int, worker_id: int) -> None:
        generation = self.generations.get(number)
        if generation is not None and worker_id >= self.size:
            # scaled down since the crash: the replacement takes a slot within the count
            worker_id = self._free_ids(generation, 1)[0]
        if (
            generation is None
            or generation.role is not Role.SERVING
            or self.stopping is not Stopping.NO
            or worker_id in generation.slots
            or len(self._members(generation)) >= self.size  # scaled down meanwhile
        ):
            return
        starting = self._generation_with(Role.STARTING)
        if starting is not None and starting.rolling:
            return  # the rollout replaces it (or refills it if it fails)
        if self.rejected is not None and generation.slots:
            self._log(
                logging.ERROR,
                f"generation {number} worker {worker_id} is not restarted: the code on disk "
                f"was rolled back ({self.rejected.cause}); reload to deploy fixed code",
            )
            return
        self.counters.worker_restarts += 1
        self._spawn(generation, worker_id)
        if self.rejected is not None:
            self.workers[generation.slots[worker_id]].runs_rejected_code = True

    # -- scaling --------------------------------------------------------------------

    def _on_scale(self, request: ScaleRequested, now: float) -> None:
        target = request.workers if request.workers is not None else self.size + request.step
        refused = None
        if self.stop_announced:
            refused = "the service is stopping"
        elif target < 1:
            refused = f"{target} workers: at least 1 must serve"
        elif self.settings.max_workers is not None and target > self.settings.max_workers:
            refused = (
                f"{target} workers: the file descriptor limit leaves room for "
                f"{self.settings.max_workers} (raise it with `ulimit -n` or LimitNOFILE=)"
            )
        elif self.rollback is not None:
            refused = "a rollback is under way; scale once it has ended"
        elif target > self.size and self.rejected is not None:
            refused = (
                f"the code on disk was rolled back ({self.rejected.cause}), and new workers "
                "would run it; reload to deploy fixed code first"
            )
        if refused is not None:
            self._log(logging.WARNING, f"scaling requested by {request.by} refused: {refused}")
            self._actions.append(ScaleEnded(False, f"not scaled: {refused}", request.by))
            return
        before = self.size
        if target == before:
            self._actions.append(ScaleEnded(True, f"already {target} workers", request.by))
            return
        self.size = target
        self._log(
            logging.INFO, f"scaling from {before} to {target} workers (asked by {request.by})"
        )
        starting = self._generation_with(Role.STARTING)
        serving = self._generation_with(Role.SERVING)
        if starting is not None:
            # a rollout grows by itself, and parks what the serving generation has
            # beyond the new size (see _advance_rollout)
            self._fit(starting, grow=not starting.rolling)
        if serving is not None and (starting is None or not starting.rolling):
            self._fit(serving, grow=True)
        self._advance_rollout()
        self._promote_if_ready(now)
        self._announce(Phase.STATUS)
        self._actions.append(
            ScaleEnded(True, f"scaling from {before} to {target} workers", request.by)
        )

    def _fit(self, generation: Generation, *, grow: bool) -> None:
        """Bring ``generation`` to :attr:`size` workers: drain the excess (those not
        ready first, then the highest ids), and with ``grow`` start what it lacks."""
        members = self._members(generation)
        excess = len(members) - self.size
        by_expendability = sorted(
            (worker for worker in members if not worker.killed),
            key=lambda worker: (worker.state is WorkerState.READY, -worker.worker_id),
        )
        for worker in by_expendability[: max(excess, 0)]:
            self._release(worker)
        if grow and excess < 0:
            for worker_id in self._free_ids(generation, -excess):
                self._spawn(generation, worker_id)

    # -- stopping -------------------------------------------------------------------

    def _on_stop_requested(self, now: float) -> None:
        delay = self.settings.stop_delay
        if self.stopping is Stopping.NO and self.stop_delayed_until is None and delay > 0:
            self.stop_delayed_until = now + delay
            self.reload_queued = False
            self._log(
                logging.INFO,
                f"stopping in {delay:g}s (stop_delay): serving until then, "
                "health checks report the stop now",
            )
            self._actions.append(StartTimer(delay, StopDelayOver()))
            self._announce(Phase.STATUS)
            return
        self._on_stop(now)

    def _on_stop(self, now: float) -> None:
        if self.stopping is Stopping.NO:
            self._log(
                logging.INFO,
                f"stopping: draining {len(self.workers)} workers "
                f"(up to drain_timeout={self.settings.drain_timeout:g}s)",
            )
            self._begin_stop(Stopping.DRAINING, exit_code=0, now=now)
        elif self.stopping is Stopping.DRAINING:
            self._log(logging.WARNING, f"stopping now: killing {len(self.workers)} workers")
            self._begin_stop(Stopping.NOW, exit_code=1, now=now)

    def _begin_stop(self, mode: Stopping, exit_code: int, now: float) -> None:
        first = self.stopping is Stopping.NO
        starting = self.starting
        if first and starting is not None and self.serving is not None:
            self._reload_failed(self.generations[starting], STOPPING, now)
        if first and self.rollback is not None:
            self.rollback = None
            self._actions.append(RollbackEnded(False, STOPPING))
        if first:
            self._end_probation("stopped", "the service is stopping")
        self.stopping = mode
        self.exit_code = max(self.exit_code, exit_code)
        self.reload_queued = False
        for generation in self.generations.values():
            generation.role = Role.RETIRED
        for worker in list(self.workers.values()):
            if mode is Stopping.NOW:
                self._kill(worker)
            elif not worker.killed:
                self._drain(worker, stopping=True)
        if first:
            self._actions.append(StopAccepting())
            self._announce(Phase.STOPPING)

    def _maybe_exit(self) -> None:
        if self.stopping is not Stopping.NO and not self.workers and not self.exited:
            self.exited = True
            self._actions.append(Exit(self.exit_code))


def _exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "vanished"
    if exitcode < 0:
        return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"
