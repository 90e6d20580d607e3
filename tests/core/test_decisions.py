"""The supervisor's decisions, event by event: no processes, no sleeping.

Every test drives :class:`graceful.core.machine.SupervisorStateMachine` with events and an
explicit, hand-advanced clock, and checks the actions it asks for.
"""

from __future__ import annotations

import logging
from typing import Literal

import pytest
from sim import Sim, exits, killed, messages, of_type, serials_touched, shut_down, spawned, timers

from graceful.core.machine import (
    Action,
    DrainTimeout,
    Event,
    Exit,
    KillWorker,
    Log,
    ReadyTimeout,
    ReloadRequested,
    RestartDue,
    Settings,
    ShutdownWorker,
    SpawnWorker,
    Start,
    StartTimer,
    StopAccepting,
    StopRequested,
    WorkerExited,
    WorkerFailed,
    WorkerMisbehaved,
    WorkerReady,
)

# --- helpers over the state machine -----------------------------------------------


def start_serving(sim: Sim) -> list[int]:
    """Start generation 1 and make every worker ready; return their serials."""
    serials = spawned(sim.send(Start()))
    sim.clock.advance(0.5)
    sim.send_all(WorkerReady(serial) for serial in serials)
    assert sim.machine.serving == 1
    return serials


def reload(sim: Sim) -> list[int]:
    """Request a reload that starts a generation; return the new serials."""
    serials = spawned(sim.send(ReloadRequested()))
    assert serials, "the reload started no generation"
    return serials


def serve_new_generation(sim: Sim) -> list[int]:
    """Reload and make the new generation ready; return its serials."""
    serials = reload(sim)
    sim.clock.advance(0.5)
    sim.send_all(WorkerReady(serial) for serial in serials)
    return serials


FailureMode = Literal["exits", "reports-failure", "misses-ready-timeout"]
FAILURE_MODES: list[FailureMode] = ["exits", "reports-failure", "misses-ready-timeout"]
#: the cause each failure mode of worker 0 must be logged with
CAUSES: dict[FailureMode, str] = {
    "exits": "worker 0 exited with code 3 before it was ready",
    "reports-failure": "worker 0: ImportError: no module named 'app'",
    "misses-ready-timeout": "worker 0 not ready within ready_timeout=5s",
}


def fail_starting_worker(sim: Sim, serial: int, mode: FailureMode) -> list[Action]:
    """Make a starting worker fail the way ``mode`` says; return every action."""
    if mode == "exits":
        return sim.send(WorkerExited(serial, 3))
    if mode == "reports-failure":
        return sim.send_all(
            [WorkerFailed(serial, "ImportError: no module named 'app'"), WorkerExited(serial, 1)]
        )
    sim.clock.advance(sim.settings.ready_timeout)
    return sim.send(ReadyTimeout(serial))


def culprit_still_runs(mode: FailureMode) -> bool:
    return mode == "misses-ready-timeout"


# --- first start and promotion ----------------------------------------------------


def test_start_spawns_one_worker_per_slot_each_with_a_ready_timeout_timer() -> None:
    sim = Sim(Settings(workers=3, ready_timeout=7.0))
    actions = sim.send(Start())

    spawns = of_type(actions, SpawnWorker)
    assert [(s.generation, s.worker_id) for s in spawns] == [(1, 0), (1, 1), (1, 2)]
    assert len({s.serial for s in spawns}) == 3
    assert timers(actions, ReadyTimeout) == [(7.0, ReadyTimeout(s.serial)) for s in spawns]
    for spawn in spawns:
        timer = StartTimer(7.0, ReadyTimeout(spawn.serial))
        assert actions.index(spawn) < actions.index(timer)
    assert not shut_down(actions) | killed(actions)
    assert exits(actions) == []
    assert messages(actions, logging.INFO) == ["starting generation 1 (3 workers)"]
    assert sim.machine.serving is None
    assert sim.machine.starting == 1


