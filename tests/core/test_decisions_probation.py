"""The supervisor's probation and rollback decisions, event by event (no processes).

See :mod:`graceful.core.trial`. The integration tests with real processes, sockets and
load are in ``tests/test_probation.py``.
"""

from __future__ import annotations

import dataclasses
import logging

from sim import SETTINGS, Sim, messages, of_type, shut_down, spawned, timers

from graceful.core.machine import (
    Action,
    DrainTimeout,
    ParkWorker,
    ProbationEnded,
    ProbationOver,
    ReadyTimeout,
    ReloadEnded,
    ReloadRequested,
    RestartDue,
    ResumeWorker,
    Role,
    RollbackEnded,
    RollbackRequested,
    ScaleRequested,
    Start,
    StopRequested,
    WorkerBroken,
    WorkerExited,
    WorkerFailed,
    WorkerReady,
    WorkerState,
)

PROBATION = dataclasses.replace(SETTINGS, probation=30.0)


def promoted_twice(sim: Sim, *, parkable: bool = True) -> tuple[list[int], list[int]]:
    """Generation 1 serving, then reloaded: generation 2 serving. Returns the serials
    of both generations' workers."""
    first = spawned(sim.send(Start()))
    sim.send_all(WorkerReady(serial, parkable=parkable) for serial in first)
    second = spawned(sim.send(ReloadRequested()))
    sim.clock.advance(0.2)
    return first, second


def promote(sim: Sim, serials: list[int], parkable: bool = True) -> list[Action]:
    return sim.send_all(WorkerReady(serial, parkable=parkable) for serial in serials)


def resumed(actions: list[Action]) -> set[int]:
    return {action.serial for action in of_type(actions, ResumeWorker)}


def test_the_previous_generation_is_parked_not_drained_when_probation_is_on() -> None:
    sim = Sim(PROBATION)
    first, second = promoted_twice(sim)
    actions = promote(sim, second)
    assert {action.serial for action in of_type(actions, ParkWorker)} == set(first)
    assert shut_down(actions) == set()
    assert timers(actions, ProbationOver) == [(30.0, ProbationOver(2))]
    assert sim.machine.generations[1].role is Role.PARKED
    assert {sim.machine.workers[s].state for s in first} == {WorkerState.PARKED}
    assert "generation 1 parked for 30s of probation" in messages(actions)[-1]


def test_without_probation_or_a_parkable_server_the_previous_generation_drains() -> None:
    for settings, parkable in ((SETTINGS, True), (PROBATION, False)):
        sim = Sim(settings)
        first, second = promoted_twice(sim, parkable=parkable)
        actions = promote(sim, second)
        assert shut_down(actions) == set(first)
        assert of_type(actions, ParkWorker) == []
        assert sim.machine.probation is None


def test_a_crash_during_probation_resumes_the_parked_generation_before_draining_the_new() -> None:
    sim = Sim(PROBATION)
    first, second = promoted_twice(sim)
    promote(sim, second)
    sim.clock.advance(1.5)
    actions = sim.send(WorkerExited(second[1], 3))
    # the parked workers are resumed; nothing is spawned; the new generation is not
    # touched until they accept again
    assert resumed(actions) == set(first)
    assert spawned(actions) == []
    assert shut_down(actions) == set()
    assert sim.machine.rollback is not None
    assert "worker 1 exited with code 3 1.5s into its probation" in sim.machine.rollback.cause
    # one resumed worker is not enough: generation 2 still serves
    assert shut_down(sim.send(WorkerReady(first[0], parkable=True))) == set()
    assert sim.machine.serving == 2
    sim.clock.advance(0.004)
    actions = sim.send(WorkerReady(first[1], parkable=True))
    assert sim.machine.serving == 1
    assert shut_down(actions) == {second[0]}
    [ended] = of_type(actions, RollbackEnded)
    assert ended.ok
    assert "resumed in 0.004s" in ended.detail
    [probation] = of_type(actions, ProbationEnded)
    assert (probation.generation, probation.outcome) == (2, "rolled back")
    assert sim.machine.last_reload is not None
    assert sim.machine.last_reload.outcome == "rolled back"
    assert sim.machine.counters.rollbacks == 1
    assert sim.machine.rejected is not None
    assert sim.machine.rejected.generation == 2
    assert "rolled back from generation 2" in sim.machine.status()


