"""Who waits for what: the requests through the control socket (``reload --wait``,
``rollback``, ``scale``), each answered when the state machine says how what it
asked for ended."""

from __future__ import annotations

from graceful.control.server import ReloadWaiter
from graceful.core.machine import (
    STOPPING,
    ProbationEnded,
    ReloadOutcome,
    RollbackEnded,
    ScaleEnded,
)

#: who asks, in a :class:`~graceful.core.machine.ScaleRequested` from the control
#: socket
SCALE_REQUEST = "graceful scale"


class Waiters:
    """The open requests, by what answers them."""

    def __init__(self) -> None:
        #: ``reload --wait`` requests not yet bound to the generation that answers them
        self._reloads: list[ReloadWaiter] = []
        #: generation number -> the requests its reload's end answers
        self._reload_of: dict[int, list[ReloadWaiter]] = {}
        #: generation number -> the requests its probation's end answers
        self._probation_of: dict[int, list[ReloadWaiter]] = {}
        #: ``graceful rollback`` requests, answered when the rollback ends
        self._rollbacks: list[ReloadWaiter] = []
        #: ``graceful scale`` requests, answered once decided, in their order
        self._scales: list[ReloadWaiter] = []

    def reload(self, through_probation: bool) -> ReloadWaiter:
        """A reload request, answered by the next generation started."""
        waiter = ReloadWaiter(through_probation=through_probation)
        self._reloads.append(waiter)
        return waiter

    def rollback(self) -> ReloadWaiter:
        waiter = ReloadWaiter()
        self._rollbacks.append(waiter)
        return waiter

    def scale(self) -> ReloadWaiter:
        waiter = ReloadWaiter()
        self._scales.append(waiter)
        return waiter

    def stopping(self) -> None:
        """The service stops: the reloads asked for before it will never start."""
        for waiter in self._reloads:
            waiter.resolve(STOPPING)
        self._reloads.clear()

    def generation_started(self, number: int) -> None:
        """A reload started generation ``number``: it answers every request so far."""
        self._reload_of.setdefault(number, []).extend(self._reloads)
        self._reloads.clear()

    def reload_ended(self, outcome: ReloadOutcome, on_probation: bool) -> None:
        """``outcome``'s generation is serving (now ``on_probation``) or failed."""
        for waiter in self._reload_of.pop(outcome.generation, []):
            if waiter.through_probation and on_probation:
                waiter.promoted = outcome
                self._probation_of.setdefault(outcome.generation, []).append(waiter)
            else:
                waiter.resolve(outcome)

    def probation_ended(self, ended: ProbationEnded) -> None:
        for waiter in self._probation_of.pop(ended.generation, []):
            waiter.resolve_probation(ended.outcome, ended.detail)

    def rollback_ended(self, ended: RollbackEnded) -> None:
        for waiter in self._rollbacks:
            waiter.resolve(ended)
        self._rollbacks.clear()

    def scale_ended(self, ended: ScaleEnded) -> None:
        if ended.by == SCALE_REQUEST and self._scales:
            self._scales.pop(0).resolve(ended)