def test_first_generation_serves_only_when_every_worker_is_ready() -> None:
    sim = Sim()
    first, second = spawned(sim.send(Start()))

    sim.clock.advance(0.25)
    assert sim.send(WorkerReady(first)) == []
    assert sim.machine.serving is None

    sim.clock.advance(0.25)
    actions = sim.send(WorkerReady(second))
    assert messages(actions) == ["generation 1 is serving (ready in 0.500s)"]
    assert not serials_touched(actions)
    assert sim.machine.serving == 1
    assert sim.machine.starting is None


def test_ready_report_from_an_unknown_or_already_ready_worker_changes_nothing() -> None:
    sim = Sim()
    first, _ = spawned(sim.send(Start()))
    sim.send(WorkerReady(first))

    assert sim.send(WorkerReady(first)) == []
    assert sim.send(WorkerReady(999)) == []
    assert sim.machine.serving is None


def test_reload_starts_a_new_generation_with_ready_timeouts_while_old_one_serves() -> None:
    sim = Sim()
    old = start_serving(sim)

    actions = sim.send(ReloadRequested())

    spawns = of_type(actions, SpawnWorker)
    assert [(s.generation, s.worker_id) for s in spawns] == [(2, 0), (2, 1)]
    assert not set(spawned(actions)) & set(old)
    assert timers(actions, ReadyTimeout) == [(5.0, ReadyTimeout(s.serial)) for s in spawns]
    assert not shut_down(actions) | killed(actions)
    assert sim.machine.serving == 1
    assert sim.machine.starting == 2


def test_reload_keeps_old_generation_until_every_new_worker_is_ready() -> None:
    sim = Sim()
    old = start_serving(sim)
    new_first, new_second = reload(sim)

    sim.clock.advance(1.0)
    assert sim.send(WorkerReady(new_first)) == []
    assert sim.machine.serving == 1

    sim.clock.advance(1.0)
    actions = sim.send(WorkerReady(new_second))

    assert shut_down(actions) == set(old)
    assert all(a.drain_timeout == 3.0 for a in of_type(actions, ShutdownWorker))
    assert timers(actions, DrainTimeout) == [(3.0 + 1.0, DrainTimeout(s)) for s in old]
    assert killed(actions) == set()
    assert spawned(actions) == []
    assert messages(actions) == ["generation 2 is serving (ready in 2.000s); draining generation 1"]
    assert sim.machine.serving == 2
    assert str(sim.machine.last_reload) == "generation 2 serving in 2.000s"


def test_old_generation_draining_on_its_own_needs_no_further_action() -> None:
    sim = Sim()
    old = start_serving(sim)
    serve_new_generation(sim)

    assert sim.send_all(WorkerExited(serial, 0) for serial in old) == []
    assert 1 not in sim.machine.generations
    assert sim.machine.serving == 2


def test_old_generation_worker_outliving_drain_timeout_is_killed_without_exiting() -> None:
    sim = Sim()
    old_first, old_second = start_serving(sim)
    serve_new_generation(sim)
    sim.send(WorkerExited(old_first, 0))

    sim.clock.advance(4.0)
    actions = sim.send(DrainTimeout(old_second))

    assert killed(actions) == {old_second}
    assert messages(actions, logging.WARNING) == [
        "generation 1 worker 1 did not finish draining within drain_timeout=3s; killing it"
    ]
    assert sim.send(WorkerExited(old_second, -9)) == []
    assert sim.machine.exit_code == 0
    assert not sim.machine.exited


def test_old_worker_exiting_with_an_error_while_draining_is_logged_as_a_warning() -> None:
    sim = Sim()
    old_first, _ = start_serving(sim)
    serve_new_generation(sim)

    actions = sim.send(WorkerExited(old_first, 2))

    assert messages(actions, logging.WARNING) == [
        "generation 1 worker 0 exited while draining: exited with code 2"
    ]
    assert not serials_touched(actions)


# --- coalesced reloads ------------------------------------------------------------