def test_the_probation_ending_lets_the_parked_generation_go_and_a_later_crash_restarts() -> None:
    sim = Sim(PROBATION)
    first, second = promoted_twice(sim)
    promote(sim, second)
    sim.clock.advance(30)
    actions = sim.send(ProbationOver(2))
    assert shut_down(actions) == set(first)
    assert of_type(actions, ProbationEnded) == [
        ProbationEnded(2, "passed", "passed 30s of probation")
    ]
    assert sim.machine.probation is None
    actions = sim.send(WorkerExited(second[0], 1))
    assert resumed(actions) == set()
    assert timers(actions, RestartDue) == [(0.1, RestartDue(2, 0))]


def test_a_manual_rollback_and_its_refusals() -> None:
    sim = Sim(PROBATION)
    first, second = promoted_twice(sim)
    [refused] = of_type(sim.send(RollbackRequested("SIGUSR2")), RollbackEnded)
    assert not refused.ok
    assert "no generation is parked" in refused.detail
    promote(sim, second)
    actions = sim.send(RollbackRequested("graceful rollback"))
    assert resumed(actions) == set(first)
    # a second request joins the rollback under way: one answer, when it ends
    assert of_type(sim.send(RollbackRequested("SIGUSR2")), RollbackEnded) == []
    [ended] = of_type(promote(sim, first), RollbackEnded)
    assert ended.ok
    assert sim.machine.serving == 1
    assert sim.machine.rejected is not None
    assert sim.machine.rejected.cause == "generation 2 rolled back by graceful rollback"


def test_a_worker_that_declares_itself_broken_rolls_back_only_during_probation() -> None:
    sim = Sim(PROBATION)
    first, second = promoted_twice(sim)
    # before ready: the reload fails
    actions = sim.send(WorkerBroken(second[0], "no database"))
    [ended] = of_type(actions, ReloadEnded)
    assert ended.reload.outcome == "failed"
    assert ended.reload.cause == "worker 0 declared itself broken: no database"
    third = spawned(sim.send(ReloadRequested()))
    promote(sim, third)
    actions = sim.send(WorkerBroken(third[1], "schema mismatch"))
    assert resumed(actions) == set(first)
    promote(sim, first)
    # outside probation: only logged
    actions = sim.send(WorkerBroken(first[0], "again"))
    assert resumed(actions) == set()
    assert shut_down(actions) == set()
    assert "no probation to roll back from" in messages(actions, logging.WARNING)[0]


def test_the_rejected_code_is_not_respawned_while_a_worker_still_serves() -> None:
    sim = Sim(PROBATION)
    first, second = promoted_twice(sim)
    promote(sim, second)
    sim.send(WorkerExited(second[0], 3))
    promote(sim, first)
    actions = sim.send(WorkerExited(first[0], -9))
    assert timers(actions, RestartDue) == []
    assert "not restarting it: the code on disk is generation 2's" in messages(actions)[0]
    assert "1/2 workers ready" in sim.machine.status()
    # the last one: restarted from disk, loudly, and marked
    actions = sim.send(WorkerExited(first[1], -9))
    assert "was the last worker: restarting it from the code on disk" in messages(actions)[0]
    [(_, due)] = timers(actions, RestartDue)
    [replacement] = spawned(sim.send(due))
    assert sim.machine.workers[replacement].runs_rejected_code
    # the next reload lifts the rule
    sim.send(WorkerReady(replacement, parkable=True))
    fixed = spawned(sim.send(ReloadRequested()))
    promote(sim, fixed)
    assert sim.machine.rejected is None


def test_a_parked_worker_that_cannot_resume_fails_the_rollback_only_if_none_resumes() -> None:
    sim = Sim(PROBATION)
    first, second = promoted_twice(sim)
    promote(sim, second)
    actions = sim.send(WorkerExited(second[0], 3))
    # a resume has resume_timeout (3 s), not ready_timeout (5 s): its code is loaded
    assert timers(actions, ReadyTimeout) == [
        (3.0, ReadyTimeout(first[0])),
        (3.0, ReadyTimeout(first[1])),
    ]
    sim.send(WorkerExited(first[0], -9))  # died while resuming
    sim.clock.advance(3)
    killing = sim.send(ReadyTimeout(first[1]))
    assert "did not resume within 3s" in messages(killing)[0]
    actions = sim.send(WorkerExited(first[1], -9))
    [ended] = of_type(actions, RollbackEnded)
    assert not ended.ok
    assert "no worker resumed" in ended.detail
    assert sim.machine.serving == 2
    # the crashed slot of the generation that keeps serving is refilled
    assert timers(actions, RestartDue) == [(0.1, RestartDue(2, 0))]


