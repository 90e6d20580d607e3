"""The trial of new code: probation, rollback, and the rejected-code rule.

With ``probation`` above 0, a promotion parks the previous generation instead of
draining it, if every one of its ready workers said it can be parked: its workers stop
accepting and drain, and stay alive with no listener. The new generation is then
:class:`OnProbation` until ``ProbationOver``, the next promotion, or the stop, which
retire the parked one (:func:`end_probation`).

During the probation, an unexpected exit of a new worker, a ``WorkerBroken`` or a
``RollbackRequested`` starts a rollback (:func:`roll_back`): the parked generation's
workers are told to resume (the loop hands them the listeners again) and the generation
becomes ``RESUMING``; the new generation keeps serving meanwhile. The trial is then
:class:`RollingBack`. Once no worker is still resuming (:func:`settle`), the parked
generation serves again and the new one is retired; if none resumed, the rollback
failed and the new one keeps serving (its crashed slots are refilled).

After a rollback, the code on disk is the rejected code (:class:`Rejected`), until the
next promotion: a worker of the serving generation that dies is not replaced while
another one still serves; the last one is, loudly, as a last resort
(:func:`may_respawn_from_disk`).

A trial is always in exactly one of these phases (:data:`PHASES`); each carries what
it needs, and nothing else in the machine describes them. The functions here change
workers and generations through the :class:`~graceful.core.fleet.Fleet` and return the
trial's next phase; :mod:`graceful.core.machine` stores it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TypeAlias

from graceful.core.actions import ProbationEnded, RollbackEnded, StartTimer
from graceful.core.answers import NO_ANSWERS, Answers
from graceful.core.events import ProbationOver
from graceful.core.fleet import Fleet, Generation, Role, Worker, WorkerState


@dataclass(frozen=True)
class NoTrial:
    """No code is on trial: no probation runs, and the code on disk was not rolled
    back since the last promotion."""


@dataclass(frozen=True)
class OnProbation:
    """Generation ``generation`` serves on probation until ``until``; generation
    ``parked`` waits, parked, to be resumed if it fails."""

    generation: int
    parked: int
    started_at: float
    until: float
    #: its answers so far, and the verdict on them once there is one (the cause),
    #: see :mod:`graceful.core.verdict`
    answers: Answers = NO_ANSWERS
    verdict: str | None = None


@dataclass(frozen=True)
class RollingBack:
    """Generation ``to_generation`` is resuming in place of ``from_generation``,
    which keeps serving until it has (``cause``: why the rollback)."""

    from_generation: int
    to_generation: int
    cause: str
    started_at: float


@dataclass(frozen=True)
class Rejected:
    """Generation ``generation`` was rolled back because of ``cause``, and generation
    ``serving`` serves again: the code on disk is the rejected one until the next
    promotion. Not ``rolled_back``: its reload failed on its answers before it was
    promoted (a canary, or judged as it started: see :mod:`graceful.core.verdict`),
    and the code on disk is rejected all the same."""

    generation: int
    cause: str
    serving: int
    rolled_back: bool = True

    @property
    def how(self) -> str:
        """How its code was rejected, as a past participle."""
        return "rolled back" if self.rolled_back else "rejected on its answers"


Trial: TypeAlias = NoTrial | OnProbation | RollingBack | Rejected
#: Every phase a trial can be in.
PHASES = (NoTrial, OnProbation, RollingBack, Rejected)
NO_TRIAL = NoTrial()


def park(fleet: Fleet, previous: Generation, promoted: Generation) -> OnProbation | None:
    """Park ``previous`` for ``promoted``'s probation if it can be (probation is on,
    and every ready worker's server takes part), and return the probation; else
    retire it and return None."""
    settings = fleet.settings
    fleet.let_go_of_replaced(previous)
    ready = fleet.workers_in(previous, WorkerState.READY)
    # a rolling reload parked them already, as it replaced them
    parked = fleet.workers_in(previous, WorkerState.PARKED)
    if settings.probation <= 0 or not (ready or parked):
        fleet.retire(previous)
        return None
    if any(worker.runs_rejected_code for worker in ready + parked):
        fleet.log(
            logging.WARNING,
            f"generation {previous.number} is not parked: it runs code that was rolled "
            "back, so it is no rollback target",
        )
        fleet.retire(previous)
        return None
    if not all(worker.parkable for worker in ready):
        fleet.log(
            logging.INFO,
            f"generation {previous.number} cannot be parked (its server does not take "
            "part in probation: see Context.wait_resume); no rollback is possible",
        )
        fleet.retire(previous)
        return None
    previous.role = Role.PARKED
    for worker in fleet.in_slots(previous):
        if worker in ready:
            fleet.park(worker)
        elif worker in parked:
            continue  # parked by the rollout as it replaced it: kept for the rollback
        elif not worker.killed:
            # still starting: not worth keeping; its slot is free for a rollback
            fleet.release(worker)
    fleet.out.append(StartTimer(settings.probation, ProbationOver(promoted.number)))
    now = fleet.now
    return OnProbation(promoted.number, previous.number, now, now + settings.probation)


def end_probation(fleet: Fleet, probation: OnProbation, outcome: str, detail: str) -> None:
    """End ``probation`` without a rollback: the parked generation exits."""
    parked = fleet.generations.get(probation.parked)
    if parked is not None and parked.role is Role.PARKED:
        fleet.retire(parked)
    fleet.out.append(ProbationEnded(probation.generation, outcome, detail))


def roll_back(fleet: Fleet, probation: OnProbation, cause: str) -> RollingBack | None:
    """Resume the parked generation in place of the one on probation, and return the
    rollback; None (and the probation goes on) if no parked worker is left."""
    parked = fleet.generations.get(probation.parked)
    resumable = fleet.workers_in(parked, WorkerState.PARKED) if parked is not None else []
    if parked is None or not resumable:
        fleet.log(
            logging.ERROR,
            f"cannot roll back ({cause}): parked generation {probation.parked} has no worker left",
        )
        return None
    fleet.resume_parked(parked, resumable)
    fleet.log(
        logging.ERROR,
        f"rolling back: {cause}; parked generation {parked.number} resumes",
        narrative=True,
    )
    return RollingBack(probation.generation, parked.number, cause, fleet.now)


def settle(fleet: Fleet, rollback: RollingBack) -> Rejected | NoTrial | None:
    """Once no worker of the resuming generation is still resuming, end ``rollback``:
    the resumed generation serves again and the code on disk is :class:`Rejected`, or,
    if none resumed, the rollback failed (:class:`NoTrial`). None while a worker is
    still resuming."""
    target = fleet.generations.get(rollback.to_generation)
    workers = fleet.in_slots(target) if target is not None else []
    if any(worker.state is WorkerState.RESUMING for worker in workers):
        return None
    rejected = fleet.generations.get(rollback.from_generation)
    if target is None or not any(worker.state is WorkerState.READY for worker in workers):
        if target is not None:
            fleet.retire(target)
        detail = (
            f"rollback to generation {rollback.to_generation} failed: no worker resumed; "
            f"generation {rollback.from_generation} keeps serving"
        )
        fleet.log(logging.ERROR, detail, narrative=True)
        fleet.out.append(RollbackEnded(False, detail))
        fleet.out.append(
            ProbationEnded(rollback.from_generation, "rollback failed", rollback.cause)
        )
        if rejected is not None:
            fleet.refill(rejected)
        return NO_TRIAL
    return _complete(fleet, rollback, target, rejected)


def _complete(
    fleet: Fleet, rollback: RollingBack, target: Generation, rejected: Generation | None
) -> Rejected:
    """The resumed generation serves again; the one rolled back drains."""
    target.role = Role.SERVING
    if rejected is not None:
        fleet.retire(rejected)
    took = fleet.now - rollback.started_at
    fleet.counters.rollbacks += 1
    fleet.log(
        logging.ERROR,
        f"rolled back: generation {target.number} serves again (resumed in {took:.3f}s), "
        f"generation {rollback.from_generation} drains. Until the next reload, crashed "
        "workers are not restarted from the code on disk, which was rolled back",
        narrative=True,
    )
    fleet.out.append(
        RollbackEnded(
            True,
            f"generation {target.number} serves again (resumed in {took:.3f}s); "
            f"generation {rollback.from_generation} rolled back: {rollback.cause}",
        )
    )
    fleet.out.append(ProbationEnded(rollback.from_generation, "rolled back", rollback.cause))
    empty = fleet.empty_slots(target)
    if empty:
        fleet.log(
            logging.ERROR,
            f"generation {target.number} serves with {fleet.size - empty}/{fleet.size} "
            f"workers: {empty} slot(s) (added since it was parked, or whose parked worker "
            "did not resume) stay empty until the next reload, as they would start the "
            "code on disk, which was rolled back",
        )
    return Rejected(rollback.from_generation, rollback.cause, target.number)


def may_respawn_from_disk(
    fleet: Fleet, rejected: Rejected, generation: Generation, worker: Worker
) -> bool:
    """The rejected-code rule: a crashed ``worker`` is not replaced from the code on
    disk while any worker of its generation still serves; when none is left, it is,
    as the last resort, and said loudly."""
    left = len(generation.slots)
    if left:
        fleet.log(
            logging.ERROR,
            f"{fleet.describe(worker)} is gone; not restarting it: the code on disk is "
            f"generation {rejected.generation}'s, which was {rejected.how} "
            f"({rejected.cause}). Serving with {left}/{fleet.size} workers "
            "until the next reload",
        )
        return False
    fleet.log(
        logging.ERROR,
        f"{fleet.describe(worker)} was the last worker: restarting it from the code on "
        f"disk, although generation {rejected.generation}'s code was {rejected.how} "
        f"({rejected.cause})",
    )
    return True


def describe(fleet: Fleet, trial: Trial, serving: Generation) -> str:
    """What the status line says of ``trial`` (nothing without one)."""
    match trial:
        case OnProbation(until=until, parked=parked, answers=answers):
            left = max(0.0, until - fleet.now)
            kept = (
                f"generation {parked} parked"
                if parked in fleet.generations
                else "nothing left to roll back to"
            )
            counted = (
                f"; {answers.total:,} answers, {answers.error_rate:.1%} 5xx"
                if answers.total
                else ""
            )
            return f" (probation, {left:.0f}s left; {kept}{counted})"
        case RollingBack(to_generation=number):
            return f"; rolling back to generation {number}"
        case Rejected(generation=number, cause=cause, rolled_back=rolled_back):
            line = (
                f"; rolled back from generation {number}: {cause}"
                if rolled_back
                else f"; the code on disk (generation {number}'s) was rejected: {cause}"
            )
            empty = fleet.empty_slots(serving)
            if empty:
                line += f"; {empty} slot(s) empty until the next reload"
            return line
    return ""