def test_three_reloads_while_a_generation_starts_add_exactly_one_follow_up_generation() -> None:
    sim = Sim()
    start_serving(sim)

    second = reload(sim)
    followers = [sim.send(ReloadRequested()), sim.send(ReloadRequested())]
    assert all(spawned(actions) == [] for actions in followers)
    assert messages(followers[0]) == [
        "reload requested while generation 2 is starting; one more reload will follow it"
    ]
    assert followers[1] == []

    actions = sim.send_all(WorkerReady(serial) for serial in second)
    third = of_type(actions, SpawnWorker)
    assert {s.generation for s in third} == {3}
    assert len(third) == 2
    assert sim.machine.serving == 2
    assert sim.machine.starting == 3

    actions = sim.send_all(WorkerReady(s.serial) for s in third)
    assert spawned(actions) == []
    assert sim.machine.serving == 3
    assert sim.machine.starting is None
    assert not sim.machine.reload_queued


@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_reload_queued_behind_a_failing_generation_starts_when_it_fails(
    mode: FailureMode,
) -> None:
    sim = Sim()
    start_serving(sim)
    culprit, _ = reload(sim)
    sim.send(ReloadRequested())
    sim.send(ReloadRequested())

    actions = fail_starting_worker(sim, culprit, mode)

    spawns = of_type(actions, SpawnWorker)
    assert [(s.generation, s.worker_id) for s in spawns] == [(3, 0), (3, 1)]
    assert sim.machine.starting == 3
    assert sim.machine.serving == 1
    assert not sim.machine.reload_queued


def test_reload_during_first_start_follows_once_the_first_generation_serves() -> None:
    sim = Sim()
    first = spawned(sim.send(Start()))
    assert spawned(sim.send(ReloadRequested())) == []

    actions = sim.send_all(WorkerReady(serial) for serial in first)

    assert {s.generation for s in of_type(actions, SpawnWorker)} == {2}
    assert sim.machine.serving == 1
    assert sim.machine.starting == 2


def test_reload_after_the_previous_one_finished_starts_a_generation_at_once() -> None:
    sim = Sim()
    start_serving(sim)
    serve_new_generation(sim)

    actions = sim.send(ReloadRequested())

    assert {s.generation for s in of_type(actions, SpawnWorker)} == {3}
    assert not any("one more reload" in m for m in messages(actions))


# --- a starting generation that fails ---------------------------------------------


@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_failing_reload_kills_only_the_culprit_drains_siblings_and_keeps_serving(
    mode: FailureMode,
) -> None:
    sim = Sim(Settings(workers=3, ready_timeout=5.0, drain_timeout=3.0, kill_grace=1.0))
    old = start_serving(sim)
    culprit, ready_sibling, starting_sibling = reload(sim)
    sim.send(WorkerReady(ready_sibling))

    actions = fail_starting_worker(sim, culprit, mode)

    # a culprit that has exited already is not killed again
    assert killed(actions) == ({culprit} if culprit_still_runs(mode) else set())
    assert shut_down(actions) == {ready_sibling, starting_sibling}
    assert timers(actions, DrainTimeout) == [
        (4.0, DrainTimeout(ready_sibling)),
        (4.0, DrainTimeout(starting_sibling)),
    ]
    assert not serials_touched(actions) & set(old)
    assert spawned(actions) == []
    assert exits(actions) == []
    assert messages(actions, logging.ERROR) == [
        f"reload failed: generation 2: {CAUSES[mode]}; generation 1 keeps serving"
    ]
    assert sim.machine.serving == 1
    assert sim.machine.starting is None
    assert str(sim.machine.last_reload) == f"generation 2 failed: {CAUSES[mode]}"


def test_worker_exiting_after_it_was_ready_fails_its_starting_generation() -> None:
    sim = Sim()
    start_serving(sim)
    first, second = reload(sim)
    sim.send(WorkerReady(first))

    actions = sim.send(WorkerExited(first, -11))

    assert shut_down(actions) == {second}
    assert messages(actions, logging.ERROR) == [
        "reload failed: generation 2: worker 0 was killed by signal 11 after it was ready; "
        "generation 1 keeps serving"
    ]
    assert sim.machine.serving == 1


def test_worker_vanishing_without_exit_code_fails_its_generation_and_says_so() -> None:
    sim = Sim()
    start_serving(sim)
    first, _ = reload(sim)

    actions = sim.send(WorkerExited(first, None))

    assert messages(actions, logging.ERROR) == [
        "reload failed: generation 2: worker 0 vanished before it was ready; "
        "generation 1 keeps serving"
    ]


