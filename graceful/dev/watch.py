"""Development mode: a save reloads the service (``--watch``), one status line per reload.

:class:`Watch` (the ``watch`` setting's value, :mod:`graceful.core.settings`) says
what to watch. :class:`SourceWatcher` runs in the supervisor:
it follows the files with ``watchfiles`` (the library uvicorn uses), in a thread of
its own that blocks every signal (the supervisor's signals are its main thread's),
and turns each batch of changes into a reload. A burst of saves is one batch, and
reloads asked for while one starts are coalesced by the state machine as usual,
so the newest code on disk wins.

A broken save is an ordinary failed reload: the previous generation keeps
serving, and the next good save recovers. The terminal's account of each reload
is :mod:`graceful.dev.terminal`.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from graceful._version import pip_install
from graceful.base.errors import ConfigError, one_line
from graceful.base.log import logger
from graceful.core.settings import Watch

#: Milliseconds without a new change before a batch of changes is reported.
_QUIET_MS = 50

#: Seconds between looks for a watched directory that has gone.
_ROOT_POLL = 0.5

#: Milliseconds between two looks at the tree when inotify cannot watch it.
_POLL_MS = 500


def need_watchfiles(watch: Watch | None) -> None:
    """Refuse ``watch`` (development mode on) without ``watchfiles`` installed.

    Raises:
        ConfigError: saying what to install.
    """
    if watch is not None and importlib.util.find_spec("watchfiles") is None:
        raise ConfigError(f"watch needs watchfiles: {pip_install('watch')}")


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
        #: inotify could not watch the tree (its limits): the watcher polls instead
        self._polling = False

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
                force_polling=self._polling,
                poll_delay_ms=_POLL_MS,
            ):
                if changes and not _report(changed, sorted({path for _, path in changes})):
                    return False
                if self._lost.is_set() or not all(os.path.isdir(root) for root in self.roots):
                    return True
        except Exception as exc:
            if not all(os.path.isdir(root) for root in self.roots):
                return True  # a root went away as the watcher was set up
            return self._cannot_watch(exc)
        return False

    def _cannot_watch(self, exc: Exception) -> bool:
        """The watcher could not be set up, although every root is there (inotify's
        limits, most often): say so once, and poll instead (True: set it up again);
        if polling fails too, stop watching (False), the service serving on."""
        if not self._polling:
            self._polling = True
            logger.warning(
                "cannot watch %s with inotify: %s. Raise the limits (sysctl "
                "fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=1024); "
                "watching by polling every %gs until the next start",
                ", ".join(self.roots),
                one_line(exc),
                _POLL_MS / 1000,
            )
            return True
        logger.error(
            "cannot watch %s by polling either: %s; not watching (SIGHUP reloads)",
            ", ".join(self.roots),
            one_line(exc),
        )
        return False


def _report(changed: Callable[[list[str]], None], paths: list[str]) -> bool:
    """Hand ``paths`` to ``changed`` in the event loop; False once the loop is gone."""
    try:
        anyio.from_thread.run_sync(changed, paths)
    except RuntimeError:
        return False
    return True
