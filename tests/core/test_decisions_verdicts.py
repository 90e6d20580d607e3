"""The verdicts on a new generation's answers: the judged probation and the canary,
event by event (no processes).

See :mod:`graceful.core.verdict` and :mod:`graceful.core.canary`. The integration
tests with real servers, real 500s and load are in ``tests/test_verdicts.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
from sim import SETTINGS, Sim, messages, of_type, shut_down, spawned, timers

from graceful.core import verdict
from graceful.core.answers import BUCKETS, NO_ANSWERS, Answers, lower_bound, outcome_of
from graceful.core.machine import (
    AnswersCounted,
    CanaryOver,
    GenerationServing,
    ParkWorker,
    ProbationEnded,
    ProbationOver,
    ReloadEnded,
    ReloadRequested,
    ResumeWorker,
    Role,
    RollbackEnded,
    ScaleEnded,
    ScaleRequested,
    Settings,
    Start,
    Strategy,
    WorkerBroken,
    WorkerExited,
    WorkerHung,
    WorkerReady,
    WorkerState,
)

JUDGED = dataclasses.replace(SETTINGS, probation=30.0, rollback_min_requests=100)
CANARY = dataclasses.replace(JUDGED, workers=4, canary=1, canary_seconds=10.0)


def answered(ok: int, errors: int = 0, *, slow: int = 0) -> Answers:
    """``ok`` answers of 2xx and ``errors`` of 5xx, the first ``slow`` of them in the
    2.5 s bucket, the others under 5 ms."""
    total = ok + errors
    buckets = [0] * (len(BUCKETS) + 1)
    buckets[0], buckets[BUCKETS.index(2.5)] = total - slow, slow
    return Answers((ok, 0, 0, errors, 0), tuple(buckets), 0.001 * total)


# -- the counts and the verdict, pure --------------------------------------------------


def test_an_answer_is_counted_by_its_status_class_and_no_response_is_a_failure() -> None:
    assert [outcome_of(s) for s in (101, 200, 204, 301, 404, 500, 503, 599, 600, None)] == [
        0, 0, 0, 1, 2, 3, 3, 3, 4, 4,
    ]  # fmt: skip
    counted = Answers((5, 1, 2, 3, 4), (15,) + (0,) * len(BUCKETS), 0.0)
    assert counted.total == 15
    assert counted.server_errors == 7
    assert counted.error_rate == pytest.approx(7 / 15)
    assert (counted - counted).total == 0
    assert (counted + counted).by_outcome()["failed"] == 8


def test_the_p99_is_interpolated_within_its_bucket() -> None:
    assert NO_ANSWERS.quantile(0.99) is None
    assert answered(100).quantile(0.99) == pytest.approx(0.00495)
    # 2 of 100 in the 1..2.5 s bucket: the 99th is halfway through it
    assert answered(100, slow=2).quantile(0.99) == pytest.approx(1.75)
    beyond = Answers((1, 0, 0, 0, 0), (0,) * len(BUCKETS) + (1,), 60.0)
    assert beyond.quantile(0.99) == BUCKETS[-1]


def test_the_rate_s_lower_bound_grows_with_the_evidence() -> None:
    assert lower_bound(0, 0) == 0
    assert lower_bound(6, 100) < 0.05  # 6% of 100: not surely above 5%
    assert lower_bound(60, 1000) > 0.04
    assert lower_bound(30, 100) > 0.15
    assert lower_bound(100, 100) > 0.9


@pytest.mark.parametrize(
    ("answers", "baseline", "fails"),
    [
        (answered(69, 30), NO_ANSWERS, False),  # 99 answers: fewer than 100, not judged
        (answered(70, 30), NO_ANSWERS, True),  # 30% of 100
        (answered(94, 6), NO_ANSWERS, False),  # 6%: above 5%, but not surely
        (answered(940, 60), NO_ANSWERS, False),  # 6% of 1000: still not surely above 5%
        (answered(880, 120), NO_ANSWERS, True),  # 12% of 1000
        (answered(70, 30), answered(60, 40), False),  # the old code failed as much
        (answered(100, 0, slow=2), NO_ANSWERS, False),  # p99 off by default
    ],
)
def test_the_verdict(answers: Answers, baseline: Answers, fails: bool) -> None:
    cause = verdict.judge(answers, baseline, JUDGED, old=4, when="before the reload")
    assert (cause is not None) is fails, cause


def test_the_verdict_names_the_rate_the_count_the_limit_and_the_old_rate() -> None:
    cause = verdict.judge(
        answered(316, 96), answered(999, 1), JUDGED, old=4, when="before the reload"
    )
    assert cause == (
        "5xx rate 23.3% (96 of 412 answers; limit 5%); generation 4 served 0.1% before the reload"
    )
    slow = dataclasses.replace(JUDGED, rollback_on_p99=0.5)
    cause = verdict.judge(answered(200, slow=10), answered(200), slow, old=4, when="meanwhile")
    assert cause is not None
    assert cause.startswith("p99 ")
    assert "(limit 0.5s); generation 4's p99 was 0.005s meanwhile" in cause
    off = dataclasses.replace(JUDGED, rollback_on_error_rate=0.0)
    assert verdict.judge(answered(0, 500), NO_ANSWERS, off, old=4, when="") is None


# -- the judged probation ---------------------------------------------------------------


def on_probation(settings: Settings = JUDGED) -> tuple[Sim, list[int], list[int]]:
    """Generation 1 parked, generation 2 serving on probation."""
    sim = Sim(settings)
    first = spawned(sim.send(Start()))
    sim.send_all(WorkerReady(serial, parkable=True) for serial in first)
    second = spawned(sim.send(ReloadRequested()))
    sim.send_all(WorkerReady(serial, parkable=True) for serial in second)
    assert sim.machine.probation is not None
    return sim, first, second


def test_a_probation_rolls_back_on_the_answers_once_they_are_enough_and_bad() -> None:
    sim, first, second = on_probation()
    # bad, but only 99 answers: nothing yet, however bad
    assert sim.send(AnswersCounted(2, answered(0, 99), answered(1000))) == []
    assert sim.machine.probation is not None
    actions = sim.send(AnswersCounted(2, answered(70, 30), answered(1000)))
    assert {a.serial for a in of_type(actions, ResumeWorker)} == set(first)
    assert sim.machine.rollback is not None
    assert any(
        "rolling back: generation 2's 5xx rate 30.0% (30 of 100 answers; limit 5%); "
        "generation 1 served 0.0% before the reload" in line
        for line in messages(actions)
    )
    # the parked generation resumes: the rollback completes, and says why
    actions = sim.send_all(WorkerReady(serial, parkable=True) for serial in first)
    assert shut_down(actions) == set(second)
    ended = of_type(actions, RollbackEnded)
    assert ended[0].ok
    assert "5xx rate 30.0%" in ended[0].detail
    assert of_type(actions, ProbationEnded)[0].outcome == "rolled back"
    assert sim.machine.rejected is not None
    assert "5xx rate 30.0%" in sim.machine.status()


def test_a_good_deploy_passes_its_probation_and_too_few_answers_are_said_so() -> None:
    sim, first, _ = on_probation()
    assert sim.send(AnswersCounted(2, answered(5000, 20), answered(1000))) == []
    sim.send(AnswersCounted(2, answered(5000, 21), answered(1000)))
    assert "5,021 answers, 0.4% 5xx" in sim.machine.status()
    actions = sim.send(ProbationOver(2))
    assert shut_down(actions) == set(first)
    assert of_type(actions, ProbationEnded)[0].detail == "passed 30s of probation"
    # on few answers, the probation passes unjudged, and says so
    sim, _, _ = on_probation()
    sim.send(AnswersCounted(2, answered(10, 9), NO_ANSWERS))
    ended = of_type(sim.send(ProbationOver(2)), ProbationEnded)[0]
    assert ended.outcome == "passed"
    assert "not judged: 19 answers, fewer than rollback_min_requests=100" in ended.detail


def test_answers_about_another_generation_or_after_the_verdict_change_nothing() -> None:
    sim, _, _ = on_probation()
    assert sim.send(AnswersCounted(1, answered(0, 500), NO_ANSWERS)) == []
    assert sim.send(AnswersCounted(7, answered(0, 500), NO_ANSWERS)) == []
    # a verdict with nothing left to resume: said once, and the probation goes on
    for serial in list(sim.machine.workers):
        if sim.machine.workers[serial].generation == 1:
            sim.send(WorkerExited(serial, 0))
    first = sim.send(AnswersCounted(2, answered(0, 500), NO_ANSWERS))
    assert any("cannot roll back" in line for line in messages(first))
    assert sim.send(AnswersCounted(2, answered(0, 600), NO_ANSWERS)) == []
    assert sim.machine.probation is not None


# -- the canary -------------------------------------------------------------------------


def canary_started(settings: Settings = CANARY) -> tuple[Sim, list[int], list[int]]:
    """Generation 1 serving with 4 workers, and a reload: generation 2's canary ready."""
    sim = Sim(settings)
    first = spawned(sim.send(Start()))
    sim.send_all(WorkerReady(serial, parkable=True) for serial in first)
    canary = spawned(sim.send(ReloadRequested()))
    assert len(canary) == min(settings.canary, settings.workers)
    actions = sim.send_all(WorkerReady(serial, parkable=True) for serial in canary)
    assert timers(actions, CanaryOver) == [(settings.canary_seconds, CanaryOver(2))]
    assert sim.machine.canary is not None
    return sim, first, canary


