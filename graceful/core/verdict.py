"""The verdict on a new generation's answers: whether it is worse enough than the old
one to be rolled back (on probation), or for its reload to fail (a canary, or a
generation still starting).

Judged are: the generation on probation, beside what the old one answered before
the reload; a canary, once all its workers are ready; and a generation that answers
while it starts (its first workers accept before the others are ready). Each of the
last two is judged beside what the serving generation answers meanwhile, and a
verdict fails its reload before the old generation ever stops serving.

The supervisor's loop adds up each judged generation's answers
(:class:`~graceful.core.answers.Answers`) and sends them as
:class:`~graceful.core.events.AnswersCounted`, with the old generation's to compare
with; :func:`judge` decides. The rules (docs/guides/verdicts.md tells the why):

* **Nothing is judged before ``rollback_min_requests`` answers.**
* **The error rate** (5xx and no answer, among all answers) fails the generation
  once it is above ``rollback_on_error_rate`` *with 99% confidence* (the lower end
  of its Wilson score interval is above the limit), and above the old generation's
  own rate. A handful of unlucky errors on few answers never fails a good deploy,
  and a deploy during an outage that fails the old code as much is not blamed.
* **The p99** (estimated from the duration buckets) fails it once it is above
  ``rollback_on_p99`` seconds.

Pure: no I/O.
"""

from __future__ import annotations

from graceful.core.answers import Answers, lower_bound
from graceful.core.fleet import Settings


def judged(settings: Settings) -> bool:
    """Whether answers are judged at all."""
    return settings.rollback_on_error_rate > 0 or settings.rollback_on_p99 > 0


def judge(
    answers: Answers, baseline: Answers, settings: Settings, *, old: int, when: str
) -> str | None:
    """Why a generation that gave ``answers`` fails, beside ``baseline`` (what
    generation ``old`` answered ``when``: "before the reload", "meanwhile"), in
    the words the log, ``status`` and ``reload --wait`` say; None if it does not
    (yet)."""
    total = answers.total
    if total < settings.rollback_min_requests or not judged(settings):
        return None
    limit = settings.rollback_on_error_rate
    if limit > 0:
        errors = answers.server_errors
        bound = lower_bound(errors, total)
        before = baseline.error_rate
        if bound > limit and bound > before:
            return (
                f"5xx rate {answers.error_rate:.1%} ({errors:,} of {total:,} answers; "
                f"limit {percent(limit)}); generation {old} served {before:.1%} {when}"
            )
    slowest = settings.rollback_on_p99
    p99 = answers.quantile(0.99)
    if slowest > 0 and p99 is not None and p99 > slowest:
        before_p99 = baseline.quantile(0.99)
        then = f"{before_p99:.3f}s" if before_p99 is not None else "nothing"
        return (
            f"p99 {p99:.3f}s over {total:,} answers (limit {slowest:g}s); "
            f"generation {old}'s p99 was {then} {when}"
        )
    return None


def percent(share: float) -> str:
    """``0.05`` as ``5%``."""
    return f"{share * 100:g}%"


def unjudged(answers: Answers, settings: Settings) -> str | None:
    """Why ``answers`` were too few to judge, if they were some (and judging is on;
    none at all is no traffic, or a server that does not count)."""
    if not judged(settings) or not 0 < answers.total < settings.rollback_min_requests:
        return None
    return (
        f"not judged: {answers.total:,} answers, fewer than "
        f"rollback_min_requests={settings.rollback_min_requests}"
    )
