"""Development mode's terminal: one status line per reload.

:class:`DevTerminal` replaces the supervisor's own account of each reload (its
start, its promotion or failure) with one status line per reload, green or red on
a terminal: the generation, the time it took, the outcome, and for a failure the
cause as one line, with the file and line it was raised at. (What is watched, and
the watching, are :mod:`graceful.dev.watch`.)
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

from graceful.base.errors import name_some, shown_path
from graceful.base.log import logger
from graceful.core.machine import STOPPING, SUPERSEDED, ReloadOutcome
from graceful.core.settings import Watch

#: A reload's narrative log records carry this attribute (see ``Log.narrative``).
NARRATIVE = "graceful_reload_narrative"


class DevTerminal:
    """One status line per reload on ``stream`` (see the module docstring)."""

    def __init__(self, stream: IO[str] | None = None, colour: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.colour = wants_colour(self.stream) if colour is None else colour
        #: files changed since the last generation started
        self._pending: list[str] = []
        #: generation number -> what made it start, for its status line
        self._why: dict[int, str] = {}

    def watching(self, watch: Watch) -> None:
        self._print(
            f"watching {', '.join(watch.paths)} ({', '.join(watch.include)}): "
            "a save reloads; a broken save leaves the running code serving",
            _DIM,
        )

    def changed(self, paths: list[str]) -> None:
        """A batch of changes asked for a reload."""
        self._pending = sorted({*self._pending, *paths})

    def started(self, number: int) -> None:
        """Generation ``number`` started: it runs the changes seen until now (none: a
        reload asked for otherwise, such as SIGHUP)."""
        names = name_some([shown_path(path) for path in self._pending], most=3)
        self._why[number] = names or "reload"
        self._pending = []

    def reload_ended(self, outcome: ReloadOutcome, serving: int | None) -> None:
        why = self._why.pop(outcome.generation, "reload")
        took = f"in {outcome.seconds:.3f}s ({why})"
        if outcome.outcome == "serving":
            self._print(f"✓ generation {outcome.generation} serving {took}", _GREEN)
        elif outcome.cause in (SUPERSEDED, STOPPING):
            # not a broken change: a newer one won, or the service stops
            self._print(f"· generation {outcome.generation} {outcome.cause} ({why})", _DIM)
        else:
            keeps = (
                f"; generation {serving} keeps serving"
                if serving is not None
                else "; nothing serves yet: waiting for a change"
            )
            self._print(
                f"✗ generation {outcome.generation} failed {took}: {outcome.cause}{keeps}", _RED
            )

    def rollback_ended(self, ok: bool, detail: str) -> None:
        """A rollback (a new generation crashed or broke during its probation)."""
        if detail == STOPPING:
            self._print(f"· rollback abandoned: {detail}", _DIM)
        else:
            self._print(f"✗ rolled back: {detail}" if ok else f"✗ {detail}", _RED)

    def _print(self, line: str, colour: str) -> None:
        text = f"{colour}{line}{_RESET}" if self.colour else line
        print(text, file=self.stream, flush=True)


def quiet_reload_narrative() -> None:
    """Leave out of graceful's log the records a :class:`DevTerminal` replaces."""
    logger.addFilter(_without_narrative)


def _without_narrative(record: logging.LogRecord) -> bool:
    return not getattr(record, NARRATIVE, False)


def wants_colour(stream: Any) -> bool:
    """Colour on a terminal, unless ``NO_COLOR`` is set; always with ``FORCE_COLOR``."""
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


_GREEN = "\x1b[32m"
_RED = "\x1b[1;31m"
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"
