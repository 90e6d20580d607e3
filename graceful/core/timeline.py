"""A reload's timeline: when each of its phases happened, as the supervisor saw it.

Every time is the supervisor's own monotonic clock, read when it learned of the
phase: its own steps as it takes them, a worker's milestones as their
:class:`~graceful.wire.messages.Progress` messages arrive. No clocks are compared across
processes. A phase the reload did not go through (a warm standby was already up
and had imported graceful) is absent.

The phases, in order (:data:`PHASES`):

* ``asked``: the reload was asked for (a signal, a command, a save);
* ``spawn``: the first worker's start was asked of the factory (after the
  stale-bytecode check);
* ``started``: its process was started (``Process.start()`` returned), or a warm
  standby took the work;
* ``interpreter``, ``graceful``, ``code``, ``loop``: the worker's interpreter is up,
  it has imported graceful's worker code, then the user's code, and its event loop
  runs;
* ``ready``: its Ready arrived (the server accepts);
* ``serving``: the generation serves, and the one it replaces was told to stop;
* ``closed``: the last worker of the replaced generation closed its listeners
  (as :meth:`graceful.Context.serve` and the uvicorn server report).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The phases, in the order a reload goes through them (see the module docstring).
PHASES = (
    "asked",
    "spawn",
    "started",
    "interpreter",
    "graceful",
    "code",
    "loop",
    "ready",
    "serving",
    "closed",
)

#: Phases reported by the first worker to get there; ``closed`` is the last one.
_LAST_WINS = {"closed"}

#: How many generations' timelines are kept (the newest ones).
KEPT = 8


@dataclass
class ReloadTimeline:
    """The phases of the reload that started ``generation``, each at the first time
    it was reached (``closed``: the last), in seconds of the supervisor's clock."""

    generation: int
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, phase: str, at: float) -> None:
        """Record that ``phase`` was reached at ``at``."""
        if phase in _LAST_WINS or phase not in self.marks:
            self.marks[phase] = at

    def milliseconds(self) -> dict[str, float]:
        """Each phase reached, in milliseconds since the reload was asked for, in the
        order of :data:`PHASES`."""
        start = self.marks.get("asked")
        if start is None:
            return {}
        return {
            phase: round((self.marks[phase] - start) * 1000, 3)
            for phase in PHASES
            if phase in self.marks
        }


class Timelines:
    """The timelines of the newest generations, and the reload asked for but not
    started yet."""

    def __init__(self) -> None:
        self._by_generation: dict[int, ReloadTimeline] = {}
        self._asked_at: float | None = None

    def asked(self, at: float) -> None:
        """A reload was asked for at ``at``; the next generation to start is timed
        from the first such request."""
        if self._asked_at is None:
            self._asked_at = at

    def started(self, generation: int, at: float) -> None:
        """``generation`` started at ``at`` (timed from the pending request, if any)."""
        timeline = ReloadTimeline(generation)
        timeline.mark("asked", self._asked_at if self._asked_at is not None else at)
        self._asked_at = None
        self._by_generation[generation] = timeline
        for old in sorted(self._by_generation)[:-KEPT]:
            del self._by_generation[old]

    def mark(self, generation: int, phase: str, at: float) -> None:
        """``generation`` reached ``phase`` at ``at`` (ignored for a generation whose
        timeline is not kept)."""
        timeline = self._by_generation.get(generation)
        if timeline is not None:
            timeline.mark(phase, at)

    def get(self, generation: int) -> ReloadTimeline | None:
        return self._by_generation.get(generation)
