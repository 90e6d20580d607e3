"""One read-only snapshot of the supervisor's state.

The supervisor's loop takes a :class:`Snapshot` whenever someone asks (``graceful
status``, a ``/ready`` or ``/live`` probe, a ``/metrics`` scrape), and each of them
renders it: no reader walks the state machine's internals, and all of them see the
same facts. A snapshot is plain data: it holds no reference into the live state,
so rendering it can never change what the supervisor does.

``graceful status --json`` prints :meth:`Snapshot.as_json`; its fields are
described on the operations page of the documentation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from graceful.core.machine import Counters


@dataclass(frozen=True)
class WorkerView:
    """One worker of a generation."""

    #: None while it is being started (or once it is gone)
    pid: int | None
    worker_id: int
    #: a :class:`~graceful.core.machine.WorkerState` value
    state: str
    #: seconds from its start to its ready message; None before
    ready_in: float | None
    #: its slot's crashes in a row
    restarts: int
    runs_rejected_code: bool
    #: seconds since it became ready (None before)
    age: float | None = None
    #: found hung (its heartbeat stopped), and being replaced or killed
    hung: bool = False
    #: the recycling limit it reached ("max_requests", ...), while it is replaced
    recycling: str | None = None
    #: what the supervisor last read of it: ``heartbeat_age`` (seconds, None if it
    #: does not beat), ``requests``, ``rss_mib`` and ``uss_mib`` (with
    #: ``max_worker_memory``: its USS is read once its RSS is above the limit), and
    #: its ``max_requests`` with the jitter drawn (see :mod:`graceful.supervisor.vitals`)
    vitals: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationView:
    """One generation."""

    generation: int
    #: starting, serving, draining, parked or resuming
    state: str
    age: float
    rolling: bool
    #: its workers may run different code: some were started after the generation
    #: (crash replacements, scaling), or from different releases
    may_be_mixed: bool
    #: by worker id: the slot's crashes in a row, and how the last one happened
    crashes: dict[int, tuple[int, str | None]]
    #: its release directory, interpreter, graceful and Python versions
    runtime: dict[str, Any]
    workers: tuple[WorkerView, ...]
    #: the settings of scope ``generation`` it was started with, by name (None: not
    #: read from a configuration: see :mod:`graceful.supervisor.reconfigure`)
    settings: dict[str, Any] | None = None


@dataclass(frozen=True)
class ListenerView:
    """A listener, by the spec it was bound from and the address it got."""

    spec: str
    address: str
    #: released at the stop (those the supervisor bound itself)
    open: bool


@dataclass(frozen=True)
class ReloadView:
    """How the newest reload ended."""

    generation: int
    outcome: str
    cause: str | None
    seconds: float
    #: milliseconds since it was asked for, by phase (:mod:`graceful.core.timeline`)
    phases: dict[str, float]


@dataclass(frozen=True)
class ProbationView:
    """The serving generation's probation, while it lasts."""

    generation: int
    #: None once every parked worker is gone: nothing to roll back to
    parked_generation: int | None
    seconds_left: float


@dataclass(frozen=True)
class CanaryView:
    """The canary being judged (see :mod:`graceful.core.canary`)."""

    generation: int
    #: the serving generation it runs beside: a mixed fleet
    beside: int
    workers: int
    #: None until all its workers are ready (then it is judged)
    seconds_left: float | None
    #: its answers, and the serving generation's, since it is judged (as
    #: :attr:`GenerationView.answers`)
    answers: dict[str, Any] | None
    beside_answers: dict[str, Any] | None
    #: its share of the answers since it is judged
    share: float | None


@dataclass(frozen=True)
class RolledBackView:
    """The code on disk was rolled back (until the next reload)."""

    generation: int
    cause: str
    serving_generation: int | None
    #: "rolled back", or "rejected on its answers" (a canary, or a generation judged
    #: as it started, whose reload failed: see graceful.core.verdict)
    how: str = "rolled back"