def test_sibling_of_a_failed_generation_reporting_ready_is_never_promoted() -> None:
    sim = Sim()
    start_serving(sim)
    culprit, sibling = reload(sim)
    sim.send(WorkerExited(culprit, 1))

    actions = sim.send(WorkerReady(sibling))

    assert not shut_down(actions) | killed(actions)
    assert sim.machine.serving == 1
    assert sim.machine.starting is None


def test_failed_generation_siblings_that_outlive_their_drain_are_killed() -> None:
    sim = Sim()
    start_serving(sim)
    culprit, sibling = reload(sim)
    sim.send(WorkerExited(culprit, 1))

    sim.clock.advance(4.0)
    actions = sim.send(DrainTimeout(sibling))

    assert killed(actions) == {sibling}
    assert sim.send(WorkerExited(sibling, -9)) == []
    assert 2 not in sim.machine.generations
    assert sim.machine.serving == 1


def test_ready_timeout_culprit_exiting_after_its_kill_logs_nothing_more() -> None:
    sim = Sim()
    start_serving(sim)
    culprit, _ = reload(sim)
    fail_starting_worker(sim, culprit, "misses-ready-timeout")

    assert sim.send(WorkerExited(culprit, -9)) == []
    assert sim.machine.serving == 1


@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_first_generation_failing_exits_1_only_after_every_worker_exited(
    mode: FailureMode,
) -> None:
    sim = Sim()
    culprit, sibling = spawned(sim.send(Start()))
    sim.send(ReloadRequested())
    sim.send(WorkerReady(sibling))

    actions = fail_starting_worker(sim, culprit, mode)

    assert messages(actions, logging.ERROR) == [f"generation 1 failed to start: {CAUSES[mode]}"]
    assert shut_down(actions) == {sibling}
    assert exits(actions) == []
    assert spawned(actions) == []

    remaining = [culprit, sibling] if culprit_still_runs(mode) else [sibling]
    for serial in remaining[:-1]:
        assert exits(sim.send(WorkerExited(serial, -9))) == []
    assert exits(sim.send(WorkerExited(remaining[-1], 0))) == [1]
    assert sim.machine.exited


def test_first_generation_of_one_worker_exits_1_as_soon_as_that_worker_exited() -> None:
    sim = Sim(Settings(workers=1))
    (serial,) = spawned(sim.send(Start()))

    actions = sim.send(WorkerExited(serial, 1))

    assert exits(actions) == [1]
    assert actions[-1] == Exit(1)


# --- a serving worker that crashes ------------------------------------------------


def test_serving_worker_crash_schedules_a_restart_after_the_initial_backoff() -> None:
    sim = Sim()
    first, _ = start_serving(sim)
    sim.clock.advance(1.0)

    actions = sim.send(WorkerExited(first, 1))

    assert timers(actions, RestartDue) == [(0.1, RestartDue(1, 0))]
    assert spawned(actions) == []
    assert messages(actions, logging.WARNING) == [
        "generation 1 worker 0 exited with code 1; restarting it in 0.1s"
    ]
    assert sim.machine.serving == 1


def test_serving_worker_crash_log_names_the_cause_it_reported() -> None:
    sim = Sim()
    first, _ = start_serving(sim)

    actions = sim.send_all([WorkerFailed(first, "MemoryError"), WorkerExited(first, 1)])

    assert messages(actions, logging.WARNING) == [
        "generation 1 worker 0 failed: MemoryError; restarting it in 0.1s"
    ]


def test_restart_due_spawns_a_replacement_into_the_same_generation_and_slot() -> None:
    sim = Sim()
    _, second = start_serving(sim)
    sim.send(WorkerExited(second, -9))
    sim.clock.advance(0.1)

    actions = sim.send(RestartDue(1, 1))

    (spawn,) = of_type(actions, SpawnWorker)
    assert (spawn.generation, spawn.worker_id) == (1, 1)
    assert spawn.serial != second
    assert timers(actions, ReadyTimeout) == [(5.0, ReadyTimeout(spawn.serial))]

    actions = sim.send(WorkerReady(spawn.serial))
    assert messages(actions) == ["generation 1 worker 1 is back in service"]
    assert not serials_touched(actions)
    assert sim.machine.serving == 1


