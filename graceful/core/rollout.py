"""Rolling reloads: the new generation comes in ``max_surge`` workers at a time.

With ``strategy=ROLLING``, a reload starts ``max_surge`` new workers, and for each new
worker ready, one old worker of the serving generation is parked (or, with ``preload``
and no probation, drained), and the next new worker starts (:func:`advance`): at most
``size + max_surge`` workers hold the listeners. The serving generation keeps its role
until the new one is promoted. If the new one fails, the parked old workers resume and
empty slots are refilled (:func:`restore`), so a failed rollout never leaves a mixed
fleet. A rolling reload needs old workers that can be parked, or ``preload`` (whose
template forks the old code again); else it warns and replaces all at once
(:func:`may_roll`). An old worker that crashes during a rollout is not restarted: the
rollout fills its room.
"""

from __future__ import annotations

import logging

from graceful.core.fleet import Fleet, Generation, Role, Strategy, WorkerState


def rolling_in(fleet: Fleet) -> Generation | None:
    """The generation a rolling reload brings in, if one does."""
    starting = fleet.with_role(Role.STARTING)
    return starting if starting is not None and starting.rolling else None


def may_roll(fleet: Fleet) -> bool:
    """Whether a reload starting now replaces the serving workers a few at a time:
    the rolling strategy, and every serving worker can be parked (the old code must
    stay at hand until the rollout completes, see :func:`advance`)."""
    serving = fleet.with_role(Role.SERVING)
    if fleet.settings.strategy is not Strategy.ROLLING or serving is None:
        return False
    ready = fleet.workers_in(serving, WorkerState.READY)
    if fleet.settings.preload or (ready and all(worker.parkable for worker in ready)):
        return True
    fleet.log(
        logging.WARNING,
        f"rolling reload not possible: generation {serving.number}'s workers cannot be "
        "parked (their server does not take part: see Context.ready(parkable=True)) and "
        "there is no template to fork them again (preload), so a failed rollout could not "
        "bring their code back; replacing all workers at once",
    )
    return False


def advance(fleet: Fleet) -> bool:
    """Take the rolling reload one step further, if one runs: for each new worker
    ready, park (or drain) one old one; then start new workers while fewer than
    ``size + max_surge`` hold the listeners. True if it ordered anything.

    Never a mixed fleet: if a new worker fails, every replaced slot returns to the
    old code. Without preload, the replaced workers stay parked until the new
    generation is promoted, and resume. With preload, they drain and exit (unless a
    probation wants them parked), and the old generation's template forks their
    replacements."""
    starting = rolling_in(fleet)
    if starting is None:
        return False
    before = len(fleet.out)
    settings = fleet.settings
    serving = fleet.with_role(Role.SERVING)
    old = fleet.holders(serving) if serving is not None else []
    ready_new = len(fleet.workers_in(starting, WorkerState.READY))
    while len(old) + ready_new > fleet.size:
        alive = [worker for worker in old if not worker.killed]
        ready_old = [worker for worker in alive if worker.state is WorkerState.READY]
        if not alive:
            break  # only workers being killed: their exits make the room
        replaced = max(ready_old or alive, key=lambda worker: worker.worker_id)
        old.remove(replaced)
        keep = not settings.preload or settings.probation > 0
        if replaced.state is WorkerState.READY and replaced.parkable and keep:
            fleet.park(replaced)
        else:
            fleet.release(replaced)
    members = fleet.members(starting)
    room = fleet.size + settings.max_surge - len(old) - len(members)
    if room < 0:
        # scaled down during the rollout: call off new workers still starting
        # (the latest first) rather than exceed the cap
        starting_up = sorted(
            (w for w in members if w.state is WorkerState.STARTING and not w.killed),
            key=lambda worker: -worker.worker_id,
        )
        for worker in starting_up[:-room]:
            fleet.release(worker)
    for worker_id in fleet.free_ids(starting, min(room, fleet.size - len(members))):
        fleet.spawn(starting, worker_id)
    return len(fleet.out) > before


def restore(fleet: Fleet, serving: Generation) -> None:
    """A rolling reload failed: the old workers it parked resume (as many as the
    generation has room for), and empty slots are refilled, so that every slot runs
    the serving generation's code again."""
    parked = sorted(
        fleet.workers_in(serving, WorkerState.PARKED), key=lambda worker: worker.worker_id
    )
    room = fleet.size - len(fleet.holders(serving))
    for worker in parked[:room]:
        fleet.resume(worker)
    for worker in parked[room:]:
        fleet.release(worker)
    if parked:
        fleet.log(
            logging.INFO,
            f"resuming {min(len(parked), max(room, 0))} parked worker(s) of generation "
            f"{serving.number}, replaced by the failed rollout",
        )
    fleet.refill(serving)