@dataclass(frozen=True)
class Snapshot:
    """The supervisor's state at one moment (see the module's docstring)."""

    pid: int
    graceful: str
    protocol: int
    python: str
    uptime: float
    stopping: bool
    #: the state machine's one-line summary
    status: str
    #: slots of the serving generation with no worker, not even one starting
    empty_slots: int
    #: workers per generation, as configured and scaled
    workers: int
    #: the settings ``status`` shows (strategy, max_surge, preload)
    settings: dict[str, Any]
    #: the warm standby: its pid and whether it is warm; None when turned off
    standby: dict[str, Any] | None
    listeners: tuple[ListenerView, ...]
    generations: tuple[GenerationView, ...]
    last_reload: ReloadView | None
    probation: ProbationView | None
    rolled_back: RolledBackView | None
    canary: CanaryView | None
    #: what the newest generations answered (their live and exited workers, also
    #: once the generation is gone), by number: ``total``, a count per outcome of
    #: :data:`graceful.core.answers.OUTCOMES`, ``error_rate`` (5xx and failed),
    #: ``p99`` (seconds), ``seconds`` (their durations' total) and ``buckets`` (a
    #: count per duration bucket of :data:`graceful.core.answers.BUCKETS`, then
    #: above them)
    answers: dict[int, dict[str, Any]]
    #: a copy of the state machine's
    counters: Counters
    #: the number of the generation that serves, None for none
    serving: int | None
    #: workers of the serving generation that accept connections
    accepting: int
    #: what ``/ready`` answers: a generation serves, at least one worker accepts
    #: connections, and no stop was asked for
    ready: bool
    #: what ``/live`` answers: the supervisor has not gone longer than
    #: ``ready_timeout`` without a worker that accepts connections while a
    #: generation serves; ``live_why`` says it in one line
    live: bool
    live_why: str
    #: worker processes by state value (every state, zeros included)
    workers_by_state: dict[str, int] = field(default_factory=dict)
    #: an upgrade under way (``graceful upgrade``): this supervisor's ``role`` in it
    #: ("predecessor" or "successor"), its ``phase``, and the other supervisor's
    #: ``pid``, ``graceful`` and ``python`` versions (and ``state``); None for none
    upgrade: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """What ``graceful status --json`` prints."""
        return {
            "pid": self.pid,
            "graceful": self.graceful,
            "protocol": self.protocol,
            "python": self.python,
            "uptime": self.uptime,
            "state": "stopping" if self.stopping else "running",
            "upgrade": self.upgrade,
            "status": self.status,
            "empty_slots": self.empty_slots,
            "workers": self.workers,
            **self.settings,
            "standby": self.standby,
            "listeners": [asdict(listener) for listener in self.listeners],
            "generations": [_generation_json(generation) for generation in self.generations],
            "last_reload": None if self.last_reload is None else asdict(self.last_reload),
            "probation": None if self.probation is None else asdict(self.probation),
            "rolled_back": None if self.rolled_back is None else asdict(self.rolled_back),
            "canary": None if self.canary is None else asdict(self.canary),
            "answers": {str(number): counted for number, counted in self.answers.items()},
            "counters": asdict(self.counters),
        }

    def not_ready_because(self) -> str:
        """Why ``/ready`` answers 503 (meaningful while :attr:`ready` is false)."""
        why = self.status
        if self.serving is not None:
            why += f" ({self.accepting}/{self.workers} workers accept connections)"
        return why


def _generation_json(generation: GenerationView) -> dict[str, Any]:
    return {
        "generation": generation.generation,
        "state": generation.state,
        "age": generation.age,
        "rolling": generation.rolling,
        "may_be_mixed": generation.may_be_mixed,
        "crashes": {
            str(worker_id): {"count": count, "cause": cause}
            for worker_id, (count, cause) in generation.crashes.items()
        },
        **generation.runtime,
        **({"settings": generation.settings} if generation.settings is not None else {}),
        "workers": [asdict(worker) for worker in generation.workers],
    }
