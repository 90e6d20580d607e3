"""What the supervisor learns: the events
:meth:`~graceful.core.machine.SupervisorStateMachine.handle` takes, one at a time, in
the order they happened.

A signal or a command becomes a request (:class:`ReloadRequested`, :class:`StopRequested`,
...); a worker's control message or exit, or a timer about one worker, becomes a
:class:`WorkerEvent`; the other timers name the generation they are about. What each
event does is told in :mod:`graceful.core.machine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from graceful.core.answers import Answers


@dataclass(frozen=True)
class Start:
    """The supervisor has bound its listeners and starts generation 1."""


@dataclass(frozen=True)
class ReloadRequested:
    """SIGHUP, or a programmatic reload."""


@dataclass(frozen=True)
class StopRequested:
    """SIGTERM, SIGINT or ``graceful stop``. With ``stop_delay``, the first one only
    announces the stop and the service keeps serving until :class:`StopDelayOver`;
    another one drains at once. The one after the drain began means: stop now.

    A successor supervisor that gives the service back (an upgrade rolled back)
    stops without ``delay`` (it serves nothing any more), with ``exit_code``."""

    delay: bool = True
    exit_code: int = 0


@dataclass(frozen=True)
class StopDelayOver:
    """``stop_delay`` seconds have passed since the first stop request."""


@dataclass(frozen=True)
class RollbackRequested:
    """``graceful rollback`` or SIGUSR2: roll back the generation on probation."""

    by: str


@dataclass(frozen=True)
class ScaleRequested:
    """SIGTTIN (``step=1``), SIGTTOU (``step=-1``) or ``graceful scale N``
    (``workers=N``): change the number of workers per generation."""

    by: str
    workers: int | None = None
    step: int = 0


@dataclass(frozen=True)
class WorkerEvent:
    """Something worker ``serial`` did, or a timer about it. Once the worker has
    exited, the supervisor has forgotten it, and an event about it is ignored."""

    serial: int


@dataclass(frozen=True)
class WorkerReady(WorkerEvent):
    """The worker accepts (again, after a resume). ``parkable``: its server can be
    parked and resumed (see :class:`~graceful.core.actions.ParkWorker`)."""

    parkable: bool = False


@dataclass(frozen=True)
class WorkerBroken(WorkerEvent):
    """The app declared this worker broken (``Context.declare_broken``): during its
    generation's probation, a reason to roll back."""

    cause: str


@dataclass(frozen=True)
class WorkerHung(WorkerEvent):
    """The worker's event loop has not beaten for ``silent`` seconds, more than
    ``timeout`` (see :mod:`graceful.wire.vitals`)."""

    silent: float


@dataclass(frozen=True)
class WorkerWornOut(WorkerEvent):
    """The worker reached one of its recycling limits: ``limit`` is the setting's
    name (``max_requests``, ``max_worker_lifetime``, ``max_worker_memory``), and
    ``detail`` says how far it went ("after 1,043 requests"). Sent again while it
    holds, until the worker is recycled."""

    limit: str
    detail: str


@dataclass(frozen=True)
class WorkerFailed(WorkerEvent):
    """The worker reported why it is about to exit."""

    cause: str


@dataclass(frozen=True)
class WorkerMisbehaved(WorkerEvent):
    """The worker wrote something on its control channel that is not a control
    message (``detail`` says what). Nothing more is read from it."""

    detail: str


@dataclass(frozen=True)
class WorkerExited(WorkerEvent):
    """The worker's process has ended (``exitcode`` as :mod:`multiprocessing` gives
    it: negative for a signal, None if it vanished)."""

    exitcode: int | None


@dataclass(frozen=True)
class ReadyTimeout(WorkerEvent):
    """The worker's time to report ready (``ready_timeout``, or ``resume_timeout``
    after a resume) is over."""


@dataclass(frozen=True)
class DrainTimeout(WorkerEvent):
    """The worker's time to drain (``drain_timeout`` plus ``kill_grace``) is over."""


@dataclass(frozen=True)
class RestartDue:
    """The backoff of the crashed worker in slot ``worker_id`` of ``generation`` is
    over."""

    generation: int
    worker_id: int


@dataclass(frozen=True)
class ProbationOver:
    """``probation`` seconds have passed since generation ``generation`` was promoted."""

    generation: int


@dataclass(frozen=True)
class AnswersCounted:
    """Generation ``generation`` (on probation, or a canary) has given ``answers``
    in all; ``baseline`` is what the old generation answered to compare them with:
    before the reload (probation), or over the same time (a canary). Sent by the
    supervisor's loop when the count changed (see :mod:`graceful.core.verdict`)."""

    generation: int
    answers: Answers
    baseline: Answers


@dataclass(frozen=True)
class CanaryOver:
    """``canary_seconds`` have passed since generation ``generation``'s canary
    workers were all ready (see :mod:`graceful.core.canary`)."""

    generation: int


@dataclass(frozen=True)
class HandOver:
    """The successor supervisor serves (``graceful upgrade``): stop accepting, and
    park the serving generation for the successor's probation (``park``) or drain
    it and exit (see :mod:`graceful.core.succession`)."""

    park: bool


@dataclass(frozen=True)
class TakeBack:
    """The successor failed during its probation (``cause``): the parked generation
    resumes and serves again."""

    cause: str


@dataclass(frozen=True)
class SuccessorPassed:
    """The successor's probation passed: the parked generation drains, and this
    supervisor exits."""


Event: TypeAlias = (
    Start
    | ReloadRequested
    | StopRequested
    | WorkerReady
    | WorkerFailed
    | WorkerMisbehaved
    | WorkerHung
    | WorkerWornOut
    | WorkerExited
    | ReadyTimeout
    | DrainTimeout
    | RestartDue
    | StopDelayOver
    | WorkerBroken
    | RollbackRequested
    | ProbationOver
    | AnswersCounted
    | CanaryOver
    | ScaleRequested
    | HandOver
    | TakeBack
    | SuccessorPassed
)
