"""Each generation's answers, added up by the supervisor, and sent to the state
machine while a generation is judged (docs/guides/verdicts.md).

Every worker counts its answers in its vitals page (:mod:`graceful.wire.vitals`).
A generation's answers are its live workers' pages plus what each of its exited
workers had written last (read from its page after its exit, before the page is
closed: :meth:`AnswerBook.last_words`), so no answer is lost to a worker's exit and
none is counted twice. The exited workers' sums are kept for every generation that
still runs, and for the newest :data:`KEPT` of those gone. The generation on
probation is judged beside what the parked one had answered when the probation
began (read once: the requests its drain cut off after that are not its record).

Every tick of the vitals monitor (:mod:`graceful.supervisor.vitals`),
:meth:`AnswerBook.tick` sends :class:`~graceful.core.events.AnswersCounted` for the
generation on probation (beside what the parked one answered before the reload), for
a canary (once all its workers are ready), and for a generation that answers as it
starts (its first workers accept before the others are ready), each of these two
beside what the serving generation answered since, when the count changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from graceful.core import events
from graceful.core.answers import NO_ANSWERS, OUTCOMES, Answers
from graceful.core.machine import SupervisorStateMachine
from graceful.spawn.spawner import WorkerProcess

#: How many generations' exited workers' answers are kept.
KEPT = 16


class AnswerBook:
    """The answers of every generation (see the module docstring). ``live`` gives
    the live workers' processes by serial, ``machine`` the state machine, ``send``
    takes the events."""

    def __init__(
        self,
        live: Callable[[], Mapping[int, WorkerProcess]],
        machine: Callable[[], SupervisorStateMachine],
        send: Callable[[events.Event], None],
    ) -> None:
        self._live = live
        self._machine = machine
        self._send = send
        #: by generation: what its exited workers had counted
        self._exited: dict[int, Answers] = {}
        #: the last counts sent, by generation judged
        self._sent: dict[int, tuple[Answers, Answers]] = {}
        #: by generation judged beside the serving one (a canary, or one starting):
        #: that generation, and its count when the judging began
        self._beside_from: dict[int, tuple[int, Answers]] = {}
        #: by generation on probation: what the parked one had answered by then
        self._before: dict[int, Answers] = {}

    def last_words(self, process: WorkerProcess) -> None:
        """Keep what ``process`` (exited, not yet reaped) counted."""
        page = process.vitals
        if page is None:
            return
        counted = page.answers()
        if not counted.total:
            return
        number = process.generation
        self._exited[number] = self._exited.get(number, NO_ANSWERS) + counted
        live = {process.generation for process in self._live().values()}
        gone = sorted(n for n in self._exited if n not in live)
        for old in gone[:-KEPT]:  # (never a generation that still runs)
            del self._exited[old]

    def of(self, generation: int) -> Answers:
        """Everything ``generation`` answered so far."""
        total = self._exited.get(generation, NO_ANSWERS)
        for process in self._live().values():
            if process.generation == generation and process.vitals is not None:
                total = total + process.vitals.answers()
        return total

    def tick(self) -> None:
        """Send the judged generations' counts, if they changed."""
        machine = self._machine()
        judged: dict[int, tuple[Answers, Answers]] = {}
        probation = machine.probation
        if probation is not None:
            # what the parked generation answered before the reload: read once (its
            # drained requests, cut at their deadline after it, are not its record)
            before = self._before.setdefault(probation.generation, self.of(probation.parked))
            judged[probation.generation] = (self.of(probation.generation), before)
        for number in [n for n in self._before if probation is None or n != probation.generation]:
            del self._before[number]
        # a canary (once it is judged), or a generation that answers as it starts:
        # beside what the serving generation answered since it was first seen so
        beside_of: dict[int, int] = {}
        canary = machine.canary
        if canary is not None and canary.judged_from is not None:
            beside_of[canary.generation] = canary.beside
        elif canary is None and machine.starting is not None and machine.serving is not None:
            beside_of[machine.starting] = machine.serving
        for number, beside in beside_of.items():
            known = self._beside_from.get(number)
            if known is None or known[0] != beside:  # (a rollback changed what serves)
                known = self._beside_from[number] = (beside, self.of(beside))
            judged[number] = (self.of(number), self.of(beside) - known[1])
        for number in [n for n in self._beside_from if n not in beside_of]:
            del self._beside_from[number]
        for number in [n for n in self._sent if n not in judged]:
            del self._sent[number]
        for number, (answers, baseline) in judged.items():
            if self._sent.get(number) != (answers, baseline):
                self._sent[number] = (answers, baseline)
                self._send(events.AnswersCounted(number, answers, baseline))

    def recent(self) -> dict[int, dict[str, Any]]:
        """What the newest :data:`KEPT` generations that answered anything answered,
        by number, as ``status`` shows it."""
        live = {process.generation for process in self._live().values()}
        gone = sorted(set(self._exited) - live)[-KEPT:]
        counted = {number: shown(self.of(number)) for number in sorted(live | set(gone))}
        return {number: answers for number, answers in counted.items() if answers is not None}


def shown(answers: Answers) -> dict[str, Any] | None:
    """``answers`` as ``status --json`` shows them (None: none)."""
    if not answers.total:
        return None
    p99 = answers.quantile(0.99)
    return {
        "total": answers.total,
        **dict(zip(OUTCOMES, answers.counts, strict=True)),
        "error_rate": round(answers.error_rate, 6),
        "p99": None if p99 is None else round(p99, 6),
        "seconds": round(answers.seconds, 6),
        "buckets": list(answers.buckets),
    }
