"""The public decorator: ``@graceful.service(...)`` and the :class:`Service` it returns.

Its keyword arguments are the fields of
:class:`~graceful.core.settings.ServiceSettings`, where each is declared, checked and
described; :meth:`Service.run`'s are those of :class:`~graceful.core.settings.Supervision`.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, Protocol, TypeVar, overload

import multiprocess

from graceful.base.errors import ConfigError
from graceful.base.log import ensure_visible, logger
from graceful.core.settings import (
    Backend,
    Entry,
    ServiceSettings,
    Supervision,
    checked,
    overridden,
    taken_by,
)
from graceful.dev.watch import need_watchfiles

if TYPE_CHECKING:
    from graceful.core.configured import Reread

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")


class Service(Generic[F]):
    """An entry function together with how to supervise it.

    Created by :func:`service`. Calling :meth:`run` in the script's
    ``if __name__ == "__main__":`` block turns the current process into the
    supervisor. The wrapped function stays callable as ``service.function``.
    """

    def __init__(
        self,
        function: F,
        settings: ServiceSettings,
        *,
        backend_options: dict[str, Any] | None = None,
        entry_options: dict[str, Any] | None = None,
    ) -> None:
        self.function = function
        #: how to supervise it, checked
        self.settings = settings
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
        return self.function, self.settings.backend

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
        and a stop (SIGTERM / SIGINT) until every worker has exited. The keyword
        arguments are the settings of :class:`~graceful.core.settings.Supervision`
        (docs/reference/settings.md tells each): the PID file, beside which a
        control socket answers ``graceful reload --wait``, ``status`` and
        ``stop --wait`` (and :class:`graceful.Control`), the health endpoint, the
        delay before the drain, and the release link (docs/guides/releases.md).

        Returns after a clean stop. Raises ``SystemExit(2)`` for a configuration
        error (one line on stderr, nothing spawned) and ``SystemExit(1)`` if the
        first generation never became ready or a stop had to kill workers.

        Signals: once the arguments are checked, SIGHUP is ignored except while the
        supervisor listens for it (a reload with nothing to reload must not kill the
        process), and it stays ignored when this returns. SIGTERM and SIGINT are the
        supervisor's while it runs, ignored during its final clean-up, and restored
        to their previous handlers before this returns.
        """
        supervision = dict(locals())  # the arguments, by name: the signature is their one list
        del supervision["self"]
        code = supervise(self, supervision, "Service.run", caller=sys._getframe(1))
        if code:
            raise SystemExit(code)

    def __repr__(self) -> str:
        listen = list(self.settings.listen)
        return f"<graceful.Service {self.__module__}:{self.__qualname__} listen={listen!r}>"


def supervise(
    service: Service[Any],
    supervision: Mapping[str, object],
    entry: Entry,
    *,
    caller: types.FrameType | None,
    settings: ServiceSettings | None = None,
    environment: dict[str, str] | None = None,
    given: dict[str, object] | None = None,
    reread: Reread | None = None,
) -> int:
    """Supervise ``service`` in this process, with the settings of
    :class:`~graceful.core.settings.Supervision` in ``supervision`` (as ``entry`` took
    them) and ``settings`` in place of its own; the exit status, 2 for a setting
    that can never work (logged in one line). The workers get ``environment`` on top
    of the supervisor's; ``reread`` reads the configuration again at each reload
    (:mod:`graceful.supervisor.reconfigure`; ``given``: every setting given).

    Raises:
        ConfigError: if called in a worker that imported the main script.
    """
    # Imported here, not at the top: every worker imports this module when it
    # re-runs the main script, and never needs the supervisor (its state machine
    # alone costs ~12 ms of import time, paid on every reload).
    from graceful.supervisor.run import run_supervisor  # noqa: PLC0415

    if getattr(multiprocess.current_process(), "_inheriting", False):
        raise ConfigError(
            f"{service.__qualname__}.run() was called while a worker imported the main "
            'script: put the call under `if __name__ == "__main__":`'
        )
    try:
        checked_supervision = checked(Supervision, supervision, entry)
    except ConfigError as exc:
        ensure_visible("supervisor")
        logger.error("%s", exc)
        return 2
    return run_supervisor(
        service.function,
        settings or service.settings,
        checked_supervision,
        caller=caller,
        target=service,
        entry_options=service.entry_options,
        backend_options=service.backend_options,
        environment=environment,
        given=given,
        reread=reread,
    )


def service_settings(
    given: Mapping[str, object], entry: Entry, *, base: ServiceSettings | None = None
) -> ServiceSettings:
    """The settings of a service, from ``given`` as ``entry`` took them (over ``base``,
    when given), checked.

    Raises:
        ConfigError: naming the first that can never work (or ``watch`` without
            ``watchfiles`` installed).
    """
    if base is None:
        settings = checked(ServiceSettings, given, entry)
    else:
        settings = overridden(base, given, entry)
    need_watchfiles(settings.watching)
    return settings


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


class _Decorator(Protocol[P]):
    """The type of :func:`service`: the keyword arguments ``P`` (the settings), and
    the function to decorate or not."""

    @overload
    def __call__(self, /, *args: P.args, **kwargs: P.kwargs) -> Callable[[F], Service[F]]: ...

    @overload
    def __call__(self, function: F, /, *args: P.args, **kwargs: P.kwargs) -> Service[F]: ...


def _keywords_of(settings: Callable[P, object]) -> Callable[[Callable[..., Any]], _Decorator[P]]:
    """Type the decorator as taking the keyword arguments of ``settings``."""

    def typed(decorator: Callable[..., Any]) -> _Decorator[P]:
        return decorator

    return typed


@_keywords_of(ServiceSettings)
def service(function: Callable[..., Any] | None = None, **settings: Any) -> Any:
    """Declare a zero-downtime service.

    Decorate either ``async def main(ctx: graceful.Context)`` (run on ``backend``,
    asyncio or trio) or ``def main(ctx: graceful.SyncContext)``. Each worker process
    of each generation imports the code from disk and calls the function; it must
    call ``ctx.ready()`` (``ctx.serve()`` does) and return after shutdown is
    requested.

    The keyword arguments are the settings of
    :class:`~graceful.core.settings.ServiceSettings` (docs/reference/settings.md
    tells each); ``listen`` is required. ``listen``, ``workers`` and the timeouts
    are fixed when the supervisor starts; a reload runs the new function with the
    backend the new code names.

    Arguments are checked here, where they are written. A value that can never work
    raises :class:`ConfigError`, naming it, so that an importer or a test sees the
    mistake at its line. In the script being run (``__main__``), the same mistake is
    one line on stderr and exit status 2, like every configuration error of the
    supervisor.

    Raises:
        ConfigError: for a value that can never work, naming it.
        TypeError: for a keyword that is not a setting.
    """
    caller = sys._getframe(1)
    unknown = settings.keys() - {setting.name for setting in taken_by("@graceful.service")}
    if unknown:
        raise TypeError(f"service() got an unexpected keyword argument {min(unknown)!r}")
    try:
        checked_settings = service_settings(settings, "@graceful.service")
    except ConfigError as exc:
        refuse_in_script(exc, caller)

    def decorate(fn: F) -> Service[F]:
        if not callable(fn):
            refuse_in_script(
                ConfigError(f"@graceful.service decorates a function, not {fn!r}"), caller
            )
        return Service(fn, checked_settings)

    if function is not None:
        return decorate(function)
    return decorate