def crash_loop(sim: Sim, serial: int, worker_id: int, ready_for: float, times: int) -> list[float]:
    """Let ``serial`` crash after ``ready_for`` seconds ready, restart it, ``times``
    times over; return the backoff delays the supervisor chose."""
    delays: list[float] = []
    for _ in range(times):
        sim.clock.advance(ready_for)
        ((delay, due),) = timers(sim.send(WorkerExited(serial, 1)), RestartDue)
        assert due == RestartDue(1, worker_id)
        delays.append(delay)
        sim.clock.advance(delay)
        (serial,) = spawned(sim.send(due))
        sim.clock.advance(0.2)
        sim.send(WorkerReady(serial))
    return delays


def test_repeated_crashes_double_the_backoff_up_to_backoff_max() -> None:
    sim = Sim()
    first, _ = start_serving(sim)

    delays = crash_loop(sim, first, 0, ready_for=1.0, times=7)

    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_backoff_max_caps_even_the_first_delay() -> None:
    sim = Sim(Settings(workers=1, backoff_initial=5.0, backoff_max=2.0))
    (serial,) = start_serving(sim)

    assert crash_loop(sim, serial, 0, ready_for=1.0, times=2) == [2.0, 2.0]


def test_backoff_resets_once_a_replacement_stayed_ready_for_backoff_reset() -> None:
    sim = Sim()
    first, _ = start_serving(sim)
    crash_loop(sim, first, 0, ready_for=1.0, times=3)  # 0.1, 0.2, 0.4
    serial = sim.machine.generations[1].slots[0]

    assert crash_loop(sim, serial, 0, ready_for=10.0, times=1) == pytest.approx([0.1])


def test_backoff_keeps_growing_when_a_replacement_crashed_just_before_backoff_reset() -> None:
    sim = Sim()
    first, _ = start_serving(sim)
    crash_loop(sim, first, 0, ready_for=1.0, times=3)  # 0.1, 0.2, 0.4
    serial = sim.machine.generations[1].slots[0]

    assert crash_loop(sim, serial, 0, ready_for=9.9, times=1) == pytest.approx([0.8])


def test_replacement_crashing_before_it_was_ready_keeps_growing_the_backoff() -> None:
    sim = Sim()
    first, _ = start_serving(sim)
    sim.send(WorkerExited(first, 1))
    (replacement,) = spawned(sim.send(RestartDue(1, 0)))
    sim.clock.advance(60.0)

    actions = sim.send(WorkerExited(replacement, 1))

    ((delay, due),) = timers(actions, RestartDue)
    assert due == RestartDue(1, 0)
    assert delay == pytest.approx(0.2)


def test_backoff_is_counted_per_worker_slot() -> None:
    sim = Sim()
    first, second = start_serving(sim)
    crash_loop(sim, first, 0, ready_for=1.0, times=3)

    assert crash_loop(sim, second, 1, ready_for=1.0, times=1) == pytest.approx([0.1])


def test_replacement_missing_ready_timeout_is_killed() -> None:
    sim = Sim()
    first, _ = start_serving(sim)
    sim.send(WorkerExited(first, 1))
    (replacement,) = spawned(sim.send(RestartDue(1, 0)))
    sim.clock.advance(5.0)

    actions = sim.send(ReadyTimeout(replacement))

    assert killed(actions) == {replacement}
    assert sim.machine.serving == 1


def test_a_late_ready_from_a_worker_being_killed_changes_nothing() -> None:
    # Found by tests/test_decisions_properties.py: the report was taken as "back in
    # service", or as a reason to tell the dying worker to shut down.
    sim = Sim()
    first, _ = start_serving(sim)
    sim.send(WorkerExited(first, 1))
    (replacement,) = spawned(sim.send(RestartDue(1, 0)))
    sim.clock.advance(5.0)
    sim.send(ReadyTimeout(replacement))

    actions = sim.send(WorkerReady(replacement))

    assert actions == []


