"""What a generation answered: its answers counted by outcome, and their durations.

Workers count each answer in their vitals page (:mod:`graceful.wire.vitals`); the
supervisor adds up a generation's workers, the live and the exited ones
(:mod:`graceful.supervisor.answers`), into one :class:`Answers`, which the state
machine judges (:mod:`graceful.core.verdict`) and ``status`` and the metrics show.

An answer's *outcome* is one of :data:`OUTCOMES`: the class of the HTTP status it
sent, or ``failed`` when the request ended without a response (the app raised, or
its handler was cancelled) or the app counted a failure itself
(:meth:`graceful.Context.count_answer`). *Server errors* are ``5xx`` and ``failed``.
Durations are counted in the buckets of :data:`BUCKETS` (Prometheus's default
buckets), from which :meth:`Answers.quantile` estimates the p99.

Pure values: no I/O.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

#: What an answer can be, in the order a vitals page holds them.
OUTCOMES = ("2xx", "3xx", "4xx", "5xx", "failed")
#: The outcomes that are the server's fault.
SERVER_ERRORS = ("5xx", "failed")
#: The indices in :data:`OUTCOMES` of an answer that went well (a plain ``ok``), of
#: one that failed, and of the server errors.
OK, FAILED = OUTCOMES.index("2xx"), OUTCOMES.index("failed")
_SERVER_ERRORS = tuple(OUTCOMES.index(outcome) for outcome in SERVER_ERRORS)
#: The upper bounds, in seconds, of the duration buckets (the last bucket, above
#: them all, is unbounded).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


#: the outcome of each status from 0 to 599 (counted per request: a lookup)
_CLASSES = bytes(0 if s < 300 else 1 if s < 400 else 2 if s < 500 else 3 for s in range(600))


def outcome_of(status: int | None) -> int:
    """The index in :data:`OUTCOMES` of an answer with HTTP ``status``: None (no
    response was sent) and nonsense outside 0..599 are ``failed``, anything below
    300 is ``2xx``."""
    if status is None or not 0 <= status < 600:
        return FAILED
    return _CLASSES[status]


def bucket_of(seconds: float) -> int:
    """The index of the duration bucket that holds ``seconds`` (each bucket holds
    what is at most its bound)."""
    return bisect.bisect_left(BUCKETS, seconds)


@dataclass(frozen=True)
class Answers:
    """Answers counted: ``counts`` by outcome (as :data:`OUTCOMES`), ``buckets`` by
    duration (as :data:`BUCKETS`, then the unbounded one), and the total of their
    durations in seconds."""

    counts: tuple[int, ...] = (0,) * len(OUTCOMES)
    buckets: tuple[int, ...] = (0,) * (len(BUCKETS) + 1)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def server_errors(self) -> int:
        return sum(self.counts[index] for index in _SERVER_ERRORS)

    @property
    def error_rate(self) -> float:
        """The share of server errors among the answers (0 with none)."""
        total = self.total
        return self.server_errors / total if total else 0.0

    def by_outcome(self) -> dict[str, int]:
        return dict(zip(OUTCOMES, self.counts, strict=True))

    def __add__(self, other: Answers) -> Answers:
        return Answers(
            tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)),
            self.seconds + other.seconds,
        )

    def __sub__(self, other: Answers) -> Answers:
        """What was answered since ``other`` (an earlier count of the same workers);
        never below 0."""
        return Answers(
            tuple(max(0, a - b) for a, b in zip(self.counts, other.counts, strict=True)),
            tuple(max(0, a - b) for a, b in zip(self.buckets, other.buckets, strict=True)),
            max(0.0, self.seconds - other.seconds),
        )

    def quantile(self, q: float) -> float | None:
        """An estimate of the ``q`` quantile of the durations (0.99: the p99), in
        seconds, interpolated within its bucket; None without answers. Above the last
        bound it is that bound (10 s): "at least"."""
        counted = sum(self.buckets)
        if not counted:
            return None
        rank = q * counted
        seen = 0
        lower = 0.0
        for index, count in enumerate(self.buckets):
            if index == len(BUCKETS):
                return BUCKETS[-1]
            upper = BUCKETS[index]
            if count and seen + count >= rank:
                return lower + (upper - lower) * (rank - seen) / count
            seen += count
            lower = upper
        return BUCKETS[-1]  # pragma: no cover - the loop returns


NO_ANSWERS = Answers()


def lower_bound(errors: int, total: int, z: float = 2.576) -> float:
    """The lower end of the Wilson score interval of a rate of ``errors`` in
    ``total`` (by default at 99% confidence, two-sided): the rate is above it with
    little doubt, however few the answers. 0 without answers."""
    if total <= 0:
        return 0.0
    rate = errors / total
    spread = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total))
    return max(0.0, (rate + z * z / (2 * total) - spread) / (1 + z * z / total))
