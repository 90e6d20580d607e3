"""Start-first replacement of one worker: a hung worker, and recycling.

A serving worker that must go without its generation ending (its heartbeat stopped:
*hung*; it reached a recycling limit: *worn out*) is replaced in its slot first, and
let go only once the replacement is ready, so the generation never has fewer than
``size`` ready workers (:func:`start`):

* the worker leaves its slot (:meth:`~graceful.core.fleet.Fleet.vacate`) but keeps
  serving, and a replacement is spawned into the slot, linked to it
  (``replaces``/``replaced_by``);
* once the replacement is ready (:func:`ready`), a recycled worker drains as in a
  reload, and a hung one is killed with its process group;
* if the replacement fails before it is ready (:func:`failed`), a hung worker is
  killed at once (the slot's crash restarts it, with backoff), and a recycled one
  takes its slot back and keeps serving; its recycle is tried again after a
  backoff.

A recycle is no crash: it never counts as a restart nor rolls a generation back.
Recycles start one at a time per generation (``max_recycling``), only while the
serving generation is alone (no reload, rollback, stop or hand-over under way):
:func:`recycle_next` is a state-triggered rule.
"""

from __future__ import annotations

import logging

from graceful.core.fleet import Fleet, Generation, Role, Worker, WorkerState

#: the recycling limits, as named in ``WorkerWornOut.limit`` and in ``status``
LIMITS = ("max_requests", "max_worker_lifetime", "max_worker_memory")


def start(fleet: Fleet, worker: Worker) -> Worker | None:
    """Spawn ``worker``'s replacement into its slot; ``worker`` leaves the slot and
    keeps serving until the replacement is ready. None if the generation has its
    ``size`` workers without it (scaled down since it started): nothing is spawned."""
    generation = fleet.generations[worker.generation]
    fleet.vacate(worker)
    worker_id = fleet.free_ids(generation, 1)[0]
    if worker.worker_id < fleet.size and worker.worker_id not in generation.slots:
        worker_id = worker.worker_id
    if worker_id >= fleet.size or len(fleet.members(generation)) >= fleet.size:
        return None
    replacement = fleet.spawn(generation, worker_id)
    replacement.replaces = worker.serial
    worker.replaced_by = replacement.serial
    return replacement


def replacing(fleet: Fleet, generation: Generation) -> int:
    """How many of ``generation``'s replacements are still starting."""
    return sum(
        1
        for worker in fleet.in_slots(generation)
        if worker.replaces is not None and worker.state is WorkerState.STARTING
    )


def recycle_next(fleet: Fleet, serving: Generation) -> bool:
    """Start the replacement of the next worn-out worker of ``serving`` while fewer
    than ``max_recycling`` are under way. True if it started one."""
    if replacing(fleet, serving) >= fleet.settings.max_recycling:
        return False
    due = [
        worker
        for worker in fleet.workers_in(serving, WorkerState.READY)
        if worker.worn_out is not None
        and not worker.hung
        and worker.replaced_by is None
        and worker.recycle_not_before <= fleet.now
    ]
    if not due:
        return False
    worker = min(due, key=lambda candidate: candidate.worker_id)
    assert worker.worn_out is not None
    limit, detail = worker.worn_out
    fleet.log(
        logging.INFO,
        f"{fleet.describe(worker)} reached {limit} ({detail}); starting its replacement",
    )
    if start(fleet, worker) is None:
        fleet.drain(worker)  # the generation has its workers without it
    return True


def ready(fleet: Fleet, replacement: Worker) -> None:
    """``replacement`` is ready: let the worker it replaces go (drain a recycled one,
    kill a hung one)."""
    old = fleet.workers.get(replacement.replaces or 0)
    replacement.replaces = None
    if old is None or old.replaced_by != replacement.serial:
        return
    old.replaced_by = None
    took = fleet.now - replacement.started_at
    if old.hung:
        fleet.log(
            logging.WARNING,
            f"{fleet.describe(old)} replaced after it hung; replacement ready in "
            f"{took:.3f}s; killing it",
        )
        fleet.put_down(old)
        return
    if old.worn_out is None or old.state is not WorkerState.READY or old.killed:
        return
    limit, detail = old.worn_out
    fleet.counters.recycles[limit] = fleet.counters.recycles.get(limit, 0) + 1
    fleet.log(
        logging.INFO,
        f"{fleet.describe(old)} recycled {detail}; replacement ready in {took:.3f}s",
    )
    fleet.drain(old)


def failed(fleet: Fleet, replacement: Worker, how: str) -> bool:
    """``replacement`` exited before it was ready (``how``). A hung worker it was to
    replace is killed now; a worn-out one takes its slot back (if the generation
    still has room for it) and keeps serving. True if the exit is handled (a recycle's
    replacement: no crash), False if it is the slot's crash (a hung worker's)."""
    old = fleet.workers.get(replacement.replaces or 0)
    replacement.replaces = None
    if old is None or old.replaced_by != replacement.serial:
        return False
    old.replaced_by = None
    generation = fleet.generations[old.generation]
    if old.hung:
        if old.state is WorkerState.READY:
            fleet.log(
                logging.WARNING,
                f"the replacement of hung {fleet.describe(old)} {how}; killing the hung one",
            )
            fleet.put_down(old)
        return False
    if old.state is not WorkerState.READY or old.killed:
        return True
    if (
        generation.role is not Role.SERVING
        or old.worker_id in generation.slots
        or old.worker_id >= fleet.size
    ):
        fleet.drain(old)  # its generation no longer needs it
        return True
    generation.leaving.discard(old.serial)
    generation.slots[old.worker_id] = old.serial
    old.recycle_failures += 1
    settings = fleet.settings
    delay = min(settings.backoff_initial * 2 ** (old.recycle_failures - 1), settings.backoff_max)
    old.recycle_not_before = fleet.now + delay
    fleet.log(
        logging.WARNING,
        f"the replacement of {fleet.describe(old)} {how}; it keeps serving, and its "
        f"recycle is tried again in {delay:.1f}s at the earliest",
    )
    return True