def test_a_canary_starts_k_workers_beside_the_whole_serving_generation() -> None:
    sim, first, canary = canary_started()
    workers = sim.machine.workers
    assert all(workers[serial].state is WorkerState.READY for serial in first + canary)
    assert sim.machine.serving == 1
    assert sim.machine.starting == 2
    sim.send(AnswersCounted(2, answered(50), answered(200)))
    status = sim.machine.status()
    assert "mixed fleet: generation 2 canary, 1 workers, 10s left, 50 answers" in status
    assert "20.0% of the traffic" in status
    # scaling waits for the verdict
    (answer,) = of_type(sim.send(ScaleRequested("test", workers=6)), ScaleEnded)
    assert not answer.ok
    assert "generation 2's canary is being judged" in answer.detail
    assert sim.machine.size == 4


def test_a_failed_canary_drains_and_the_reload_fails_with_the_rate() -> None:
    sim, first, canary = canary_started()
    actions = sim.send(AnswersCounted(2, answered(70, 30), answered(400, 1)))
    assert shut_down(actions) == set(canary)
    assert not of_type(actions, ParkWorker)
    assert all(sim.machine.workers[serial].state is WorkerState.READY for serial in first)
    ended = of_type(actions, ReloadEnded)[0].reload
    assert ended.outcome == "failed"
    assert ended.cause == (
        "canary failed: 5xx rate 30.0% (30 of 100 answers; limit 5%); "
        "generation 1 served 0.2% meanwhile"
    )
    assert sim.machine.canary is None
    assert sim.machine.counters.canaries == {"failed": 1}
    # its time running out later changes nothing
    assert sim.send(CanaryOver(2)) == []


