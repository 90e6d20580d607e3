"""The rolling strategy and live scaling, decided event by event (no processes).

See :mod:`graceful.core.rollout` and :mod:`graceful.core.scaling`. The
integration tests with real processes, sockets and load are in
``tests/test_many_workers.py``.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
from sim import (
    SETTINGS,
    Sim,
    first_generation_serving,
    messages,
    of_type,
    shut_down,
    spawned,
    timers,
)

from graceful.core.machine import (
    Action,
    GenerationServing,
    ParkWorker,
    ReadyTimeout,
    ReloadEnded,
    ReloadRequested,
    RestartDue,
    ResumeWorker,
    Role,
    RollbackEnded,
    RollbackRequested,
    ScaleEnded,
    ScaleRequested,
    Settings,
    StopRequested,
    Strategy,
    WorkerExited,
    WorkerFailed,
    WorkerReady,
    WorkerState,
)

ROLLING = dataclasses.replace(SETTINGS, workers=4, strategy=Strategy.ROLLING, max_surge=1)


def serving(settings: Settings, *, parkable: bool = True) -> tuple[Sim, list[int]]:
    sim = Sim(settings)
    return sim, first_generation_serving(sim, parkable=parkable)


def parked(actions: list[Action]) -> list[int]:
    return [action.serial for action in of_type(actions, ParkWorker)]


def test_a_rolling_reload_starts_max_surge_workers_and_parks_one_old_per_new_one_ready() -> None:
    sim, old = serving(ROLLING)
    first_batch = spawned(sim.send(ReloadRequested()))
    assert len(first_batch) == 1
    new = list(first_batch)
    parked_so_far: list[int] = []
    for _ in range(4):
        actions = sim.send(WorkerReady(new[-1], parkable=True))
        parked_so_far += parked(actions)
        new += spawned(actions)
        # every old worker parked is one a new worker replaced, never ahead of it
        ready_new = sum(sim.machine.workers[s].state is WorkerState.READY for s in new)
        assert len(parked_so_far) == ready_new
    assert sorted(parked_so_far) == sorted(old)
    assert len(new) == 4
    assert sim.machine.serving == 2
    assert shut_down(actions) == set(old)  # no probation: parked, then drained
    assert len(of_type(actions, ReloadEnded)) == 1


def test_a_rolling_reload_never_has_more_than_workers_plus_max_surge_holding_listeners() -> None:
    for surge in (1, 2, 3, 6):
        sim, _ = serving(dataclasses.replace(ROLLING, max_surge=surge))
        pending = spawned(sim.send(ReloadRequested()))
        assert len(pending) == min(surge, 4)
        while pending:
            holders = [
                w
                for w in sim.machine.workers.values()
                if w.state in (WorkerState.STARTING, WorkerState.READY)
            ]
            assert len(holders) <= 4 + surge
            pending += spawned(sim.send(WorkerReady(pending.pop(0), parkable=True)))
        assert sim.machine.serving == 2


def test_a_new_worker_failing_mid_rollout_resumes_every_replaced_old_worker() -> None:
    sim, old = serving(ROLLING)
    new = spawned(sim.send(ReloadRequested()))
    new += spawned(sim.send(WorkerReady(new[0], parkable=True)))
    new += spawned(sim.send(WorkerReady(new[1], parkable=True)))
    replaced = [s for s in old if sim.machine.workers[s].state is WorkerState.PARKED]
    assert len(replaced) == 2
    actions = sim.send(WorkerExited(new[2], 1))  # the third new worker crashes
    assert {action.serial for action in of_type(actions, ResumeWorker)} == set(replaced)
    assert shut_down(actions) == set(new[:2])  # the new workers that were ready drain
    assert sim.machine.serving == 1
    assert sim.machine.starting is None
    sim.send_all(WorkerReady(serial, parkable=True) for serial in replaced)
    assert {sim.machine.workers[s].state for s in old} == {WorkerState.READY}
    assert [r.reload.outcome for r in of_type(actions, ReloadEnded)] == ["failed"]


def test_an_old_worker_that_cannot_resume_after_a_failed_rollout_is_replaced() -> None:
    sim, old = serving(ROLLING)
    new = spawned(sim.send(ReloadRequested()))
    new += spawned(sim.send(WorkerReady(new[0], parkable=True)))
    replaced = next(s for s in old if sim.machine.workers[s].state is WorkerState.PARKED)
    sim.send(ReadyTimeout(new[1]))  # the next new worker hangs: the rollout fails
    actions = sim.send(WorkerExited(replaced, -9))  # and the old one dies as it resumes
    assert timers(actions, RestartDue)
    assert sim.machine.serving == 1


def test_without_parkable_workers_a_rolling_reload_warns_and_replaces_all_at_once() -> None:
    sim, _ = serving(ROLLING, parkable=False)
    actions = sim.send(ReloadRequested())
    assert len(spawned(actions)) == 4
    assert not sim.machine.generations[2].rolling
    assert any("rolling reload not possible" in m for m in messages(actions, logging.WARNING))


def test_an_old_worker_crashing_mid_rollout_is_left_to_the_rollout() -> None:
    sim, old = serving(ROLLING)
    new = spawned(sim.send(ReloadRequested()))
    actions = sim.send(WorkerExited(old[0], -9))
    assert timers(actions, RestartDue) == []
    assert len(spawned(actions)) == 1  # the room it left goes to the next new worker
    new += spawned(actions)
    while sim.machine.starting is not None:
        waiting = [s for s in new if sim.machine.workers[s].state is WorkerState.STARTING]
        new += spawned(sim.send(WorkerReady(waiting[0], parkable=True)))
    assert sim.machine.serving == 2
    assert len(new) == 4


def test_scaling_up_and_down_changes_the_serving_generation_by_one() -> None:
    sim, old = serving(dataclasses.replace(SETTINGS, workers=2))
    actions = sim.send(ScaleRequested("SIGTTIN", step=1))
    added = spawned(actions)
    assert len(added) == 1
    scaled = ScaleEnded(True, "scaling from 2 to 3 workers", "SIGTTIN")
    assert of_type(actions, ScaleEnded) == [scaled]
    sim.send(WorkerReady(added[0]))
    assert sim.machine.generations[1].late_spawns == 1
    actions = sim.send(ScaleRequested("SIGTTOU", step=-1))
    # the highest worker id goes: the one just added
    assert shut_down(actions) == set(added)
    actions = sim.send(ScaleRequested("graceful scale", workers=1))
    assert shut_down(actions) == {old[1]}
    assert sim.machine.size == 1


def test_scaling_below_one_worker_or_while_stopping_is_refused() -> None:
    sim, _ = serving(dataclasses.replace(SETTINGS, workers=1))
    actions = sim.send(ScaleRequested("SIGTTOU", step=-1))
    assert of_type(actions, ScaleEnded)[0].ok is False
    assert "at least 1 must serve" in of_type(actions, ScaleEnded)[0].detail
    assert sim.machine.size == 1
    assert spawned(actions) == []
    assert shut_down(actions) == set()
    sim.send(StopRequested())
    actions = sim.send(ScaleRequested("SIGTTIN", step=1))
    refused = ScaleEnded(False, "not scaled: the service is stopping", "SIGTTIN")
    assert of_type(actions, ScaleEnded) == [refused]
    assert spawned(actions) == []


def test_scaling_during_an_all_at_once_reload_resizes_the_new_generation_too() -> None:
    sim, _ = serving(dataclasses.replace(SETTINGS, workers=2))
    new = spawned(sim.send(ReloadRequested()))
    actions = sim.send(ScaleRequested("graceful scale", workers=3))
    assert len(spawned(actions)) == 2  # one for each generation
    new += [s for s in spawned(actions) if sim.machine.workers[s].generation == 2]
    actions = sim.send_all(WorkerReady(serial) for serial in new)
    assert of_type(actions, GenerationServing)[0].number == 2
    assert len(sim.machine.generations[2].slots) == 3


def test_a_crash_replacement_due_after_scaling_down_is_not_started() -> None:
    sim, old = serving(dataclasses.replace(SETTINGS, workers=2))
    sim.send(WorkerExited(old[0], 1))
    sim.send(ScaleRequested("SIGTTOU", step=-1))
    actions = sim.send(RestartDue(1, 0))
    assert spawned(actions) == []
    assert len(sim.machine.generations[1].slots) == 1
    assert sim.machine.generations[1].role is Role.SERVING


def test_scaling_down_to_a_reload_whose_workers_are_ready_starts_nothing_it_would_drain() -> None:
    """Scaling a reload down to the workers it has ready makes it serve at once: the
    serving generation it replaces is not grown to the new size first (a worker
    started only to be drained). (Found by the property test.)"""
    sim, [old] = serving(dataclasses.replace(SETTINGS, workers=1))
    sim.send(WorkerExited(old, 0))  # the serving generation has no worker left
    [new] = spawned(sim.send(ReloadRequested()))
    grown = spawned(sim.send(ScaleRequested("SIGTTIN", step=1)))
    extra = [s for s in grown if sim.machine.workers[s].generation == 2]
    for serial in set(grown) - set(extra):  # the serving generation's new workers crash
        sim.send(WorkerExited(serial, 1))
    sim.send(WorkerReady(new))
    actions = sim.send(ScaleRequested("SIGTTOU", step=-1))
    assert spawned(actions) == []
    assert shut_down(actions) >= set(extra)
    assert of_type(actions, GenerationServing)[0].number == 2


PRELOAD = dataclasses.replace(ROLLING, preload=True)


def test_with_preload_a_rollout_drains_the_replaced_workers_and_refills_them_if_it_fails() -> None:
    # even workers that cannot be parked: the template forks the old code again
    sim, old = serving(PRELOAD, parkable=False)
    new = spawned(sim.send(ReloadRequested()))
    assert sim.machine.generations[2].rolling
    actions = sim.send(WorkerReady(new[0]))
    assert parked(actions) == []
    [replaced] = shut_down(actions)
    assert replaced in old
    new += spawned(actions)
    slot = sim.machine.workers[replaced].worker_id
    actions = sim.send(WorkerExited(new[1], 1))  # the rollout fails
    assert shut_down(actions) == {new[0]}
    # refilled at once, while the replaced worker still drains (it holds no listener)
    assert timers(actions, RestartDue) == [(SETTINGS.backoff_initial, RestartDue(1, slot))]
    refill = spawned(sim.send(RestartDue(1, slot)))
    assert len(refill) == 1
    # into the old generation: forked from the old code's template
    assert sim.machine.workers[refill[0]].generation == 1
    assert sorted(sim.machine.generations[1].slots) == [0, 1, 2, 3]


def test_with_preload_and_probation_a_rollout_still_parks_for_the_rollback() -> None:
    sim, _ = serving(dataclasses.replace(PRELOAD, probation=30.0))
    new = spawned(sim.send(ReloadRequested()))
    actions = sim.send(WorkerReady(new[0], parkable=True))
    assert len(parked(actions)) == 1


@pytest.mark.parametrize("preload", [False, True])
def test_a_rolling_reload_with_probation_keeps_the_workers_it_parked_for_the_rollback(
    preload: bool,
) -> None:
    sim, old = serving(dataclasses.replace(ROLLING, probation=30.0, preload=preload))
    new = spawned(sim.send(ReloadRequested()))
    parked_so_far: list[int] = []
    while len(new) <= len(old):
        actions = sim.send(WorkerReady(new[-1], parkable=True))
        parked_so_far += parked(actions)
        assert shut_down(actions) == set(), "a worker parked for the rollback was drained"
        new += spawned(actions)
        if sim.machine.serving == 2:
            break
    assert sim.machine.serving == 2
    assert sorted(parked_so_far) == sorted(old)
    assert all(sim.machine.workers[serial].state is WorkerState.PARKED for serial in old)
    # the new code crashes during its probation: every parked worker resumes
    actions = sim.send(WorkerExited(new[0], 1))
    assert sorted(action.serial for action in of_type(actions, ResumeWorker)) == sorted(old)


def test_a_parked_worker_that_gives_up_its_park_frees_its_id_for_the_refill() -> None:
    """Found by the property test: the refill after a failed rollout took id 2 of a
    2-worker generation while the worker that gave up its park still drained in id 1."""
    sim, _ = serving(dataclasses.replace(ROLLING, workers=2))
    new = spawned(sim.send(ReloadRequested()))
    actions = sim.send(WorkerReady(new[0], parkable=True))
    [gave_up] = parked(actions)
    new += spawned(actions)
    sim.send(WorkerFailed(gave_up, "cannot park"))
    actions = sim.send(WorkerExited(new[0], 0))  # the rollout fails
    slot = sim.machine.workers[gave_up].worker_id
    assert timers(actions, RestartDue) == [(SETTINGS.backoff_initial, RestartDue(1, slot))]
    refill = spawned(sim.send(RestartDue(1, slot)))
    assert [sim.machine.workers[serial].worker_id for serial in refill] == [slot]
    assert sorted(sim.machine.generations[1].slots) == [0, 1]


def test_scaling_down_then_up_while_a_worker_drains_keeps_ids_below_the_count() -> None:
    sim, old = serving(dataclasses.replace(SETTINGS, workers=4))
    actions = sim.send(ScaleRequested("graceful scale", workers=3))
    assert shut_down(actions) == {old[3]}  # worker 3 drains, slowly
    actions = sim.send(ScaleRequested("graceful scale", workers=4))
    [added] = spawned(actions)
    assert sim.machine.workers[added].worker_id == 3
    assert sorted(sim.machine.generations[1].slots) == [0, 1, 2, 3]
    sim.send(WorkerExited(old[3], 0))  # the drained one leaves nothing behind
    assert sim.machine.generations[1].slots[3] == added


def test_a_rollout_paused_by_a_rollback_goes_on_once_the_rollback_has_ended() -> None:
    """A rolling reload asked for during a probation takes no step while a rollback
    runs; once the rollback has ended, the rollout goes on (the newer code wins),
    as a generation starting all at once is promoted then. It used to stay paused
    for good, and its reload never ended."""
    sim, old = serving(dataclasses.replace(ROLLING, workers=2, probation=30.0))
    second = spawned(sim.send(ReloadRequested()))
    while sim.machine.serving != 2:
        second += spawned(sim.send(WorkerReady(second[-1], parkable=True)))
    third = spawned(sim.send(ReloadRequested()))
    actions = sim.send(RollbackRequested("a test"))
    resumed = [action.serial for action in of_type(actions, ResumeWorker)]
    assert sorted(resumed) == sorted(old)
    third += spawned(sim.send(WorkerReady(third[0], parkable=True)))
    assert len(third) == 1, "a rollout takes no step during a rollback"

    actions = sim.send_all(WorkerReady(serial, parkable=True) for serial in resumed)
    assert [ended.ok for ended in of_type(actions, RollbackEnded)] == [True]
    assert len(parked(actions)) == 1
    third += spawned(actions)
    assert len(third) == 2, "the rollout goes on once the rollback has ended"

    actions = sim.send(WorkerReady(third[1], parkable=True))
    assert sim.machine.serving == 3
    [ended] = of_type(actions, ReloadEnded)
    assert (ended.reload.generation, ended.reload.outcome) == (3, "serving")
