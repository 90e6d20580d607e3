"""The state machine's start-first replacements: a hung worker and recycling (see
:mod:`graceful.core.replacement`)."""

from __future__ import annotations

import dataclasses

from sim import (
    SETTINGS,
    Sim,
    first_generation_serving,
    killed,
    messages,
    of_type,
    shut_down,
    spawned,
)

from graceful.core.machine import (
    DumpStack,
    ProbationOver,
    ReloadRequested,
    WorkerExited,
    WorkerHung,
    WorkerReady,
    WorkerState,
    WorkerWornOut,
)


def test_a_hung_worker_is_dumped_then_replaced_and_killed_once_its_replacement_is_ready() -> None:
    sim = Sim()
    first, second = first_generation_serving(sim)
    actions = sim.send(WorkerHung(first, 31.0))
    assert of_type(actions, DumpStack) == [DumpStack(first)]
    (replacement,) = spawned(actions)
    assert not killed(actions), "killed before a replacement was ready"
    assert sim.machine.generations[1].slots[0] == replacement
    actions = sim.send(WorkerReady(replacement, parkable=True))
    assert killed(actions) == {first}
    assert not shut_down(actions)
    exit_actions = sim.send(WorkerExited(first, -9))
    # its exit is no crash: nothing is restarted, nothing counted but the hang
    assert not spawned(exit_actions)
    counters = sim.machine.counters
    assert (counters.workers_hung, counters.worker_crashes, counters.worker_restarts) == (1, 0, 0)
    assert sim.machine.workers[second].state is WorkerState.READY


def test_a_hung_worker_whose_replacement_fails_is_killed_at_once() -> None:
    sim = Sim()
    first, _ = first_generation_serving(sim)
    (replacement,) = spawned(sim.send(WorkerHung(first, 31.0)))
    actions = sim.send(WorkerExited(replacement, 1))
    assert killed(actions) == {first}
    assert any("restarting it" in line for line in messages(actions))


def test_a_hung_worker_during_its_generations_probation_rolls_it_back() -> None:
    sim = Sim(dataclasses.replace(SETTINGS, probation=30.0))
    old = first_generation_serving(sim)
    new = spawned(sim.send(ReloadRequested()))
    for serial in new:
        sim.send(WorkerReady(serial, parkable=True))
    assert sim.machine.probation is not None
    actions = sim.send(WorkerHung(new[0], 31.0))
    assert sim.machine.rollback is not None
    assert new[0] in killed(actions)
    assert not spawned(actions), "a rollback resumes the parked generation instead"
    assert set(old) <= {serial for serial, w in sim.machine.workers.items() if w.generation == 1}


def test_a_worn_out_worker_drains_only_once_its_replacement_is_ready() -> None:
    sim = Sim()
    first, _ = first_generation_serving(sim)
    actions = sim.send(WorkerWornOut(first, "max_requests", "after 1,043 requests"))
    (replacement,) = spawned(actions)
    assert not shut_down(actions)
    sim.clock.advance(0.012)
    actions = sim.send(WorkerReady(replacement, parkable=True))
    assert shut_down(actions) == {first}
    assert (
        "generation 1 worker 0 recycled after 1,043 requests; replacement ready in 0.012s"
        in messages(actions)
    )
    assert sim.machine.counters.recycles == {"max_requests": 1}


def test_one_recycle_at_a_time_and_the_next_once_it_is_done() -> None:
    sim = Sim()
    first, second = first_generation_serving(sim)
    (replacement,) = spawned(sim.send(WorkerWornOut(first, "max_requests", "after 200 requests")))
    assert not spawned(sim.send(WorkerWornOut(second, "max_requests", "after 210 requests")))
    actions = sim.send(WorkerReady(replacement, parkable=True))
    # the second starts once the first is done
    assert len(spawned(actions)) == 1
    assert sim.machine.counters.recycles == {"max_requests": 1}


def test_a_failed_recycle_replacement_is_no_crash_and_the_worker_keeps_serving() -> None:
    sim = Sim()
    first, _ = first_generation_serving(sim)
    (replacement,) = spawned(sim.send(WorkerWornOut(first, "max_worker_memory", "at 90 MiB")))
    actions = sim.send(WorkerExited(replacement, 1))
    assert not killed(actions)
    assert not shut_down(actions)
    assert not spawned(actions)
    assert sim.machine.generations[1].slots[0] == first
    counters = sim.machine.counters
    assert (counters.worker_crashes, counters.worker_restarts) == (0, 0)
    # tried again after the backoff (the loop reports the worker again meanwhile)
    assert not spawned(sim.send(WorkerWornOut(first, "max_worker_memory", "at 91 MiB")))
    sim.clock.advance(SETTINGS.backoff_initial)
    assert len(spawned(sim.send(WorkerWornOut(first, "max_worker_memory", "at 92 MiB")))) == 1


def test_recycling_waits_for_a_reload_and_never_rolls_back() -> None:
    sim = Sim(dataclasses.replace(SETTINGS, probation=30.0))
    first_generation_serving(sim)
    new = spawned(sim.send(ReloadRequested()))
    for serial in new:
        sim.send(WorkerReady(serial, parkable=True))
    # on probation: a recycle's replacement that fails is no reason to roll back
    (replacement,) = spawned(sim.send(WorkerWornOut(new[0], "max_requests", "after 200 requests")))
    sim.send(WorkerExited(replacement, 1))
    assert sim.machine.rollback is None
    assert sim.machine.probation is not None
    sim.send(ProbationOver(sim.machine.probation.generation))
    assert sim.machine.serving == 2
