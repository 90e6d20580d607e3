"""The public decorator: ``@graceful.service(...)`` and the :class:`Service` it returns."""

from __future__ import annotations

import math
import os
import socket
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any, Generic, Literal, NoReturn, TypeVar, overload

import multiprocess

from graceful.base.errors import ConfigError
from graceful.base.log import ensure_visible, logger
from graceful.dev.watch import Watch, as_watch

Backend = Literal["asyncio", "trio"]
#: how a reload replaces a generation's workers (see ``_decisions.Strategy``)
StrategyName = Literal["all-at-once", "rolling"]
F = TypeVar("F", bound=Callable[..., Any])

_BACKENDS = ("asyncio", "trio")
_STRATEGIES = ("all-at-once", "rolling")


class Service(Generic[F]):
    """An entry function together with how to supervise it.

    Created by :func:`service`. Calling :meth:`run` in the script's
    ``if __name__ == "__main__":`` block turns the current process into the
    supervisor. The wrapped function stays callable as ``service.function``.
    """

    def __init__(
        self,
        function: F,
        *,
        listen: Sequence[str | socket.socket],
        workers: int,
        ready_timeout: float,
        drain_timeout: float,
        backend: Backend,
        probation: float = 30.0,
        strategy: StrategyName = "all-at-once",
        max_surge: int = 1,
        preload: bool = False,
        standby: bool = True,
        watch: bool | Watch | Sequence[str] = False,
        backend_options: dict[str, Any] | None = None,
        entry_options: dict[str, Any] | None = None,
    ) -> None:
        check_settings(
            listen=listen,
            workers=workers,
            ready_timeout=ready_timeout,
            drain_timeout=drain_timeout,
            backend=backend,
            probation=probation,
            strategy=strategy,
            max_surge=max_surge,
            preload=preload,
            standby=standby,
        )
        self.function = function
        self.listen = list(listen)
        self.workers = workers
        self.ready_timeout = float(ready_timeout)
        self.drain_timeout = float(drain_timeout)
        self.probation = float(probation)
        self.strategy: StrategyName = strategy
        self.max_surge = max_surge
        self.preload = preload
        #: keep a warm standby interpreter for the next worker start (:mod:`graceful.spawn.standby`)
        self.standby = standby
        #: what a save reloads (development mode); None: off
        self.watch: Watch | None = as_watch(watch)
        self.backend: Backend = backend
        #: ``anyio.run`` backend options for the workers (asyncio only)
        self.backend_options = dict(backend_options or {})
        #: keyword arguments every worker passes to ``function`` after the context
        self.entry_options = dict(entry_options or {})
        self.__doc__ = function.__doc__
        self.__module__ = function.__module__
        self.__qualname__ = function.__qualname__
        self.__name__ = function.__name__

    def __graceful_runnable__(self) -> tuple[F, Backend]:
        """What a worker runs: the function and its backend (read from fresh code)."""
        return self.function, self.backend

    def run(
        self,
        *,
        pid_file: str | os.PathLike[str] | None = None,
        health: str | None = None,
        stop_delay: float = 0.0,
        release_link: str | os.PathLike[str] | None = None,
    ) -> None:
        """Run the supervisor in this process until it is stopped.

        Binds the listeners, starts generation 1, and then serves reloads (SIGHUP)
        and a stop (SIGTERM / SIGINT) until every worker has exited. With
        ``pid_file``, the supervisor's PID is written there (atomically) once the
        first generation is ready, and the file is removed at exit; beside it, a
        control socket answers ``graceful reload --wait``, ``status`` and
        ``stop --wait`` (and :class:`graceful.Control`).

        ``health`` (a listen spec such as ``"127.0.0.1:9000"``) serves ``/ready``,
        ``/live`` and ``/metrics`` over HTTP. ``stop_delay`` keeps serving that many
        seconds after the first stop request, while ``/ready`` already answers 503,
        before the drain begins (for load balancers to notice first).

        ``release_link`` names the symbolic link a deploy switches between release
        directories (``/srv/app/current``), for a service started by physical paths
        alone; graceful finds it by itself among the paths the service was started
        through. Every worker is started from the release it names at that moment:
        its code, working directory, interpreter and packages (see
        docs/guides/releases.md).

        Returns after a clean stop. Raises ``SystemExit(2)`` for a configuration
        error (one line on stderr, nothing spawned) and ``SystemExit(1)`` if the
        first generation never became ready or a stop had to kill workers.

        Signals: from the call on, SIGHUP is ignored except while the supervisor
        listens for it (a reload with nothing to reload must not kill the process),
        and it stays ignored when this returns. SIGTERM and SIGINT are the
        supervisor's while it runs, ignored during its final clean-up, and restored
        to their previous handlers before this returns.
        """
        # Imported here, not at the top: every worker imports this module when it
        # re-runs the main script, and never needs the supervisor (its state machine
        # alone costs ~12 ms of import time, paid on every reload).
        from graceful.supervisor.run import run_supervisor  # noqa: PLC0415

        if getattr(multiprocess.current_process(), "_inheriting", False):
            raise ConfigError(
                f"{self.__qualname__}.run() was called while a worker imported the main "
                'script: put the call under `if __name__ == "__main__":`'
            )
        code = run_supervisor(
            self,
            caller=sys._getframe(1),
            pid_file=pid_file,
            health=health,
            stop_delay=stop_delay,
            release_link=release_link,
        )
        if code:
            raise SystemExit(code)

    def __repr__(self) -> str:
        return f"<graceful.Service {self.__module__}:{self.__qualname__} listen={self.listen!r}>"