def test_a_canary_that_passes_goes_on_all_at_once_and_parks_the_old_generation() -> None:
    sim, first, _ = canary_started()
    sim.send(AnswersCounted(2, answered(500, 1), answered(2000, 2)))
    actions = sim.send(CanaryOver(2))
    rest = spawned(actions)
    assert len(rest) == 3
    assert any(
        "canary passed: 501 answers in 10s, 0.2% 5xx (generation 1: 0.1%), 20.0% of the traffic"
        in line
        for line in messages(actions)
    )
    actions = sim.send_all(WorkerReady(serial, parkable=True) for serial in rest)
    assert of_type(actions, GenerationServing) == [GenerationServing(2, first=False)]
    assert {a.serial for a in of_type(actions, ParkWorker)} == set(first)
    assert sim.machine.probation is not None
    assert sim.machine.counters.canaries == {"passed": 1}


def test_a_canary_as_large_as_the_generation_still_waits_for_its_time() -> None:
    sim, _, canary = canary_started(dataclasses.replace(CANARY, canary=9))
    assert len(canary) == 4  # no more than the generation's size
    assert sim.machine.serving == 1
    actions = sim.send(CanaryOver(2))
    assert of_type(actions, GenerationServing) == [GenerationServing(2, first=False)]


def test_a_passed_canary_rolls_on_with_the_rolling_strategy() -> None:
    rolling = dataclasses.replace(CANARY, strategy=Strategy.ROLLING, max_surge=1)
    sim, first, _ = canary_started(rolling)
    actions = sim.send(CanaryOver(2))
    # one old worker parked for the canary's, and one more new worker
    assert len(of_type(actions, ParkWorker)) == 1
    assert len(spawned(actions)) == 1
    assert sim.machine.generations[2].rolling
    assert sim.machine.generations[1].role is Role.SERVING
    assert len(first) == 4


