"""Scaling: the number of workers per generation changes while the service runs.

:attr:`~graceful.core.fleet.Fleet.size` is the number of workers per generation.
``ScaleRequested`` changes it: the serving generation starts workers in the lowest
free slots, or drains its highest ones (those not ready first); a generation starting
all at once is resized the same way, a rolling one grows by itself
(:mod:`graceful.core.rollout`). A crash replacement due after a scale-down is dropped.
Scaling is refused below 1, above ``max_workers`` (the descriptor limit), while
stopping or rolling back, and upward after a rollback (the code on disk was
rejected): see :func:`refusal`.
"""

from __future__ import annotations

from graceful.core.events import ScaleRequested
from graceful.core.fleet import Fleet, Generation, Role, WorkerState
from graceful.core.trial import Rejected, RollingBack, Trial


def target(fleet: Fleet, request: ScaleRequested) -> int:
    """The number of workers per generation ``request`` asks for."""
    return request.workers if request.workers is not None else fleet.size + request.step


def refusal(fleet: Fleet, workers: int, trial: Trial, *, stopping: bool) -> str | None:
    """Why scaling to ``workers`` per generation is refused now, or None."""
    limit = fleet.settings.max_workers
    if stopping:
        return "the service is stopping"
    if workers < 1:
        return f"{workers} workers: at least 1 must serve"
    if limit is not None and workers > limit:
        return (
            f"{workers} workers: the file descriptor limit leaves room for "
            f"{limit} (raise it with `ulimit -n` or LimitNOFILE=)"
        )
    if isinstance(trial, RollingBack):
        return "a rollback is under way; scale once it has ended"
    if workers > fleet.size and isinstance(trial, Rejected):
        return (
            f"the code on disk was {trial.how} ({trial.cause}), and new workers "
            "would run it; reload to deploy fixed code first"
        )
    return None


def resize(fleet: Fleet, workers: int, *, may_promote: bool) -> None:
    """Make ``workers`` the number per generation, and fit the serving generation and
    one starting all at once to it (a rollout fits itself as it goes on). A starting
    generation that the new size completes (``may_promote``: nothing holds its
    promotion back) serves next, so the one it replaces is left as it is: grown, it
    would start workers only to drain them."""
    fleet.size = workers
    starting = fleet.with_role(Role.STARTING)
    serving = fleet.with_role(Role.SERVING)
    if starting is not None:
        # a rollout grows by itself, and parks what the serving generation has
        # beyond the new size (see rollout.advance)
        fit(fleet, starting, grow=not starting.rolling)
        if not starting.rolling and may_promote and fleet.complete(starting):
            return
    if serving is not None and (starting is None or not starting.rolling):
        fit(fleet, serving, grow=True)


def fit(fleet: Fleet, generation: Generation, *, grow: bool) -> None:
    """Bring ``generation`` to :attr:`~graceful.core.fleet.Fleet.size` workers: drain
    the excess (those not ready first, then the highest ids), and with ``grow`` start
    what it lacks."""
    members = fleet.members(generation)
    excess = len(members) - fleet.size
    by_expendability = sorted(
        (worker for worker in members if not worker.killed),
        key=lambda worker: (worker.state is WorkerState.READY, -worker.worker_id),
    )
    for worker in by_expendability[: max(excess, 0)]:
        fleet.release(worker)
    if grow and excess < 0:
        for worker_id in fleet.free_ids(generation, -excess):
            fleet.spawn(generation, worker_id)
