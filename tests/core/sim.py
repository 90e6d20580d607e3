"""A driver for the state machine in the decision tests: a hand-advanced clock, the
machine stamped with it (:class:`Sim`), and helpers that pick actions out of a step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from graceful.core.machine import (
    Action,
    DrainTimeout,
    Event,
    Exit,
    KillWorker,
    Log,
    ReadyTimeout,
    Settings,
    ShutdownWorker,
    SpawnWorker,
    Start,
    StartTimer,
    SupervisorStateMachine,
    WorkerReady,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

T = TypeVar("T")

SETTINGS = Settings(
    workers=2,
    ready_timeout=5.0,
    drain_timeout=3.0,
    kill_grace=1.0,
    backoff_initial=0.1,
    backoff_max=1.0,
    backoff_reset=10.0,
)

# --- a clock and a driver ---------------------------------------------------------


class Clock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sim:
    """A :class:`SupervisorStateMachine` and the clock its events are stamped with."""

    def __init__(self, settings: Settings = SETTINGS) -> None:
        self.settings = settings
        self.clock = Clock()
        self.machine = SupervisorStateMachine(settings)

    def send(self, event: Event) -> list[Action]:
        return self.machine.handle(event, self.clock.now)

    def send_all(self, events: Iterable[Event]) -> list[Action]:
        actions: list[Action] = []
        for event in events:
            actions += self.send(event)
        return actions


def first_generation_serving(sim: Sim, *, parkable: bool = True) -> list[int]:
    """Start generation 1 and make every worker ready (``parkable``, as
    ``ctx.serve()`` reports); return their serials."""
    serials = spawned(sim.send(Start()))
    sim.send_all(WorkerReady(serial, parkable=parkable) for serial in serials)
    assert sim.machine.serving == 1
    return serials


# --- helpers over actions ---------------------------------------------------------


def of_type(actions: Iterable[Action], kind: type[T]) -> list[T]:
    return [action for action in actions if isinstance(action, kind)]


def spawned(actions: Iterable[Action]) -> list[int]:
    return [action.serial for action in of_type(actions, SpawnWorker)]


def shut_down(actions: Iterable[Action]) -> set[int]:
    return {action.serial for action in of_type(actions, ShutdownWorker)}


def killed(actions: Iterable[Action]) -> set[int]:
    return {action.serial for action in of_type(actions, KillWorker)}


def exits(actions: Iterable[Action]) -> list[int]:
    return [action.code for action in of_type(actions, Exit)]


def timers(actions: Iterable[Action], kind: type[T]) -> list[tuple[float, T]]:
    """``(delay, event)`` of every StartTimer whose event is a ``kind``."""
    return [
        (action.delay, action.event)
        for action in of_type(actions, StartTimer)
        if isinstance(action.event, kind)
    ]


def messages(actions: Iterable[Action], level: int | None = None) -> list[str]:
    return [
        action.message for action in of_type(actions, Log) if level is None or action.level == level
    ]


def serials_touched(actions: Iterable[Action]) -> set[int]:
    """Every worker serial an action spawns, shuts down, kills or times."""
    touched: set[int] = set()
    for action in actions:
        if isinstance(action, SpawnWorker | ShutdownWorker | KillWorker):
            touched.add(action.serial)
        elif isinstance(action, StartTimer) and isinstance(
            action.event, ReadyTimeout | DrainTimeout
        ):
            touched.add(action.event.serial)
    return touched
