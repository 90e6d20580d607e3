"""What each generation is started with, read again at each reload.

A command (``graceful serve``, ``graceful run``) starts the supervisor with its
configuration as read then, and with a way to read it again (a :data:`Reread`): the
configuration file and the env file, with the command line and the environment the
supervisor started with (:mod:`graceful.api.configuration`), a relative path from the
working directory of the release the service points to then (a deploy that switches
the release link reloads with the new release's files). The first generation is
started as configured at the start. Each later generation, the first time one of
its workers is started, reads the configuration again, once, in a thread (a file on
a stalled disk must not stall the loop; the reading is given up after
:data:`READ_TIMEOUT` seconds), and is started as it says: its settings of scope
``generation`` (the server's options, the TLS files, the workers' environment, the
env file) apply to it. A worker of an older generation, started again after a
crash, is started as its generation was.

A reading that fails (a file that does not parse, a bad value, an env file that is
gone) fails that generation's start, and so the reload, with one line; the old
generation keeps serving. A changed setting of scope ``supervisor`` (the listeners,
the PID file, the worker count, ...) is not applied: it is logged, once per reload,
as needing ``graceful upgrade``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import anyio
import anyio.to_thread

from graceful.base.errors import ConfigError, GracefulError, one_line
from graceful.base.log import logger
from graceful.core.configured import Configured, Reread
from graceful.core.settings import SETTINGS
from graceful.spawn.spawner import WorkerSetup
from graceful.wire.bootstrap import WorkerOptions

#: Seconds a reload waits for the configuration to be read again.
READ_TIMEOUT = 10.0


_SCOPE = {declared.name: declared.scope for declared in SETTINGS}


class Configurations:
    """Each generation's :class:`WorkerSetup`, read again for each new generation
    (see the module docstring)."""

    def __init__(
        self,
        first: Configured,
        reread: Reread | None,
        options: Callable[[Configured], WorkerOptions],
        where: Callable[[], str] = os.getcwd,
    ) -> None:
        self._first = first
        self._reread = reread
        self._options = options
        #: the working directory a generation started now starts in
        self._where = where
        #: by generation: its setup and what it was configured with, or why not
        self._setups: dict[int, tuple[WorkerSetup, Configured] | ConfigError] = {}
        self._reading: dict[int, anyio.Event] = {}
        #: the first generation was configured (with ``first``)
        self._started = False

    async def setup_for(self, generation: int) -> WorkerSetup:
        """How generation ``generation``'s workers are started.

        Raises:
            ConfigError: if its configuration could not be read (for every worker
                of that generation).
        """
        while generation in self._reading:
            await self._reading[generation].wait()
        known = self._setups.get(generation)
        if known is None:
            self._reading[generation] = done = anyio.Event()
            try:
                known = self._setups[generation] = await self._read(generation)
            finally:
                del self._reading[generation]
                done.set()
        if isinstance(known, ConfigError):
            raise known
        return known[0]

    async def _read(self, generation: int) -> tuple[WorkerSetup, Configured] | ConfigError:
        if not self._started or self._reread is None:
            self._started = True
            configured = self._first
        else:
            try:
                cwd = self._where()
                configured = await anyio.to_thread.run_sync(
                    _in_thread, self._reread, cwd, abandon_on_cancel=True
                )
            except TimeoutError:
                return ConfigError(
                    f"the configuration cannot be applied: reading it took more than "
                    f"{READ_TIMEOUT:g}s"
                )
            except GracefulError as exc:  # a bad value, or a broken release to read it from
                return ConfigError(f"the configuration cannot be applied: {exc}")
            except Exception as exc:  # a bug in reading it: still one reload failed
                logger.exception("reading the configuration again failed")
                return ConfigError(f"the configuration cannot be applied: {one_line(exc)}")
            self._needs_upgrade(generation, configured)
        setup = WorkerSetup(self._options(configured), dict(configured.environment))
        return setup, configured

    def _needs_upgrade(self, generation: int, configured: Configured) -> None:
        """Log each setting of scope ``supervisor`` that the configuration changed."""
        before, now = self._first.given, configured.given
        for name in sorted(before.keys() | now.keys()):
            if _SCOPE.get(name) == "generation":
                continue
            if before.get(name) != now.get(name):
                logger.warning(
                    "generation %d: %s changed in the configuration (%s, was %s): it needs "
                    "graceful upgrade to apply",
                    generation,
                    name,
                    _shown(now.get(name, "its default")),
                    _shown(before.get(name, "its default")),
                )

    def ended(self, generation: int) -> None:
        """Generation ``generation`` will start no more workers."""
        self._setups.pop(generation, None)

    def describe(self, generation: int) -> dict[str, object] | None:
        """The settings of scope ``generation`` that generation ``generation`` was
        started with, by name (the workers' environment by its variables' names
        alone: their values may be secrets), for ``graceful status``; None if it
        was not configured here."""
        known = self._setups.get(generation)
        if known is None or isinstance(known, ConfigError):
            return None
        given = known[1].given
        shown: dict[str, object] = {
            name: value
            for name, value in given.items()
            if _SCOPE.get(name) == "generation" and name != "env"
        }
        variables = sorted(known[1].environment)
        if variables:
            shown["environment"] = variables
        return shown


def _in_thread(reread: Reread, cwd: str) -> Configured:
    """``reread(cwd)``, given up after :data:`READ_TIMEOUT` seconds (TimeoutError).

    It runs in a daemon thread of its own: a reading stuck for good (a disk that
    never answers) is left behind, and must not keep the supervisor from exiting,
    as a stuck worker thread of anyio's would (the interpreter joins those at exit).
    """
    # signals are the main thread's (see BytecodeGate); the reader inherits the mask
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    outcome: list[Configured | BaseException] = []

    def read() -> None:
        try:
            outcome.append(reread(cwd))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, name="graceful configuration reader", daemon=True)
    reader.start()
    reader.join(READ_TIMEOUT)
    if not outcome:
        raise TimeoutError
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _shown(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