def test_a_late_ready_from_a_first_generation_worker_being_killed_changes_nothing() -> None:
    sim = Sim()
    serials = spawned(sim.send(Start()))
    sim.clock.advance(5.0)
    sim.send(ReadyTimeout(serials[0]))

    actions = sim.send(WorkerReady(serials[0]))

    assert shut_down(actions) == set()
    assert killed(actions) == set()


def test_replacement_missing_ready_timeout_is_restarted_after_a_backoff() -> None:
    sim = Sim()
    first, _ = start_serving(sim)
    sim.send(WorkerExited(first, 1))
    (replacement,) = spawned(sim.send(RestartDue(1, 0)))
    sim.clock.advance(5.0)

    actions = sim.send(ReadyTimeout(replacement))
    actions += sim.send(WorkerExited(replacement, -9))

    assert [due for _, due in timers(actions, RestartDue)] == [RestartDue(1, 0)]
    assert any("ready_timeout" in message for message in messages(actions))


# --- stale timers -----------------------------------------------------------------


def test_ready_timeout_for_a_worker_that_is_already_ready_does_nothing() -> None:
    sim = Sim()
    first, second = start_serving(sim)
    sim.clock.advance(5.0)

    assert sim.send_all([ReadyTimeout(first), ReadyTimeout(second)]) == []
    assert sim.machine.serving == 1


def test_ready_timeout_for_an_exited_or_draining_worker_does_nothing() -> None:
    sim = Sim()
    old_first, old_second = start_serving(sim)
    culprit, sibling = reload(sim)
    sim.send(WorkerExited(culprit, 1))  # sibling is now draining
    sim.clock.advance(5.0)

    assert sim.send_all([ReadyTimeout(culprit), ReadyTimeout(sibling)]) == []
    assert sim.send(ReadyTimeout(12345)) == []
    assert sim.machine.serving == 1
    assert sim.machine.workers.keys() == {old_first, old_second, sibling}


def test_drain_timeout_for_a_worker_that_already_exited_does_nothing() -> None:
    sim = Sim()
    old = start_serving(sim)
    serve_new_generation(sim)
    sim.send_all(WorkerExited(serial, 0) for serial in old)
    sim.clock.advance(4.0)

    assert sim.send_all(DrainTimeout(serial) for serial in old) == []


def test_drain_timeout_for_a_worker_that_is_not_draining_does_nothing() -> None:
    sim = Sim()
    serving = start_serving(sim)

    assert sim.send_all(DrainTimeout(serial) for serial in serving) == []


def test_restart_due_for_a_retired_generation_does_nothing() -> None:
    sim = Sim()
    first, _ = start_serving(sim)
    sim.send(WorkerExited(first, 1))
    serve_new_generation(sim)
    sim.clock.advance(0.1)

    assert sim.send(RestartDue(1, 0)) == []
    assert sim.send(RestartDue(99, 0)) == []


def test_restart_due_for_a_slot_that_is_already_filled_does_nothing() -> None:
    sim = Sim()
    first, _ = start_serving(sim)
    sim.send(WorkerExited(first, 1))
    assert len(spawned(sim.send(RestartDue(1, 0)))) == 1

    assert sim.send(RestartDue(1, 0)) == []
    assert sim.send(RestartDue(1, 1)) == []


# --- stopping ---------------------------------------------------------------------


def test_stop_drains_every_worker_including_starting_ones() -> None:
    sim = Sim()
    serving = start_serving(sim)
    starting = reload(sim)

    actions = sim.send(StopRequested())

    everyone = set(serving) | set(starting)
    assert shut_down(actions) == everyone
    # the serving ones get drain_timeout; the ones still starting only kill_grace
    drains = {a.serial: a.drain_timeout for a in of_type(actions, ShutdownWorker)}
    assert drains == {**dict.fromkeys(serving, 3.0), **dict.fromkeys(starting, 1.0)}
    kills = {event.serial: delay for delay, event in timers(actions, DrainTimeout)}
    assert kills == {**dict.fromkeys(serving, 4.0), **dict.fromkeys(starting, 2.0)}
    assert killed(actions) == set()
    assert spawned(actions) == []
    assert exits(actions) == []
    assert messages(actions) == ["stopping: draining 4 workers (up to drain_timeout=3s)"]


