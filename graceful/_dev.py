"""Development mode: a save reloads the service (``--watch``), one status line per reload.

:class:`Watch` says what to watch. :class:`SourceWatcher` runs in the supervisor:
it follows the files with ``watchfiles`` (the library uvicorn uses), in a thread of
its own that blocks every signal (the supervisor's signals are its main thread's),
and turns each batch of changes into a reload. A burst of saves is one batch, and
reloads asked for while one starts are coalesced by the state machine as usual,
so the newest code on disk wins.

A broken save is an ordinary failed reload: the previous generation keeps
serving, and the next good save recovers. :class:`DevTerminal` replaces the
supervisor's own account of each reload (its start, its promotion or failure)
with one status line per reload, green or red on a terminal: the generation, the
time it took, the outcome, and for a failure the cause as one line, with the file
and line it was raised at.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.from_thread
import anyio.to_thread

from ._decisions import STOPPING, SUPERSEDED, ReloadOutcome
from ._errors import ConfigError, shown_path
from ._logging import logger

#: A reload's narrative log records carry this attribute (see ``Log.narrative``).
NARRATIVE = "graceful_reload_narrative"

#: Milliseconds without a new change before a batch of changes is reported.
_QUIET_MS = 50

#: Seconds between looks for a watched directory that has gone.
_ROOT_POLL = 0.5


@dataclass(frozen=True)
class Watch:
    """What ``watch=`` follows.

    Args:
        paths: directories to watch, recursively, or files (each reloads whatever its
            name); empty for the default: the directory of the main script or of the
            app's module (and ``--app-dir``).
        include: glob patterns a changed file's name must match (``*.py``).
        exclude: glob patterns of names (files or directories) to leave out, on
            top of what is always left out (``__pycache__``, ``.git``, editors'
            swap files, ...).
    """

    paths: tuple[str, ...] = ()
    include: tuple[str, ...] = ("*.py",)
    exclude: tuple[str, ...] = ()


def as_watch(value: object) -> Watch | None:
    """``watch=`` as given: False/None (off), True (the defaults), a :class:`Watch`,
    or a list of directories.

    Raises:
        ConfigError: for anything else, or if ``watchfiles`` is not installed.
    """
    if value is None or value is False:
        return None
    if value is True:
        watch = Watch()
    elif isinstance(value, Watch):
        watch = value
    elif isinstance(value, list | tuple) and all(isinstance(p, str | Path) for p in value):
        watch = Watch(paths=tuple(str(p) for p in value))
    else:
        raise ConfigError(
            f"watch={value!r} must be True, a list of directories, or a graceful.Watch"
        )
    for pattern in (*watch.include, *watch.exclude):
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"watch pattern {pattern!r} must be a non-empty glob, as '*.py'")
    if importlib.util.find_spec("watchfiles") is None:
        raise ConfigError("watch needs watchfiles: pip install 'graceful[watch]'")
    return watch


def with_paths(watch: Watch, defaults: Sequence[str]) -> Watch:
    """``watch`` with its paths resolved: its own, or ``defaults``; each must exist.

    Raises:
        ConfigError: naming a path that does not exist.
    """
    paths = watch.paths or tuple(dict.fromkeys(os.path.abspath(p) for p in defaults))
    for path in paths:
        if not os.path.exists(path):
            raise ConfigError(f"cannot watch {path!r}: no such file or directory")
    return Watch(tuple(paths), watch.include, watch.exclude)


class SourceWatcher:
    """Follows :class:`Watch`'s files and reports each batch of changes.

    A file named in ``paths`` is followed through its directory (an editor saves by
    renaming a new file into place), and reloads whatever its name. A watched
    directory that disappears is reported, and followed again once it is back.
    """

    def __init__(self, watch: Watch) -> None:
        import watchfiles  # noqa: PLC0415 - only needed in development

        self.watch = watch
        #: what is always left out: caches, version control, editors' temporary files
        self._ignored = watchfiles.DefaultFilter()
        paths = [os.path.abspath(path) for path in watch.paths]
        self._files = {path for path in paths if os.path.isfile(path)}
        self._dirs = [path for path in paths if path not in self._files]
        #: what is handed to the watcher: the directories, and the files' directories
        self.roots = sorted({*self._dirs, *(os.path.dirname(path) for path in self._files)})
        #: only files were named: their directories are not followed below
        self._recursive = bool(self._dirs)
        #: a root was deleted: the watcher must be set up again
        self._lost = threading.Event()

    def wanted(self, change: Any, path: str) -> bool:
        """True if a change to ``path`` should reload (``watchfiles``' filter)."""
        if path in self.roots:
            if not os.path.isdir(path):
                self._lost.set()
            return False
        if path in self._files:
            return True
        if not any(path.startswith(directory + os.sep) for directory in self._dirs):
            return False
        if not self._ignored(change, path):
            return False
        parts = Path(path).parts
        if any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in self.watch.exclude):
            return False
        return any(fnmatch.fnmatch(parts[-1], pattern) for pattern in self.watch.include)

    async def run(self, changed: Callable[[list[str]], None]) -> None:
        """Call ``changed`` with the paths of each batch of changes until cancelled."""
        stop = threading.Event()
        try:
            await anyio.to_thread.run_sync(self._follow, changed, stop, abandon_on_cancel=True)
        finally:
            stop.set()

    def _follow(self, changed: Callable[[list[str]], None], stop: threading.Event) -> None:
        # This thread lives as long as the supervisor: it, and the watcher's own
        # thread started from it, must never take a signal (see BytecodeGate).
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        missing: list[str] = []
        while not stop.is_set():
            now_missing = [root for root in self.roots if not os.path.isdir(root)]
            if now_missing:
                if now_missing != missing:
                    logger.warning(
                        "cannot watch %s: no such directory; watching again once it exists",
                        ", ".join(now_missing),
                    )
                missing = now_missing
                stop.wait(_ROOT_POLL)
                continue
            if missing:
                logger.warning("watching %s again", ", ".join(missing))
                # what was written there meanwhile was not seen: reload it all
                if not _report(changed, missing):
                    return
                missing = []
            if not self._follow_until_lost(changed, stop):
                return

    def _follow_until_lost(
        self, changed: Callable[[list[str]], None], stop: threading.Event
    ) -> bool:
        """Report changes until a root is lost (True) or the end (False)."""
        import watchfiles  # noqa: PLC0415

        self._lost.clear()
        try:
            for changes in watchfiles.watch(
                *self.roots,
                watch_filter=self.wanted,
                step=_QUIET_MS,
                stop_event=stop,
                rust_timeout=int(_ROOT_POLL * 1000),
                yield_on_timeout=True,
                raise_interrupt=False,
                recursive=self._recursive,
            ):
                if changes and not _report(changed, sorted({path for _, path in changes})):
                    return False
                if self._lost.is_set() or not all(os.path.isdir(root) for root in self.roots):
                    return True
        except OSError:
            return True  # a root went away as the watcher was set up
        return False


def _report(changed: Callable[[list[str]], None], paths: list[str]) -> bool:
    """Hand ``paths`` to ``changed`` in the event loop; False once the loop is gone."""
    try:
        anyio.from_thread.run_sync(changed, paths)
    except RuntimeError:
        return False
    return True


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
        names = ", ".join(shown_path(path) for path in self._pending)
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
