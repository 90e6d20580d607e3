"""A serving worker's unexpected exit (a crash): who handles it, and the restart.

A crash is counted, then offered to :data:`HANDLERS` in this order; the first that
takes it (returns a :class:`Handled`) has handled it:

1. :func:`during_rollback`: a rollback is under way: nothing is restarted (the
   resumed generation replaces the crashed worker's; if the rollback fails, the
   empty slots are refilled then, see :func:`graceful.core.trial.settle`);
2. :func:`on_probation`: the crashed worker's generation is on probation: it is
   rolled back, if a parked worker is left to resume (else the next handler);
3. :func:`during_rollout`: a rolling reload runs: it fills the room the crash
   left (and if it fails, the slot is refilled then, see
   :func:`graceful.core.rollout.restore`);
4. :func:`with_rejected_code`: the code on disk was rolled back: the worker is
   not restarted from it while another of its generation still serves
   (:func:`graceful.core.trial.may_respawn_from_disk`);
5. :func:`restart`: the worker is restarted after an exponential backoff, which
   resets once a replacement has stayed ready for ``backoff_reset`` seconds
   (the restart itself: :func:`restart_due`).

A handler changes workers through the :class:`~graceful.core.fleet.Fleet` and
returns what the core must change of its own state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from graceful.core import rollout, trial
from graceful.core.actions import StartTimer
from graceful.core.events import RestartDue
from graceful.core.fleet import Fleet, Generation, Role, Worker
from graceful.core.trial import OnProbation, Rejected, RollingBack, Trial


@dataclass(frozen=True)
class Crash:
    """``worker`` of the serving ``generation`` exited unexpectedly; ``how``: what it
    did, as a verb phrase ("exited with code 3", "failed: ImportError: ...")."""

    generation: Generation
    worker: Worker
    how: str


@dataclass(frozen=True)
class Handled:
    """A handler took the crash: ``trial`` is the trial's next phase (None: it stays
    as it is), and ``announce`` says the status line changed."""

    trial: Trial | None = None
    announce: bool = False


Handler: TypeAlias = Callable[[Fleet, Trial, Crash], Handled | None]


def during_rollback(fleet: Fleet, phase: Trial, crash: Crash) -> Handled | None:
    if not isinstance(phase, RollingBack):
        return None
    fleet.log(
        logging.WARNING, f"{fleet.describe(crash.worker)} {crash.how}; a rollback is under way"
    )
    return Handled()


def on_probation(fleet: Fleet, phase: Trial, crash: Crash) -> Handled | None:
    number = crash.generation.number
    if not isinstance(phase, OnProbation) or phase.generation != number:
        return None
    into = fleet.now - phase.started_at
    cause = (
        f"generation {number} worker {crash.worker.worker_id} {crash.how} "
        f"{into:.1f}s into its probation"
    )
    rollback = trial.roll_back(fleet, phase, cause)
    return Handled(rollback, announce=True) if rollback is not None else None


def during_rollout(fleet: Fleet, phase: Trial, crash: Crash) -> Handled | None:
    starting = rollout.rolling_in(fleet)
    if starting is None:
        return None
    fleet.log(
        logging.WARNING,
        f"{fleet.describe(crash.worker)} {crash.how}; generation {starting.number} is "
        "rolling in to replace it",
    )
    return Handled()


def with_rejected_code(fleet: Fleet, phase: Trial, crash: Crash) -> Handled | None:
    if not isinstance(phase, Rejected) or trial.may_respawn_from_disk(
        fleet, phase, crash.generation, crash.worker
    ):
        return None
    return Handled(announce=True)


def restart(fleet: Fleet, phase: Trial, crash: Crash) -> Handled:
    generation, worker = crash.generation, crash.worker
    settings = fleet.settings
    crashes = generation.crashes.get(worker.worker_id, 0)
    if worker.ready_at is not None and fleet.now - worker.ready_at >= settings.backoff_reset:
        crashes = 0
    crashes += 1
    generation.crashes[worker.worker_id] = crashes
    generation.crash_causes[worker.worker_id] = crash.how
    delay = min(settings.backoff_initial * 2 ** (crashes - 1), settings.backoff_max)
    fleet.log(
        logging.WARNING, f"{fleet.describe(worker)} {crash.how}; restarting it in {delay:.1f}s"
    )
    fleet.out.append(StartTimer(delay, RestartDue(generation.number, worker.worker_id)))
    return Handled(announce=True)


#: Who handles a crash, in this order (see the module docstring).
HANDLERS: tuple[Handler, ...] = (
    during_rollback,
    on_probation,
    during_rollout,
    with_rejected_code,
    restart,
)


def handle(
    fleet: Fleet, phase: Trial, crash: Crash, handlers: Sequence[Handler] = HANDLERS
) -> Handled:
    """Count ``crash``, and let the first of ``handlers`` that takes it handle it."""
    fleet.counters.worker_crashes += 1
    for handler in handlers:
        handled = handler(fleet, phase, crash)
        if handled is not None:
            return handled
    raise AssertionError(f"no handler took {crash}")  # restart takes every crash


def restart_due(fleet: Fleet, phase: Trial, number: int, worker_id: int) -> None:
    """The backoff of the crashed worker in slot ``worker_id`` of generation ``number``
    is over: start its replacement, unless the slot is no longer wanted (the
    generation no longer serves, was scaled down, or a rollout replaces it) or the
    code on disk was rolled back and another worker still serves."""
    generation = fleet.generations.get(number)
    if generation is not None and worker_id >= fleet.size:
        # scaled down since the crash: the replacement takes a slot within the count
        worker_id = fleet.free_ids(generation, 1)[0]
    if (
        generation is None
        or generation.role is not Role.SERVING
        or worker_id in generation.slots
        or len(fleet.members(generation)) >= fleet.size  # scaled down meanwhile
    ):
        return
    if rollout.rolling_in(fleet) is not None:
        return  # the rollout replaces it (or refills it if it fails)
    rejected = phase if isinstance(phase, Rejected) else None
    if rejected is not None and generation.slots:
        fleet.log(
            logging.ERROR,
            f"generation {number} worker {worker_id} is not restarted: the code on disk "
            f"was {rejected.how} ({rejected.cause}); reload to deploy fixed code",
        )
        return
    fleet.counters.worker_restarts += 1
    replacement = fleet.spawn(generation, worker_id)
    replacement.runs_rejected_code = rejected is not None
