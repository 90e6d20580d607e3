"""The canary: a reload's first few workers, judged beside the whole serving
generation before the others start.

With ``canary`` = K above 0, a reload (not the first start, nor one in development
mode) starts only K workers of the new generation (:func:`start`), while every
worker of the serving generation goes on: a deliberately mixed fleet, which
``status`` marks as such. New connections reach the canary's workers in proportion
to how often they accept. Once all K are ready, the canary is judged for
``canary_seconds`` (:func:`start_clock`) by its answers, beside the serving
generation's over the same time (:mod:`graceful.core.verdict`):

* **failed** at once by a verdict (:func:`count`), or by a crash, a
  ``declare_broken`` or a hang of one of its workers (as any starting generation
  fails): its workers drain and exit, the serving generation never stopped, and
  the reload fails with the cause;
* **passed** once ``canary_seconds`` are over without a verdict (:func:`passed`; with
  fewer than ``rollback_min_requests`` answers, it passes unjudged, and says so: the
  probation judges the generation again). The reload then goes on as configured
  (:func:`proceed`): all at once, or rolling, and the old generation is parked for
  the probation as usual.

The machine keeps the :class:`Canary` while its generation starts, and forgets it
once the generation is no longer starting, whichever way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from graceful.core import rollout, verdict
from graceful.core.actions import StartTimer
from graceful.core.answers import NO_ANSWERS, Answers
from graceful.core.events import CanaryOver
from graceful.core.fleet import Fleet, Generation, WorkerState


@dataclass
class Canary:
    """Generation ``generation`` starts as a canary of ``workers`` workers beside
    generation ``beside``; judged from ``judged_from`` (once all are ready)."""

    generation: int
    beside: int
    workers: int
    judged_from: float | None = None
    #: its answers so far, and the serving generation's since ``judged_from``
    answers: Answers = NO_ANSWERS
    baseline: Answers = NO_ANSWERS

    @property
    def share(self) -> float | None:
        """The canary's share of all answers since it is judged (None: none yet)."""
        total = self.answers.total + self.baseline.total
        return self.answers.total / total if total else None


def wanted(fleet: Fleet, serving: Generation | None) -> bool:
    """Whether a reload starting now starts as a canary."""
    return (
        fleet.settings.canary > 0
        and not fleet.settings.development
        and serving is not None
        and bool(fleet.workers_in(serving, WorkerState.READY))
    )


def start(fleet: Fleet, generation: Generation, serving: Generation) -> Canary:
    """Start ``generation``'s first workers, as a canary beside ``serving``."""
    workers = min(fleet.settings.canary, fleet.size)
    for worker_id in range(workers):
        fleet.spawn(generation, worker_id)
    fleet.log(
        logging.INFO,
        f"starting generation {generation.number} as a canary: {workers} of {fleet.size} "
        f"workers, beside generation {serving.number}, judged for "
        f"{fleet.settings.canary_seconds:g}s once ready",
        narrative=True,
    )
    return Canary(generation.number, serving.number, workers)


def start_clock(fleet: Fleet, canary: Canary) -> bool:
    """Once every canary worker is ready, its time to be judged starts. True if it
    started now."""
    generation = fleet.generations.get(canary.generation)
    if canary.judged_from is not None or generation is None:
        return False
    if len(fleet.workers_in(generation, WorkerState.READY)) < canary.workers:
        return False
    canary.judged_from = fleet.now
    seconds = fleet.settings.canary_seconds
    fleet.out.append(StartTimer(seconds, CanaryOver(canary.generation)))
    fleet.log(
        logging.INFO,
        f"canary: generation {canary.generation}'s {canary.workers} worker(s) serve beside "
        f"generation {canary.beside}'s {fleet.size}, a mixed fleet, for {seconds:g}s",
        narrative=True,
    )
    return True


def count(fleet: Fleet, canary: Canary, answers: Answers, baseline: Answers) -> str | None:
    """Take the canary's ``answers`` (and the serving generation's ``baseline``
    over the same time); the cause if that fails it."""
    canary.answers, canary.baseline = answers, baseline
    if canary.judged_from is None:
        return None
    return verdict.judge(answers, baseline, fleet.settings, old=canary.beside, when="meanwhile")


def passed(fleet: Fleet, canary: Canary) -> str:
    """The canary's time is over without a verdict: what it passed with, in words."""
    answers = canary.answers
    line = (
        f"canary passed: {answers.total:,} answers in {fleet.settings.canary_seconds:g}s, "
        f"{answers.error_rate:.1%} 5xx (generation {canary.beside}: "
        f"{canary.baseline.error_rate:.1%})"
    )
    share = canary.share
    if share is not None:
        line += f", {share:.1%} of the traffic"
    unjudged = verdict.unjudged(answers, fleet.settings)
    return f"{line}; {unjudged}" if unjudged else line


def proceed(fleet: Fleet, generation: Generation) -> None:
    """The canary passed: the reload goes on as configured (rolling, or the other
    workers start at once)."""
    generation.rolling = rollout.may_roll(fleet)
    if generation.rolling:
        return  # the rollout's rule takes it on from the canary's workers
    for worker_id in fleet.free_ids(generation, fleet.size - len(fleet.members(generation))):
        fleet.spawn(generation, worker_id)


def describe(canary: Canary, seconds: float, now: float) -> str:
    """What the status line says of ``canary``."""
    if canary.judged_from is None:
        return f"; generation {canary.generation} canary starting ({canary.workers} workers)"
    left = max(0.0, canary.judged_from + seconds - now)
    line = (
        f"; mixed fleet: generation {canary.generation} canary, {canary.workers} workers, "
        f"{left:.0f}s left, {canary.answers.total:,} answers, "
        f"{canary.answers.error_rate:.1%} 5xx"
    )
    share = canary.share
    return line + (f", {share:.1%} of the traffic" if share is not None else "")