def test_a_reload_during_a_rollback_follows_it_and_parks_the_resumed_generation() -> None:
    sim = Sim(PROBATION)
    first, second = promoted_twice(sim)
    promote(sim, second)
    sim.send(WorkerExited(second[0], 3))
    assert spawned(sim.send(ReloadRequested())) == []  # queued behind the rollback
    actions = promote(sim, first)
    third = spawned(actions)
    assert len(third) == 2
    assert sim.machine.starting == 3
    actions = promote(sim, third)
    assert {action.serial for action in of_type(actions, ParkWorker)} == set(first)
    assert sim.machine.rejected is None


def test_a_stop_during_probation_drains_the_parked_generation_too() -> None:
    sim = Sim(PROBATION)
    first, second = promoted_twice(sim)
    promote(sim, second)
    actions = sim.send(StopRequested())
    assert shut_down(actions) == set(first) | set(second)
    assert of_type(actions, ProbationEnded) == [
        ProbationEnded(2, "stopped", "the service is stopping")
    ]


def test_a_generation_that_runs_rolled_back_code_is_not_parked() -> None:
    """Found by an attack: the last-resort restart of the rejected-code rule runs the
    rolled-back code; parked after the next reload, a rollback brought that code back
    while saying it brought back the old generation."""
    sim = Sim(dataclasses.replace(PROBATION, workers=1))
    [first] = spawned(sim.send(Start()))
    sim.send(WorkerReady(first, parkable=True))
    [second] = spawned(sim.send(ReloadRequested()))
    sim.send(WorkerReady(second, parkable=True))
    sim.send(WorkerExited(second, 3))  # rollback to generation 1
    sim.send(WorkerReady(first, parkable=True))
    [(_, due)] = timers(sim.send(WorkerExited(first, -9)), RestartDue)  # the last one
    [last_resort] = spawned(sim.send(due))
    sim.send(WorkerReady(last_resort, parkable=True))
    assert sim.machine.workers[last_resort].runs_rejected_code
    [fixed] = spawned(sim.send(ReloadRequested()))
    actions = promote(sim, [fixed])
    assert of_type(actions, ParkWorker) == []
    assert shut_down(actions) == {last_resort}
    assert "it runs code that was rolled back" in messages(actions, logging.WARNING)[0]
    assert sim.machine.probation is None


def test_the_status_says_when_nothing_is_left_to_roll_back_to() -> None:
    sim = Sim(PROBATION)
    first, second = promoted_twice(sim)
    promote(sim, second)
    assert "generation 1 parked" in sim.machine.status()
    sim.send_all(WorkerExited(serial, -9) for serial in first)
    assert "nothing left to roll back to" in sim.machine.status()


def test_a_parked_worker_that_gives_up_is_no_rollback_target() -> None:
    sim = Sim(PROBATION)
    first, second = promoted_twice(sim)
    promote(sim, second)
    actions = sim.send(WorkerFailed(first[0], "1 request(s) still running at its drain deadline"))
    assert timers(actions, DrainTimeout) == [(1.0, DrainTimeout(first[0]))]
    assert "parked generation 1 worker 0 cannot be resumed" in messages(actions)[0]
    assert resumed(sim.send(RollbackRequested("SIGUSR2"))) == {first[1]}


def test_slots_added_during_a_probation_are_said_to_stay_empty_after_the_rollback() -> None:
    """Scaled from 2 to 4 during generation 2's probation, then rolled back: the two
    added slots are not started from the rolled-back code on disk, and the log and
    the status line say so."""
    sim = Sim(PROBATION)
    _, second = promoted_twice(sim)
    promote(sim, second)
    added = spawned(sim.send(ScaleRequested("a test", workers=4)))
    promote(sim, added)
    actions = sim.send(RollbackRequested("a test"))
    actions += promote(sim, sorted(resumed(actions)))
    assert of_type(actions, RollbackEnded)[0].ok
    assert any(
        "generation 1 serves with 2/4 workers: 2 slot(s) (added since it was parked, or "
        "whose parked worker did not resume) stay empty until the next reload" in message
        for message in messages(actions)
    ), messages(actions)
    assert "2/4 workers ready" in sim.machine.status()
    assert "2 slot(s) empty until the next reload" in sim.machine.status()