def check_settings(
    *,
    listen: object,
    workers: object,
    ready_timeout: object,
    drain_timeout: object,
    backend: object,
    probation: object = 0.0,
    strategy: object = "all-at-once",
    max_surge: object = 1,
    preload: object = False,
    standby: object = True,
) -> None:
    """Refuse a setting of :func:`service` that can never work.

    Raises:
        ConfigError: naming the first such setting.
    """
    if listen is None:
        raise ConfigError("@graceful.service needs listen=[...], as in listen=[':8080']")
    if isinstance(listen, str | socket.socket):
        raise ConfigError(f"listen={listen!r} must be a list of specs, as in listen=[{listen!r}]")
    if not isinstance(listen, list | tuple) or not all(
        isinstance(spec, str | socket.socket) for spec in listen
    ):
        raise ConfigError(
            f"listen={_short(listen)} must be a list of listen specs (strings) or sockets, "
            "as in listen=[':8080']"
        )
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers={_short(workers)} must be a whole number of at least 1")
    for name, value in (("ready_timeout", ready_timeout), ("drain_timeout", drain_timeout)):
        if not _is_seconds(value):
            raise ConfigError(f"{name}={_short(value)} must be a finite number of seconds above 0")
    if backend not in _BACKENDS:
        raise ConfigError(f"backend={backend!r} must be one of {', '.join(_BACKENDS)}")
    if probation != 0 and not _is_seconds(probation):
        raise ConfigError(
            f"probation={_short(probation)} must be a finite number of seconds (0 for none)"
        )
    if strategy not in _STRATEGIES:
        raise ConfigError(f"strategy={_short(strategy)} must be 'all-at-once' or 'rolling'")
    if not isinstance(max_surge, int) or isinstance(max_surge, bool) or max_surge < 1:
        raise ConfigError(f"max_surge={_short(max_surge)} must be a whole number of at least 1")
    for name, value in (("preload", preload), ("standby", standby)):
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={_short(value)} must be True or False")


def check_supervision(*, health: object, stop_delay: object) -> None:
    """Refuse a supervision option that can never work.

    Raises:
        ConfigError: naming it.
    """
    if health is not None and not isinstance(health, str):
        raise ConfigError(f"health={_short(health)} must be a listen spec, as in '127.0.0.1:9000'")
    if stop_delay != 0 and not _is_seconds(stop_delay):
        raise ConfigError(f"stop_delay={_short(stop_delay)} must be a finite number of seconds")


