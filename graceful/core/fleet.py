"""The workers and generations the supervisor runs, the settings it runs them with,
and the orders over them that every rule uses.

A :class:`Fleet` holds each worker's :class:`WorkerState` and each generation's
:class:`Role` once (which generation serves or starts is read from the roles; when
each is entered and left: "The state" in :mod:`graceful.core.machine`). It turns an
order (spawn, drain, release, park, resume, kill, retire) into the state change and
the actions it takes, appended to :attr:`Fleet.out`. It knows nothing of probation,
rollouts, scaling, crashes or the stop: the modules of those concerns decide, and
:mod:`graceful.core.machine` calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from graceful.core.actions import (
    Action,
    KillWorker,
    Log,
    ParkWorker,
    ResumeWorker,
    ShutdownWorker,
    SpawnWorker,
    StartTimer,
)
from graceful.core.events import DrainTimeout, ReadyTimeout, RestartDue


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
    #: :attr:`~graceful.core.machine.SupervisorStateMachine.size`)
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
    #: a ready worker whose loop misses its heartbeat this long is hung (0: never).
    #: This and the recycling limits are judged by the supervisor's loop, which
    #: reads the workers' vitals and sends :class:`~graceful.core.events.WorkerHung`
    #: and :class:`~graceful.core.events.WorkerWornOut`
    timeout: float = 30.0
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_worker_lifetime: float = 0.0
    max_worker_lifetime_jitter: float = 0.0
    max_worker_memory: int = 0
    #: workers of a generation recycled at once, each beside its replacement
    max_recycling: int = 1
    #: a generation on probation (or a canary) is judged by its answers (see
    #: :mod:`graceful.core.verdict`): server errors above this share (0: never),
    #: a p99 above this many seconds (0: never), once it answered this many
    rollback_on_error_rate: float = 0.05
    rollback_on_p99: float = 0.0
    rollback_min_requests: int = 100
    #: a reload first starts this many new workers beside the serving generation,
    #: judged for ``canary_seconds`` (see :mod:`graceful.core.canary`; 0: no canary)
    canary: int = 0
    canary_seconds: float = 30.0


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
    #: its heartbeat stopped (:class:`~graceful.core.events.WorkerHung`)
    hung: bool = False
    #: the recycling limit it reached, and how far it went (see :mod:`graceful.core.replacement`)
    worn_out: tuple[str, str] | None = None
    #: the serial of the worker started to take its place, while that one starts
    replaced_by: int | None = None
    #: the serial of the worker whose place it takes once it is ready (a hung or
    #: recycled worker of the same slot)
    replaces: int | None = None
    #: replacements that failed to start for a recycle, and when the next may start
    recycle_failures: int = 0
    recycle_not_before: float = 0.0


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
    #: workers found hung (their heartbeat stopped for ``timeout``)
    workers_hung: int = 0
    #: workers recycled (replaced once their replacement was ready), by the limit
    #: they reached
    recycles: dict[str, int] = field(default_factory=dict)
    #: canaries judged, by how it ended ("passed", "failed")
    canaries: dict[str, int] = field(default_factory=dict)


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


class Fleet:
    """The live workers and generations, and the orders over them.

    Each order changes the state and appends the actions it takes to :attr:`out`;
    :meth:`~graceful.core.machine.SupervisorStateMachine.handle` hands them back.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: live workers by serial (a worker is forgotten once it has exited)
        self.workers: dict[int, Worker] = {}
        #: generations by number, until they are retired and empty
        self.generations: dict[int, Generation] = {}
        #: workers per generation, as scaling left it
        self.size = settings.workers
        self.counters = Counters()
        #: the time of the event being handled
        self.now = 0.0
        #: the actions of the event being handled, in order
        self.out: list[Action] = []
        self._next_serial = 1
        self._next_generation = 1

    # -- reading ------------------------------------------------------------------

    def with_role(self, role: Role) -> Generation | None:
        """The generation in ``role`` (at most one is, but for ``RETIRED``)."""
        for generation in self.generations.values():
            if generation.role is role:
                return generation
        return None

    def in_slots(self, generation: Generation) -> list[Worker]:
        """``generation``'s workers in their slots (those leaving it aside)."""
        return [self.workers[serial] for serial in generation.slots.values()]

    def complete(self, generation: Generation) -> bool:
        """Every one of ``generation``'s :attr:`size` workers is ready."""
        members = self.members(generation)
        return len(members) == self.size and all(
            worker.state is WorkerState.READY for worker in members
        )

    def members(self, generation: Generation) -> list[Worker]:
        """``generation``'s workforce: its workers not draining (parked ones included:
        they return if a rollout fails; one being killed too: it is replaced once it
        has exited)."""
        return [
            worker
            for worker in self.in_slots(generation)
            if worker.state is not WorkerState.DRAINING
        ]

    def holders(self, generation: Generation) -> list[Worker]:
        """``generation``'s workers that hold the listeners, or are about to: starting,
        ready or resuming (or being killed)."""
        return [
            worker for worker in self.members(generation) if worker.state is not WorkerState.PARKED
        ]

    def workers_in(self, generation: Generation, state: WorkerState) -> list[Worker]:
        """``generation``'s workers in ``state``, those being killed left out."""
        return [
            worker
            for worker in self.in_slots(generation)
            if worker.state is state and not worker.killed
        ]

    def free_ids(self, generation: Generation, count: int) -> list[int]:
        """The ``count`` lowest worker ids with no process in ``generation``."""
        free: list[int] = []
        worker_id = 0
        while len(free) < count:
            if worker_id not in generation.slots:
                free.append(worker_id)
            worker_id += 1
        return free

    def empty_slots(self, generation: Generation) -> int:
        """How many of ``generation``'s slots have no worker (not even one starting)."""
        return max(0, self.size - len(self.members(generation)))

    def describe(self, worker: Worker) -> str:
        return f"generation {worker.generation} worker {worker.worker_id}"

    @property
    def resume_timeout(self) -> float:
        return min(self.settings.resume_timeout, self.settings.ready_timeout)

    # -- orders ---------------------------------------------------------------------

    def log(self, level: int, message: str, *, narrative: bool = False) -> None:
        self.out.append(Log(level, message, narrative))

    def add_generation(self, role: Role) -> Generation:
        """A new generation, numbered after every earlier one, with no worker yet."""
        generation = Generation(self._next_generation, role, started_at=self.now)
        self._next_generation += 1
        self.generations[generation.number] = generation
        return generation

    def spawn(self, generation: Generation, worker_id: int) -> Worker:
        serial = self._next_serial
        self._next_serial += 1
        worker = Worker(serial, generation.number, worker_id, self.now)
        self.workers[serial] = worker
        generation.slots[worker_id] = serial
        if generation.role is Role.SERVING:
            generation.late_spawns += 1
        self.out.append(SpawnWorker(serial, generation.number, worker_id))
        self.out.append(StartTimer(self.settings.ready_timeout, ReadyTimeout(serial)))
        return worker

    def drain(self, worker: Worker, *, stopping: bool = False) -> None:
        """Tell ``worker`` to shut down: stop accepting, finish what it serves, exit,
        or be killed once its time is over."""
        if worker.state is WorkerState.DRAINING:
            return
        worker.state = WorkerState.DRAINING
        if stopping and worker.ready_at is None:
            # A worker that never became ready when the service stops: its start is
            # abandoned. It has promised nothing, but it holds the listeners, so it
            # gets kill_grace rather than drain_timeout to let go of them.
            worker.abandoned = True
            given, waited = self.settings.kill_grace, 2 * self.settings.kill_grace
        else:
            given = self.settings.drain_timeout
            waited = given + self.settings.kill_grace
        self.out.append(ShutdownWorker(worker.serial, given))
        self.out.append(StartTimer(waited, DrainTimeout(worker.serial)))

    def vacate(self, worker: Worker) -> None:
        """Free ``worker``'s slot while it still runs: its generation goes on without
        it (so worker ids stay below :attr:`size`; a worker that drains may share its
        id with its successor for a moment, as across generations)."""
        generation = self.generations[worker.generation]
        if generation.slots.get(worker.worker_id) == worker.serial:
            del generation.slots[worker.worker_id]
            generation.leaving.add(worker.serial)

    def release(self, worker: Worker) -> None:
        """Drain ``worker`` out of its generation, which goes on without it (and the
        worker it was to replace, if it was starting to: see
        :mod:`graceful.core.replacement`)."""
        self.drain(worker)
        self.vacate(worker)
        replaced = self.workers.get(worker.replaces or 0)
        if replaced is not None and replaced.replaced_by == worker.serial:
            self.let_go(replaced)
        worker.replaces = None

    def park(self, worker: Worker) -> None:
        """Tell a ready worker to stop accepting and wait, code loaded, to be resumed."""
        worker.state = WorkerState.PARKED
        self.out.append(ParkWorker(worker.serial, self.settings.drain_timeout))

    def resume(self, worker: Worker) -> None:
        """Tell a parked worker to resume; it has :attr:`resume_timeout` to be ready."""
        worker.state = WorkerState.RESUMING
        self.out.append(ResumeWorker(worker.serial))
        self.out.append(StartTimer(self.resume_timeout, ReadyTimeout(worker.serial)))

    def resume_parked(self, generation: Generation, parked: list[Worker]) -> None:
        """``generation`` resumes: its ``parked`` workers are told to resume, as many
        as the workers per generation (by slot), and those beyond (scaled down since
        they were parked) drain."""
        generation.role = Role.RESUMING
        parked = sorted(parked, key=lambda worker: worker.worker_id)
        for worker in parked[self.size :]:
            self.release(worker)
        for worker in parked[: self.size]:
            self.resume(worker)

    def kill(self, worker: Worker) -> None:
        if worker.killed or worker.serial not in self.workers:
            # already killed, or already exited: there is nothing left to kill
            return
        worker.killed = True
        self.out.append(KillWorker(worker.serial))

    def retire(self, generation: Generation) -> None:
        """``generation`` will not serve (again): every worker it has drains."""
        generation.role = Role.RETIRED
        for worker in self.in_slots(generation):
            if not worker.killed:
                self.drain(worker)
        self.let_go_of_replaced(generation)
        self.forget_if_done(generation)

    def let_go_of_replaced(self, generation: Generation) -> None:
        """The workers that left ``generation``'s slots for a replacement (a recycle,
        a hang) and still serve: the generation no longer needs them. A hung one is
        killed, the others drain."""
        for serial in sorted(generation.leaving):
            worker = self.workers[serial]
            if worker.state is WorkerState.READY and not worker.killed:
                self.let_go(worker)

    def let_go(self, worker: Worker) -> None:
        """``worker`` left its slot for a replacement and is no longer needed: it and
        its replacement are unlinked, and it is killed if hung, else drained (if it
        still serves)."""
        replacement = self.workers.get(worker.replaced_by or 0)
        if replacement is not None:
            replacement.replaces = None
        worker.replaced_by = None
        if worker.hung:
            self.put_down(worker)
        elif worker.state is WorkerState.READY and not worker.killed:
            self.drain(worker)

    def put_down(self, worker: Worker) -> None:
        """Kill a hung worker, out of its slot: it serves nothing any more, and its
        exit is no crash."""
        self.vacate(worker)
        worker.state = WorkerState.DRAINING
        self.kill(worker)

    def forget_if_done(self, generation: Generation) -> None:
        """Forget a generation that will not serve and has no worker left."""
        if (
            not generation.slots
            and not generation.leaving
            and generation.role in (Role.RETIRED, Role.PARKED)
        ):
            self.generations.pop(generation.number, None)

    def refill(self, generation: Generation) -> None:
        """Schedule a start for each worker ``generation`` lacks (after a failed
        rollout or rollback), after the initial backoff."""
        missing = self.size - len(self.members(generation))
        for worker_id in self.free_ids(generation, max(missing, 0)):
            self.out.append(
                StartTimer(self.settings.backoff_initial, RestartDue(generation.number, worker_id))
            )
