"""Attacks on the judged probation and the canary (docs/guides/verdicts.md): each
test fails on the code it was written against, and names the fault it shows.

Pure and fast: the state machine driven event by event (``sim``), the supervisor's
answer book over real vitals pages, and the settings' checks (one ``graceful check``
subprocess).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from sim import Sim, messages, of_type, spawned
from test_decisions_verdicts import CANARY, JUDGED, answered, canary_started, on_probation

from graceful.base.errors import ConfigError
from graceful.core import verdict
from graceful.core.answers import BUCKETS, NO_ANSWERS, Answers
from graceful.core.machine import (
    AnswersCounted,
    CanaryOver,
    ProbationEnded,
    ProbationOver,
    ReloadEnded,
    ReloadRequested,
    RollbackEnded,
    RollbackRequested,
    ScaleEnded,
    ScaleRequested,
    SpawnWorker,
    Start,
    WorkerExited,
    WorkerReady,
)
from graceful.core.settings import SETTINGS, Setting
from graceful.supervisor.answers import KEPT, AnswerBook
from graceful.wire.vitals import VitalsPage

# -- settings ----------------------------------------------------------------------------


def declared(name: str) -> Setting:
    return next(setting for setting in SETTINGS if setting.name == name)


def test_a_huge_integer_rate_is_a_config_error_not_an_overflow() -> None:
    # TOML integers are unbounded in tomllib: rollback_on_error_rate = 1000...0 (400
    # digits) made `graceful check` / `graceful serve` die with a traceback
    # (OverflowError from math.isfinite in _check_rate), exit status 1
    with pytest.raises(ConfigError):
        declared("rollback_on_error_rate").check(10**400)


def test_a_huge_integer_rate_in_the_configuration_file_exits_2_in_one_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "app.py").write_text("async def app(scope, receive, send):\n    pass\n")
    (tmp_path / "graceful.toml").write_text(f"rollback_on_error_rate = {10**400}\n")
    done = subprocess.run(
        [sys.executable, "-m", "graceful", "check", "app:app"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "rollback_on_error_rate" in done.stderr


# -- the verdict -------------------------------------------------------------------------


def test_a_p99_limit_above_the_last_bucket_is_refused_and_one_below_fires() -> None:
    # --rollback-on-p99 15 was accepted, but Answers.quantile() never says more than
    # BUCKETS[-1] (10 s): a deploy whose every answer takes 60 s was never judged
    with pytest.raises(ConfigError, match=r"^rollback_on_p99=15.0 must be below 10 "):
        declared("rollback_on_p99").check(15.0)
    slow = dataclasses.replace(JUDGED, rollback_on_p99=9.5)
    minute = Answers((200, 0, 0, 0, 0), (0,) * len(BUCKETS) + (200,), 60.0 * 200)
    cause = verdict.judge(minute, answered(1000), slow, old=1, when="before the reload")
    assert cause is not None
    assert cause.startswith("p99 10.000s over 200 answers (limit 9.5s)")


# -- the judged probation ----------------------------------------------------------------


def test_a_probation_its_answers_failed_is_not_reported_as_passed() -> None:
    # the verdict fails generation 2, but its parked workers are gone (so it cannot
    # roll back); when the probation's time is over, it is said to have *passed*,
    # and `graceful reload --wait --through-probation` exits 0
    sim, first, _ = on_probation()
    for serial in first:
        sim.send(WorkerExited(serial, 0))
    said = sim.send(AnswersCounted(2, answered(0, 500), NO_ANSWERS))
    assert any("cannot roll back" in line for line in messages(said))
    (ended,) = of_type(sim.send(ProbationOver(2)), ProbationEnded)
    assert ended.outcome != "passed", ended
    assert "5xx rate" in ended.detail, ended


# -- the canary --------------------------------------------------------------------------


def test_a_failed_canary_s_code_is_not_spawned_into_the_serving_generation() -> None:
    # After a rollback, scaling up is refused ("the code on disk was rolled back, and
    # new workers would run it"). After a canary failed on the same evidence, the
    # code on disk is just as bad, yet `graceful scale` spawns it into the serving
    # generation (seen for real: the new worker of generation 1 answered 30% 500s,
    # and nothing judges the serving generation)
    sim, _, _ = canary_started()
    sim.send(AnswersCounted(2, answered(70, 30), answered(400, 1)))
    assert sim.machine.canary is None
    actions = sim.send(ScaleRequested("test", workers=5))
    (answer,) = of_type(actions, ScaleEnded)
    new = [(spawn.generation, spawn.worker_id) for spawn in of_type(actions, SpawnWorker)]
    assert not answer.ok or not new, (answer, new)


def canary_during_a_probation() -> tuple[Sim, list[int]]:
    """Generation 1 parked for generation 2's probation, and a reload: generation
    3's canary judged beside generation 2. Returns generation 1's serials."""
    sim = Sim(CANARY)
    first = spawned(sim.send(Start()))
    sim.send_all(WorkerReady(serial, parkable=True) for serial in first)
    second = spawned(sim.send(ReloadRequested()))
    sim.send_all(WorkerReady(serial, parkable=True) for serial in second)
    rest = spawned(sim.send(CanaryOver(2)))
    sim.send_all(WorkerReady(serial, parkable=True) for serial in rest)
    assert sim.machine.probation is not None
    third = spawned(sim.send(ReloadRequested()))
    sim.send_all(WorkerReady(serial, parkable=True) for serial in third)
    assert sim.machine.canary is not None
    assert sim.machine.canary.beside == 2
    return sim, first


def test_a_canary_beside_a_generation_that_is_rolled_back_is_not_judged_against_it() -> None:
    # A reload during a probation starts a canary beside the generation on
    # probation. That generation is rolled back by its verdict: generation 1 serves
    # again, and the canary was still judged "beside generation 2" (the rolled-back,
    # bad one: "generation 2 served 30% meanwhile" let a canary as bad pass).
    sim, first = canary_during_a_probation()
    sim.send(AnswersCounted(2, answered(70, 30), answered(1000)))
    assert sim.machine.rollback is not None
    sim.send_all(WorkerReady(serial, parkable=True) for serial in first)
    assert sim.machine.serving == 1
    canary = sim.machine.canary
    assert canary is not None
    assert canary.beside == 1


def test_a_rollback_asked_for_during_a_canary_stops_the_canary() -> None:
    # the newest code is the canary's: `graceful rollback` takes it back (there was
    # no way to stop a canary by hand), and the probation goes on
    sim, _ = canary_during_a_probation()
    actions = sim.send(RollbackRequested("graceful rollback"))
    (ended,) = of_type(actions, RollbackEnded)
    assert ended.ok
    assert ended.detail == "generation 3's canary stopped; generation 2 serves on"
    assert sim.machine.canary is None
    assert sim.machine.serving == 2
    assert sim.machine.probation is not None
    (reload,) = of_type(actions, ReloadEnded)
    assert reload.reload.cause == "canary stopped by graceful rollback"


# -- the answer book ---------------------------------------------------------------------


def test_the_serving_generation_s_answers_outlive_many_failed_reloads() -> None:
    # AnswerBook keeps the exited workers' answers of the newest KEPT generation
    # numbers, and status/metrics show the newest KEPT numbers: after 16 failed
    # reloads (failed canaries), the serving generation's exited workers' answers
    # are forgotten (its counter goes down) and it vanishes from status and
    # /metrics, although it still serves
    pages: list[VitalsPage] = []

    def process(generation: int, ok: int = 0, errors: int = 0) -> SimpleNamespace:
        page = VitalsPage.create()
        pages.append(page)
        for _ in range(ok):
            page.count_answer(0, 0, 1000)
        for _ in range(errors):
            page.count_answer(3, 0, 1000)
        return SimpleNamespace(generation=generation, vitals=page)

    try:
        live = {1: process(1, ok=100)}
        book = AnswerBook(lambda: live, lambda: None, lambda event: None)  # type: ignore[arg-type,return-value]
        book.last_words(process(1, ok=50))  # a recycled worker of generation 1
        assert book.of(1).total == 150
        for generation in range(2, 2 + KEPT):  # reloads that failed, each after a few answers
            book.last_words(process(generation, ok=1, errors=5))
        assert book.of(1).total == 150
        assert 1 in book.recent()
    finally:
        for page in pages:
            page.close()


def test_the_probation_s_baseline_is_what_the_parked_generation_answered_before_the_reload() -> (
    None
):
    # AnswerBook.tick sends of(parked) as the baseline, read at every tick: the
    # requests the parked generation's workers had in flight and that were cancelled
    # at their drain deadline *after* the reload count as its failures. Seen for
    # real: "generation 1 served 16.7% before the reload", where generation 1 had
    # served 200 answers, all 2xx, before the reload, and 40 long requests were cut
    # by its drain. The inflated baseline shields a bad deploy ("above the error
    # rate the old generation had before the reload").
    from graceful.core.trial import OnProbation  # noqa: PLC0415

    pages: list[VitalsPage] = []
    sent: list[AnswersCounted] = []

    def page_with(ok: int) -> VitalsPage:
        page = VitalsPage.create()
        pages.append(page)
        for _ in range(ok):
            page.count_answer(0, 0, 1000)
        return page

    try:
        old, new = page_with(200), page_with(0)
        live = {
            1: SimpleNamespace(generation=1, vitals=old),
            2: SimpleNamespace(generation=2, vitals=new),
        }
        machine = SimpleNamespace(
            probation=OnProbation(2, 1, 0.0, 30.0), canary=None, starting=None, serving=2
        )
        book = AnswerBook(lambda: live, lambda: machine, sent.append)  # type: ignore[arg-type,return-value]
        new.count_answer(0, 0, 1000)
        book.tick()
        # the parked workers' long requests are cancelled at their drain deadline
        for _ in range(40):
            old.count_answer(4, 9, 1_000_000)
        new.count_answer(3, 0, 1000)
        book.tick()
        assert sent[-1].generation == 2
        assert sent[-1].baseline.server_errors == 0, sent[-1].baseline
    finally:
        for page in pages:
            page.close()
