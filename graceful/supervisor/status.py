"""Taking the supervisor's :class:`~graceful.core.snapshot.Snapshot`: the state
machine's state, with what only the supervisor's loop knows (process ids, what each
generation runs, the reload timelines, the standby, the listeners)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from graceful._version import PROTOCOL, VERSION, python_version
from graceful.core.machine import Role, SupervisorStateMachine, Worker, WorkerState
from graceful.core.settings import for_status
from graceful.core.snapshot import (
    CanaryView,
    GenerationView,
    ListenerView,
    ProbationView,
    ReloadView,
    RolledBackView,
    Snapshot,
    WorkerView,
)
from graceful.core.timeline import Timelines
from graceful.sockets.listeners import BoundListener, format_address
from graceful.supervisor.answers import shown
from graceful.supervisor.runtimes import GenerationRuntimes

_STATES = {
    Role.STARTING: "starting",
    Role.SERVING: "serving",
    Role.RETIRED: "draining",
    Role.PARKED: "parked",
    Role.RESUMING: "resuming",
}


@dataclass(frozen=True)
class Surroundings:
    """What the supervisor's loop knows beside the state machine."""

    started_at: float
    #: since when no worker accepts connections while a generation serves (None
    #: while one does)
    unready_since: float | None
    pid_of: Callable[[int], int | None]
    runtimes: GenerationRuntimes
    timelines: Timelines
    standby: dict[str, Any] | None
    listeners: Sequence[BoundListener]
    #: the upgrade under way (see :attr:`Snapshot.upgrade`)
    upgrade: dict[str, Any] | None = None
    #: the settings each generation was started with, by its number (None: none)
    settings_of: Callable[[int], dict[str, Any] | None] = lambda _: None
    #: what the supervisor last read of each worker's vitals, by serial
    vitals_of: Callable[[int], dict[str, Any]] = lambda _: {}
    #: what the newest generations answered, by number
    answers: Callable[[], dict[int, dict[str, Any]]] = dict


def take(machine: SupervisorStateMachine, now: float, around: Surroundings) -> Snapshot:
    """The supervisor's state at ``now`` (the loop's clock)."""
    around.runtimes.forget(set(machine.generations))
    return Snapshot(
        pid=os.getpid(),
        graceful=VERSION,
        protocol=PROTOCOL,
        python=python_version(),
        uptime=round(now - around.started_at, 3),
        stopping=machine.stop_announced,
        status=machine.status(),
        empty_slots=machine.empty_slots(),
        workers=machine.size,
        settings=for_status(machine.settings),
        standby=around.standby,
        listeners=tuple(
            ListenerView(
                spec=listener.spec,
                address=format_address(listener.address),
                open=listener.socket.fileno() != -1,
            )
            for listener in around.listeners
        ),
        generations=tuple(_generations(machine, now, around)),
        last_reload=_last_reload(machine, around.timelines),
        probation=_probation(machine, now),
        rolled_back=_rolled_back(machine),
        canary=_canary(machine, now),
        answers=around.answers(),
        counters=replace(machine.counters),
        serving=machine.serving,
        accepting=machine.accepting,
        **_health(machine, now, around.unready_since),
        workers_by_state=_by_state(machine.workers.values()),
        upgrade=around.upgrade,
    )


def _last_reload(machine: SupervisorStateMachine, timelines: Timelines) -> ReloadView | None:
    last = machine.last_reload
    if last is None:
        return None
    timeline = timelines.get(last.generation)
    phases = {} if timeline is None else timeline.milliseconds()
    return ReloadView(last.generation, last.outcome, last.cause, round(last.seconds, 6), phases)


def _probation(machine: SupervisorStateMachine, now: float) -> ProbationView | None:
    probation = machine.probation
    if probation is None:
        return None
    parked = probation.parked if probation.parked in machine.generations else None
    return ProbationView(probation.generation, parked, round(max(0.0, probation.until - now), 3))


def _canary(machine: SupervisorStateMachine, now: float) -> CanaryView | None:
    canary = machine.canary
    if canary is None:
        return None
    left = None
    if canary.judged_from is not None:
        left = round(max(0.0, canary.judged_from + machine.settings.canary_seconds - now), 3)
    share = canary.share
    return CanaryView(
        generation=canary.generation,
        beside=canary.beside,
        workers=canary.workers,
        seconds_left=left,
        answers=shown(canary.answers),
        beside_answers=shown(canary.baseline),
        share=None if share is None else round(share, 4),
    )


def _rolled_back(machine: SupervisorStateMachine) -> RolledBackView | None:
    rejected = machine.rejected
    if rejected is None:
        return None
    return RolledBackView(rejected.generation, rejected.cause, rejected.serving, rejected.how)


def _generations(
    machine: SupervisorStateMachine, now: float, around: Surroundings
) -> list[GenerationView]:
    views = []
    for generation in sorted(machine.generations.values(), key=lambda g: g.number):
        workers = tuple(
            WorkerView(
                pid=around.pid_of(worker.serial),
                worker_id=worker.worker_id,
                state=worker.state.value,
                ready_in=None
                if worker.ready_at is None
                else round(worker.ready_at - worker.started_at, 6),
                restarts=generation.crashes.get(worker.worker_id, 0),
                runs_rejected_code=worker.runs_rejected_code,
                age=None if worker.ready_at is None else round(now - worker.ready_at, 3),
                hung=worker.hung,
                recycling=worker.worn_out[0]
                if worker.worn_out is not None and worker.replaced_by is not None
                else None,
                vitals=around.vitals_of(worker.serial),
            )
            for worker in sorted(machine.workers.values(), key=lambda w: w.serial)
            if worker.generation == generation.number
        )
        views.append(
            GenerationView(
                generation=generation.number,
                state=_STATES[generation.role],
                age=round(now - generation.started_at, 3),
                rolling=generation.rolling,
                may_be_mixed=(generation.late_spawns > 0 and not machine.settings.preload)
                or around.runtimes.mixed(generation.number),
                crashes={
                    worker_id: (count, generation.crash_causes.get(worker_id))
                    for worker_id, count in sorted(generation.crashes.items())
                },
                runtime=around.runtimes.describe(generation.number),
                workers=workers,
                settings=around.settings_of(generation.number),
            )
        )
    return views


def _health(
    machine: SupervisorStateMachine, now: float, unready_since: float | None
) -> dict[str, Any]:
    """The snapshot's ``ready``, ``live`` and ``live_why``."""
    ready = machine.serving is not None and not machine.stop_announced and machine.accepting > 0
    without = 0.0 if unready_since is None else now - unready_since
    limit = machine.settings.ready_timeout
    if unready_since is None:
        live_why = "live"
    elif without <= limit:
        live_why = f"live (no worker accepts connections for {without:.1f}s)"
    else:
        live_why = (
            f"no worker has accepted connections for {without:.1f}s "
            f"(more than ready_timeout={limit:g}s): {machine.status()}"
        )
    return {"ready": ready, "live": without <= limit, "live_why": live_why}


def _by_state(workers: Iterable[Worker]) -> dict[str, int]:
    counts = dict.fromkeys((state.value for state in WorkerState), 0)
    for worker in workers:
        counts[worker.state.value] += 1
    return counts