def test_a_crash_or_a_broken_canary_fails_it_at_once() -> None:
    sim, _, canary = canary_started()
    actions = sim.send(WorkerExited(canary[0], 1))
    assert of_type(actions, ReloadEnded)[0].reload.outcome == "failed"
    assert sim.machine.canary is None
    assert sim.machine.serving == 1
    sim, _, canary = canary_started()
    actions = sim.send(WorkerBroken(canary[0], "no database"))
    assert "declared itself broken" in str(of_type(actions, ReloadEnded)[0].reload.cause)
    assert sim.machine.canary is None
    assert not of_type(actions, ResumeWorker)
    # a canary worker whose loop stopped beating (SIGSTOP, a blocked loop)
    sim, _, canary = canary_started()
    actions = sim.send(WorkerHung(canary[0], 31.0))
    assert "hung" in str(of_type(actions, ReloadEnded)[0].reload.cause)
    assert sim.machine.canary is None
    assert sim.machine.serving == 1


def test_a_canary_is_judged_only_once_its_workers_are_ready_and_too_few_pass() -> None:
    sim = Sim(CANARY)
    first = spawned(sim.send(Start()))
    sim.send_all(WorkerReady(serial, parkable=True) for serial in first)
    spawned(sim.send(ReloadRequested()))
    # not ready yet: its answers (if any) are kept, not judged, and no time is over
    assert sim.send(AnswersCounted(2, answered(0, 500), NO_ANSWERS)) == []
    assert sim.send(CanaryOver(2)) == []
    assert "canary starting" in sim.machine.status()
    sim, _, _ = canary_started()
    sim.send(AnswersCounted(2, answered(3, 3), answered(10)))
    actions = sim.send(CanaryOver(2))
    assert any("not judged: 6 answers" in line for line in messages(actions))
    assert len(spawned(actions)) == 3


def test_no_canary_for_the_first_generation_or_in_development_mode() -> None:
    sim = Sim(CANARY)
    assert len(spawned(sim.send(Start()))) == 4
    assert sim.machine.canary is None
    sim = Sim(dataclasses.replace(CANARY, development=True))
    first = spawned(sim.send(Start()))
    sim.send_all(WorkerReady(serial, parkable=True) for serial in first)
    assert len(spawned(sim.send(ReloadRequested()))) == 4
    assert sim.machine.canary is None


# -- a generation judged as it starts -------------------------------------------------


def test_a_generation_that_answers_badly_as_it_starts_fails_its_reload_unpromoted() -> None:
    # all at once: its first worker accepts before the other is ready
    sim = Sim(JUDGED)
    first = spawned(sim.send(Start()))
    sim.send_all(WorkerReady(serial, parkable=True) for serial in first)
    second = spawned(sim.send(ReloadRequested()))
    sim.send(WorkerReady(second[0], parkable=True))
    # good answers so far, or too few: nothing
    assert sim.send(AnswersCounted(2, answered(99, 0), answered(99))) == []
    assert sim.send(AnswersCounted(2, answered(0, 99), answered(99))) == []
    actions = sim.send(AnswersCounted(2, answered(70, 30), answered(300)))
    assert shut_down(actions) == set(second)
    assert not of_type(actions, ParkWorker)
    assert not of_type(actions, GenerationServing)
    ended = of_type(actions, ReloadEnded)[0].reload
    assert ended.outcome == "failed"
    assert ended.cause == (
        "judged as it started: 5xx rate 30.0% (30 of 100 answers; limit 5%); "
        "generation 1 served 0.0% meanwhile"
    )
    assert sim.machine.serving == 1
    assert sim.machine.probation is None
    assert all(sim.machine.workers[serial].state is WorkerState.READY for serial in first)


def test_a_rolling_generation_that_answers_badly_gives_back_the_slots_it_took() -> None:
    rolling = dataclasses.replace(JUDGED, strategy=Strategy.ROLLING, max_surge=1)
    sim = Sim(rolling)
    first = spawned(sim.send(Start()))
    sim.send_all(WorkerReady(serial, parkable=True) for serial in first)
    (new,) = spawned(sim.send(ReloadRequested()))
    actions = sim.send(WorkerReady(new, parkable=True))
    (parked,) = (action.serial for action in of_type(actions, ParkWorker))
    actions = sim.send(AnswersCounted(2, answered(50, 50), answered(100)))
    assert {action.serial for action in of_type(actions, ResumeWorker)} == {parked}
    assert new in shut_down(actions)
    assert of_type(actions, ReloadEnded)[0].reload.outcome == "failed"