def test_stop_exits_0_once_every_worker_drained_on_its_own() -> None:
    sim = Sim()
    first, second = start_serving(sim)
    sim.send(StopRequested())

    assert sim.send(WorkerExited(first, 0)) == []
    actions = sim.send(WorkerExited(second, 0))

    assert actions == [Exit(0)]
    assert sim.machine.exited


def test_second_stop_kills_every_remaining_worker_and_exits_1() -> None:
    sim = Sim()
    serving = start_serving(sim)
    starting = reload(sim)
    sim.send(StopRequested())
    sim.send(WorkerExited(serving[0], 0))

    actions = sim.send(StopRequested())

    remaining = {serving[1], *starting}
    assert of_type(actions, KillWorker) == [KillWorker(s) for s in (serving[1], *starting)]
    assert killed(actions) == remaining
    assert messages(actions, logging.WARNING) == ["stopping now: killing 3 workers"]
    assert exits(actions) == []

    assert sim.send(StopRequested()) == []
    actions = sim.send_all(WorkerExited(serial, -9) for serial in sorted(remaining))
    assert exits(actions) == [1]


def test_drain_timeout_during_stop_kills_the_worker_and_exit_code_is_1() -> None:
    sim = Sim()
    first, second = start_serving(sim)
    sim.send(StopRequested())
    sim.send(WorkerExited(first, 0))
    sim.clock.advance(4.0)

    actions = sim.send(DrainTimeout(second))

    assert killed(actions) == {second}
    assert exits(actions) == []
    assert sim.send(WorkerExited(second, -9)) == [Exit(1)]


def test_reload_is_ignored_while_stopping() -> None:
    sim = Sim()
    start_serving(sim)
    sim.send(StopRequested())

    actions = sim.send(ReloadRequested())

    assert actions == [Log(logging.INFO, "reload ignored: the service is stopping")]
    assert sim.machine.starting is None


def test_reload_queued_before_stop_never_starts() -> None:
    sim = Sim()
    first, second = start_serving(sim)
    new = reload(sim)
    sim.send(ReloadRequested())  # queued behind generation 2
    sim.send(StopRequested())

    actions = sim.send_all(WorkerReady(serial) for serial in new)
    actions += sim.send_all(WorkerExited(serial, 0) for serial in [first, second, *new])

    assert spawned(actions) == []
    assert not shut_down(actions)
    assert exits(actions) == [0]


def test_serving_worker_exiting_while_stopping_is_not_restarted() -> None:
    sim = Sim()
    first, second = start_serving(sim)
    sim.send(StopRequested())

    actions = sim.send(WorkerExited(first, 1))

    assert timers(actions, RestartDue) == []
    assert messages(actions, logging.WARNING) == [
        "generation 1 worker 0 exited while draining: exited with code 1"
    ]
    assert sim.send(WorkerExited(second, 0)) == [Exit(0)]


def test_restart_due_while_stopping_spawns_nothing() -> None:
    sim = Sim()
    first, _ = start_serving(sim)
    sim.send(WorkerExited(first, 1))
    sim.send(StopRequested())

    assert sim.send(RestartDue(1, 0)) == []


def test_stop_with_no_worker_left_exits_0_at_once() -> None:
    sim = Sim(Settings(workers=1))
    (serial,) = start_serving(sim)
    sim.send(WorkerExited(serial, 1))  # waits for its restart

    actions = sim.send(StopRequested())

    assert exits(actions) == [0]


def test_stop_during_first_start_drains_and_exits_0() -> None:
    sim = Sim()
    first, second = spawned(sim.send(Start()))

    actions = sim.send(StopRequested())
    assert shut_down(actions) == {first, second}

    assert sim.send(WorkerReady(first)) == []
    assert sim.machine.serving is None
    actions = sim.send_all([WorkerExited(first, 0), WorkerExited(second, 0)])
    assert exits(actions) == [0]


def test_events_after_exit_return_no_actions() -> None:
    sim = Sim(Settings(workers=1))
    (serial,) = start_serving(sim)
    sim.send(StopRequested())
    assert sim.send(WorkerExited(serial, 0)) == [Exit(0)]

    late: list[Event] = [
        Start(),
        ReloadRequested(),
        StopRequested(),
        WorkerReady(serial),
        WorkerFailed(serial, "late"),
        WorkerExited(serial, 0),
        ReadyTimeout(serial),
        DrainTimeout(serial),
        RestartDue(1, 0),
    ]
    for event in late:
        assert sim.send(event) == [], event