def _is_seconds(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:  # an int too large for a float
        return False


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def refuse_in_script(error: ConfigError, frame: types.FrameType | None) -> NoReturn:
    """Raise ``error`` where a bad argument was given, unless that is the script being
    run (or its re-import in a worker): there, like every configuration error of
    the supervisor, it is one line on stderr (with the file and line) and exit
    status 2, not a traceback."""
    module = frame.f_globals.get("__name__") if frame is not None else None
    if frame is None or module not in ("__main__", "__mp_main__"):
        raise error
    ensure_visible("supervisor")
    logger.error("%s (%s, line %d)", error, frame.f_code.co_filename, frame.f_lineno)
    raise SystemExit(2)


@overload
def service(
    *,
    listen: Sequence[str | socket.socket],
    workers: int = 1,
    ready_timeout: float = 30.0,
    drain_timeout: float = 30.0,
    backend: Backend = "asyncio",
    probation: float = 30.0,
    strategy: StrategyName = "all-at-once",
    max_surge: int = 1,
    preload: bool = False,
    standby: bool = True,
    watch: bool | Watch | Sequence[str] = False,
) -> Callable[[F], Service[F]]: ...


@overload
def service(
    function: F,
    *,
    listen: Sequence[str | socket.socket],
    workers: int = 1,
    ready_timeout: float = 30.0,
    drain_timeout: float = 30.0,
    backend: Backend = "asyncio",
    probation: float = 30.0,
    strategy: StrategyName = "all-at-once",
    max_surge: int = 1,
    preload: bool = False,
    standby: bool = True,
    watch: bool | Watch | Sequence[str] = False,
) -> Service[F]: ...


def service(
    function: F | None = None,
    *,
    listen: Sequence[str | socket.socket] | None = None,
    workers: int = 1,
    ready_timeout: float = 30.0,
    drain_timeout: float = 30.0,
    backend: Backend = "asyncio",
    probation: float = 30.0,
    strategy: StrategyName = "all-at-once",
    max_surge: int = 1,
    preload: bool = False,
    standby: bool = True,
    watch: bool | Watch | Sequence[str] = False,
) -> Service[F] | Callable[[F], Service[F]]:
    """Declare a zero-downtime service.

    Decorate either ``async def main(ctx: graceful.Context)`` (run on ``backend``,
    asyncio or trio) or ``def main(ctx: graceful.SyncContext)``. Each worker process
    of each generation imports the code from disk and calls the function; it must
    call ``ctx.ready()`` (``ctx.serve()`` does) and return after shutdown is
    requested.

    Args:
        listen: listen specs (``":8080"``, ``"HOST:PORT"``, ``"[::1]:PORT"``,
            ``"unix:/path"``, ``"fd:N"``) or already-bound sockets. Bound once, by
            the supervisor.
        workers: processes per generation, all sharing the listeners.
        ready_timeout: seconds a new generation has to report ready.
        drain_timeout: seconds an old generation has to finish in-flight work.
        backend: ``"asyncio"`` or ``"trio"``; ignored for a plain function.
        probation: seconds the previous generation stays parked after a reload, to
            be resumed at once if the new one crashes, declares itself broken
            (:meth:`Context.declare_broken`) or is rolled back; 0 turns it off. See
            docs/guides/probation.md.
        strategy: how a reload replaces the workers: ``"all-at-once"``, or
            ``"rolling"``, ``max_surge`` at a time and never leaving a mixed fleet.
            See docs/guides/many-workers.md.
        max_surge: with ``"rolling"``, new workers started beyond ``workers``.
        preload: import the code once per generation, in a template process that
            forks the generation's workers. See docs/guides/many-workers.md.
        standby: keep a warm interpreter (never your code) for the next worker
            start. See docs/guides/reload-latency.md.
        watch: development mode: ``True`` reloads on each save of a ``*.py`` file
            under the main script's directory; a list of directories, or a
            :class:`graceful.Watch`, says what to watch. See
            docs/guides/development-mode.md.

    ``listen``, ``workers`` and the timeouts are fixed when the supervisor starts;
    a reload runs the new function with the backend the new code names.

    Arguments are checked here, where they are written. A value that can never work
    raises :class:`ConfigError`, naming it, so that an importer or a test sees the
    mistake at its line. In the script being run (``__main__``), the same mistake is
    one line on stderr and exit status 2, like every configuration error of the
    supervisor.

    Raises:
        ConfigError: for a value that can never work, naming it.
    """
    caller = sys._getframe(1)
    try:
        check_settings(
            listen=listen,
            workers=workers,
            ready_timeout=ready_timeout,
            drain_timeout=drain_timeout,
            backend=backend,
            probation=probation,
            strategy=strategy,
            max_surge=max_surge,
            preload=preload,
            standby=standby,
        )
        as_watch(watch)
    except ConfigError as exc:
        refuse_in_script(exc, caller)

    def decorate(fn: F) -> Service[F]:
        if not callable(fn):
            refuse_in_script(
                ConfigError(f"@graceful.service decorates a function, not {fn!r}"), caller
            )
        assert listen is not None  # checked above
        return Service(
            fn,
            listen=listen,
            workers=workers,
            ready_timeout=ready_timeout,
            drain_timeout=drain_timeout,
            backend=backend,
            probation=probation,
            strategy=strategy,
            max_surge=max_surge,
            preload=preload,
            standby=standby,
            watch=watch,
        )

    if function is not None:
        return decorate(function)
    return decorate
