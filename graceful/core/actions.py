"""What the supervisor must do: the actions
:meth:`~graceful.core.machine.SupervisorStateMachine.handle` returns, to be carried out
in order by :mod:`graceful.supervisor.loop`.

Orders to a worker (:class:`WorkerOrder`: spawn, shut down, kill, park, resume) name it
by ``serial``;
:class:`StartTimer` asks for an event later; the rest tell the world (a reload's end,
a line for systemd, a log line) or end the supervisor (:class:`Exit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeAlias

from graceful.core.events import Event

#: The cause of a reload that a newer change superseded (development mode).
SUPERSEDED = "superseded by a newer change"
#: The cause of a reload (or a rollback) that the service's stop ended.
STOPPING = "the service is stopping"


@dataclass(frozen=True)
class WorkerOrder:
    """An order about worker ``serial``. No order names a worker after its exit."""

    serial: int


@dataclass(frozen=True)
class SpawnWorker(WorkerOrder):
    """Start a process into slot ``worker_id`` of generation ``generation``."""

    generation: int
    worker_id: int


@dataclass(frozen=True)
class KillWorker(WorkerOrder):
    """Kill it now (SIGKILL)."""


@dataclass(frozen=True)
class ShutdownWorker(WorkerOrder):
    """Stop accepting, finish what it serves within ``drain_timeout``, and exit."""

    drain_timeout: float


@dataclass(frozen=True)
class DumpStack(WorkerOrder):
    """Have the worker (found hung) write the stack of every thread, and log it
    (see :mod:`graceful.wire.vitals`). A kill ordered after it waits for the dump,
    a moment at most."""


@dataclass(frozen=True)
class ResumeWorker(WorkerOrder):
    """Hand a parked worker the listeners again and tell it to accept; it reports
    ready once it does."""


@dataclass(frozen=True)
class ParkWorker(WorkerOrder):
    """Stop accepting and drain exactly as for :class:`ShutdownWorker`, but stay alive
    with the code loaded and no listener, until resumed or shut down."""

    drain_timeout: float


@dataclass(frozen=True)
class StopAccepting:
    """The service is stopping and no generation will accept again: release the
    listeners the supervisor bound itself, so that new connections are refused at
    once instead of waiting in a backlog nobody reads."""


@dataclass(frozen=True)
class StartTimer:
    delay: float
    event: Event


@dataclass(frozen=True)
class GenerationStarted:
    """Generation ``number`` was started; ``first`` is True for the service's first one.
    (A reload asked for before this runs this generation's code, or a later one's.)"""

    number: int
    first: bool


@dataclass(frozen=True)
class ReloadOutcome:
    """How a reload ended: generation ``generation`` is ``serving``, or ``failed``
    with ``cause``, ``seconds`` after it started; later ``rolled back`` (with
    ``cause``) if its probation failed."""

    #: 0 for a reload that never started (the service was stopping)
    generation: int
    outcome: str
    cause: str | None
    seconds: float
    #: how the generation's probation ended, when that was waited for: "passed",
    #: "rolled back", "cut short", "rollback failed", "failed" (its answers failed
    #: it, and nothing was left to roll back to) or "stopped"
    probation: str | None = None

    @property
    def succeeded(self) -> bool:
        """The new code serves (and, if waited for, passed or outlived its probation)."""
        return self.outcome == "serving" and self.probation in (None, "passed", "cut short")

    def __str__(self) -> str:
        if self.generation == 0:  # a reload that never started (a stop came first)
            return f"reload {self.outcome}: {self.cause}"
        if self.outcome == "serving":
            return f"generation {self.generation} serving in {self.seconds:.3f}s"
        return f"generation {self.generation} {self.outcome}: {self.cause}"


@dataclass(frozen=True)
class ReloadEnded:
    """A reload ended, either way (never emitted for the first generation)."""

    reload: ReloadOutcome


@dataclass(frozen=True)
class ProbationEnded:
    """Generation ``generation``'s probation ended: ``outcome`` is ``"passed"``,
    ``"rolled back"`` (``detail`` is the cause), ``"rollback failed"``, ``"failed"``
    (its answers failed it and nothing was left to roll back to: ``detail`` says
    why), ``"cut short"`` (a newer generation was promoted) or ``"stopped"``."""

    generation: int
    outcome: str
    detail: str


@dataclass(frozen=True)
class RollbackEnded:
    """A rollback (asked for, or automatic) ended, or a request for one was refused:
    ``ok`` and one line saying what happened."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class ScaleEnded:
    """A request to scale was carried out (workers were spawned or told to drain),
    or refused: ``ok`` and one line saying what happened; ``by`` as requested."""

    ok: bool
    detail: str
    by: str


@dataclass(frozen=True)
class GenerationServing:
    """Generation ``number`` now serves; ``first`` is True for the service's first one."""

    number: int
    first: bool


class Phase(Enum):
    """What an :class:`Announce` tells a service manager."""

    #: generation 1 starts
    STARTING = "starting"
    #: a reload starts
    RELOADING = "reloading"
    #: a generation serves, or a reload ended either way
    READY = "ready"
    STOPPING = "stopping"
    #: only the status line changed
    STATUS = "status"


@dataclass(frozen=True)
class Announce:
    """Something a service manager (systemd) should hear of: ``phase``, a one-line
    ``status``, and ``extend``, how long in seconds the manager should wait for the
    next :attr:`Phase.READY`."""

    phase: Phase
    status: str
    extend: float | None = None


@dataclass(frozen=True)
class Log:
    level: int
    message: str
    #: part of a reload's own story (its start, its end), which a development
    #: terminal replaces with one status line per reload
    narrative: bool = False


@dataclass(frozen=True)
class Exit:
    code: int


Action: TypeAlias = (
    SpawnWorker
    | ShutdownWorker
    | KillWorker
    | DumpStack
    | ParkWorker
    | ResumeWorker
    | StopAccepting
    | StartTimer
    | GenerationStarted
    | ReloadEnded
    | ProbationEnded
    | RollbackEnded
    | ScaleEnded
    | GenerationServing
    | Announce
    | Log
    | Exit
)
