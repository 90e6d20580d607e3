"""The old supervisor's side of an upgrade (``graceful upgrade``): handing over to a
successor supervisor, and taking the service back if the successor fails.

The hand-over protocol itself (which process does what, over which channel) is
:mod:`graceful.supervisor.upgrade`; this module decides what happens to *this*
supervisor's workers, as the rest of :mod:`graceful.core` does:

* :func:`hand_over` (``HandOver``): the successor serves. The serving generation
  stops accepting. With ``park`` (the successor runs a probation) and every ready
  worker parkable, it is parked, as for a reload on probation, and the succession is
  :class:`ParkedForSuccessor`; otherwise the supervisor stops (its workers drain)
  and the succession is :class:`Succeeded`.
* :func:`take_back` (``TakeBack``): the successor failed during its probation. The
  parked generation resumes (:class:`TakingBack`); once no worker is still
  resuming, :func:`settle` makes it serve again, or, if none resumed, starts a new
  generation from the code on disk.
* ``SuccessorPassed``: the successor's probation passed: the parked generation
  drains and the supervisor exits (the machine begins its stop).

A succession is always in exactly one of the phases of :data:`PHASES`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TypeAlias

from graceful.core.fleet import Fleet, Generation, Role, WorkerState


@dataclass(frozen=True)
class NoSuccessor:
    """This supervisor serves on its own (no upgrade has handed it over)."""


@dataclass(frozen=True)
class ParkedForSuccessor:
    """Generation ``generation`` is parked while the successor is on probation."""

    generation: int


@dataclass(frozen=True)
class TakingBack:
    """The successor failed (``cause``): generation ``generation`` is resuming."""

    generation: int
    cause: str
    started_at: float


@dataclass(frozen=True)
class Succeeded:
    """The successor serves for good: this supervisor drains and exits."""


Succession: TypeAlias = NoSuccessor | ParkedForSuccessor | TakingBack | Succeeded
#: Every phase a succession can be in.
PHASES = (NoSuccessor, ParkedForSuccessor, TakingBack, Succeeded)
NO_SUCCESSOR = NoSuccessor()

#: Why a reload that was starting, or a probation, ended at the hand-over.
UPGRADED = "the supervisor was upgraded"


def can_park(fleet: Fleet, serving: Generation | None) -> bool:
    """Whether ``serving`` can be parked for a successor's probation: it has ready
    workers, and every one of them can be parked."""
    if serving is None:
        return False
    ready = fleet.workers_in(serving, WorkerState.READY)
    return bool(ready) and all(worker.parkable for worker in ready)


def hand_over(fleet: Fleet, serving: Generation | None, *, park: bool) -> ParkedForSuccessor | None:
    """Stop accepting: park ``serving`` for the successor's probation if ``park`` and
    it can be parked (:func:`can_park`), and return the phase; None if it cannot (the
    caller stops)."""
    if not park or serving is None:
        return None
    fleet.let_go_of_replaced(serving)
    ready = fleet.workers_in(serving, WorkerState.READY)
    if not can_park(fleet, serving):
        fleet.log(
            logging.INFO,
            f"generation {serving.number} cannot be parked (its server does not take part "
            "in probation: see Context.wait_resume); the upgrade cannot be rolled back",
        )
        return None
    serving.role = Role.PARKED
    for worker in fleet.in_slots(serving):
        if worker in ready:
            fleet.park(worker)
        elif not worker.killed:
            # still starting: not worth keeping; its slot is free for a take-back
            fleet.release(worker)
    fleet.log(
        logging.INFO,
        f"upgrade: the successor serves; generation {serving.number} parked for its probation",
    )
    return ParkedForSuccessor(serving.number)


def take_back(fleet: Fleet, parked: ParkedForSuccessor, cause: str) -> TakingBack | None:
    """Resume the parked generation; None if no parked worker is left (the caller
    starts a new generation)."""
    generation = fleet.generations.get(parked.generation)
    resumable = fleet.workers_in(generation, WorkerState.PARKED) if generation else []
    fleet.log(
        logging.ERROR,
        f"upgrade rolled back: {cause}; "
        + (
            f"generation {parked.generation} resumes"
            if resumable
            else f"parked generation {parked.generation} has no worker left: starting anew"
        ),
    )
    if generation is None or not resumable:
        if generation is not None:
            fleet.retire(generation)
        return None
    fleet.resume_parked(generation, resumable)
    return TakingBack(parked.generation, cause, fleet.now)


def settle(fleet: Fleet, taking_back: TakingBack) -> bool | None:
    """Once no worker of the resuming generation is still resuming: True if it serves
    again, False if none resumed (it is retired; the caller starts a new one). None
    while a worker is still resuming."""
    generation = fleet.generations.get(taking_back.generation)
    workers = fleet.in_slots(generation) if generation is not None else []
    if any(worker.state is WorkerState.RESUMING for worker in workers):
        return None
    if generation is None or not any(worker.state is WorkerState.READY for worker in workers):
        if generation is not None:
            fleet.retire(generation)
        fleet.log(logging.ERROR, "upgrade rolled back, but no parked worker resumed: starting anew")
        return False
    generation.role = Role.SERVING
    fleet.refill(generation)  # the slots of workers that were still starting
    took = fleet.now - taking_back.started_at
    fleet.log(
        logging.WARNING,
        f"upgrade rolled back: generation {generation.number} serves again "
        f"(resumed in {took:.3f}s)",
    )
    return True


def describe(succession: Succession) -> str:
    """What the status line says of ``succession`` (nothing without one)."""
    match succession:
        case ParkedForSuccessor(generation=number):
            return f"generation {number} parked: the successor supervisor serves, on probation"
        case TakingBack(generation=number):
            return f"upgrade rolled back: generation {number} resuming"
        case Succeeded():
            return "upgraded: the successor supervisor serves"
    return ""