# --- a worker that breaks the control protocol -------------------------------------------


def test_serving_worker_that_misbehaves_is_killed_then_restarted_with_its_cause() -> None:
    sim = Sim()
    first, second = start_serving(sim)

    actions = sim.send(WorkerMisbehaved(first, "not JSON: b'junk'"))

    assert killed(actions) == {first}
    assert messages(actions, logging.WARNING) == [
        "generation 1 worker 0 sent a malformed control message (not JSON: b'junk'); killing it"
    ]
    actions = sim.send(WorkerExited(first, -9))
    assert timers(actions, RestartDue) == [(0.1, RestartDue(1, 0))]
    assert messages(actions, logging.WARNING) == [
        "generation 1 worker 0 sent a malformed control message (not JSON: b'junk'); "
        "restarting it in 0.1s"
    ]
    assert second not in killed(actions)
    assert sim.machine.serving == 1


def test_starting_worker_that_misbehaves_fails_the_reload_with_that_cause() -> None:
    sim = Sim()
    start_serving(sim)
    culprit, sibling = reload(sim)

    actions = sim.send(WorkerMisbehaved(culprit, "a line longer than 4096 bytes"))

    assert killed(actions) == {culprit}
    assert shut_down(actions) == {sibling}
    assert messages(actions, logging.ERROR) == [
        "reload failed: generation 2: worker 0: sent a malformed control message (a line "
        "longer than 4096 bytes); generation 1 keeps serving"
    ]
    assert sim.machine.serving == 1


def test_misbehaving_twice_or_after_a_kill_asks_for_nothing_more() -> None:
    sim = Sim()
    first, _ = start_serving(sim)
    sim.send(WorkerMisbehaved(first, "junk"))

    assert sim.send(WorkerMisbehaved(first, "more junk")) == []
    sim.send(WorkerExited(first, -9))
    assert sim.send(WorkerMisbehaved(first, "from beyond")) == []


def test_the_first_stop_releases_the_listeners_once() -> None:
    sim = Sim()
    start_serving(sim)

    first = sim.send(StopRequested())
    second = sim.send(StopRequested())

    assert of_type(first, StopAccepting) == [StopAccepting()]
    assert of_type(second, StopAccepting) == []


def test_a_first_generation_that_fails_releases_the_listeners() -> None:
    sim = Sim()
    culprit, _ = spawned(sim.send(Start()))

    actions = sim.send(WorkerExited(culprit, 1))

    assert of_type(actions, StopAccepting) == [StopAccepting()]


def test_a_worker_still_starting_at_stop_is_killed_after_kill_grace_without_failing_the_stop() -> (
    None
):
    sim = Sim()
    serving = start_serving(sim)
    [starting, _] = reload(sim)
    sim.send(StopRequested())
    sim.send_all(WorkerExited(serial, 0) for serial in serving)
    sim.clock.advance(2.0)

    actions = sim.send(DrainTimeout(starting))

    assert killed(actions) == {starting}
    assert messages(actions, logging.INFO) == [
        "generation 2 worker 0 was still starting when the service stopped; killing it"
    ]
    assert messages(actions, logging.WARNING) == []
    sim.send(WorkerExited(starting, -9))
    sim.send(DrainTimeout(starting + 1))
    assert exits(sim.send(WorkerExited(starting + 1, -9))) == [0]


def test_a_reload_queued_before_a_delayed_stop_never_starts() -> None:
    # Found by an attack: the follow-up started during stop_delay.
    sim = Sim(Settings(workers=1, stop_delay=5.0))
    start_serving(sim)
    (starting,) = reload(sim)
    sim.send(ReloadRequested())  # queued behind generation 2
    sim.send(StopRequested())  # stop_delay: announced, still serving

    actions = sim.send(WorkerReady(starting))

    assert spawned(actions) == []
    assert sim.machine.serving == 2
    assert sim.machine.stop_announced
