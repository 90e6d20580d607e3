"""ASGI apps under graceful: ``serve_asgi("pkg.module:app", server="uvicorn" | "hypercorn")``.

The app travels as an import string, so every generation imports it fresh. The
worker entry :func:`asgi_worker` is a library function: the supervisor names it by
module and qualified name like any entry, and hands it the app and the server
options as keyword arguments.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from graceful._version import pip_install
from graceful.api.service import Service, service_settings, supervise
from graceful.base.errors import ConfigError
from graceful.base.log import ensure_visible, logger
from graceful.code.entry import module_exists
from graceful.code.interfaces import need_adapter
from graceful.core.settings import (
    DEFAULT_THREADS,
    Backend,
    Interface,
    Server,
    ServerSettings,
    StrategyName,
    Watch,
    checked,
    taken_by,
)
from graceful.servers.asgi import asgi_worker
from graceful.sockets.listeners import parse_listen_spec


def serve_asgi(
    app: str,
    *,
    listen: list[str] | tuple[str, ...] = ("127.0.0.1:8000",),
    server: Server = "uvicorn",
    workers: int = 1,
    ready_timeout: float = 30.0,
    drain_timeout: float = 30.0,
    factory: bool = False,
    backend: Backend = "asyncio",
    pid_file: str | os.PathLike[str] | None = None,
    health: str | None = None,
    stop_delay: float = 0.0,
    release_link: str | os.PathLike[str] | None = None,
    probation: float = 30.0,
    strategy: StrategyName = "all-at-once",
    max_surge: int = 1,
    preload: bool = False,
    standby: bool = True,
    watch: bool | Watch | Sequence[str] = False,
    interface: Interface = "auto",
    threads: int = DEFAULT_THREADS,
    ready_hook: str | None = None,
    **server_options: Any,
) -> None:
    """Serve the ASGI app named by ``app`` (``"pkg.module:attr"``) with zero-downtime
    reloads, in this process as the supervisor, until it is stopped.

    Each worker imports the app fresh, starts ``server`` on graceful's listeners,
    and reports ready only after the server accepts and the app's lifespan startup
    has completed. A lifespan startup failure fails the generation; the previous
    one keeps serving. On a reload the old generation stops accepting at once and
    drains its keep-alive connections without losing a request (see docs/guides/asgi-wsgi.md for
    each server's exact guarantees).

    Args:
        app: ``"module:attribute"``; with ``factory=True`` the attribute is called
            with no arguments to build the app.
        server_options: passed to ``uvicorn.Config`` or ``hypercorn.Config`` (they
            must be picklable). ``listen``/``workers`` replace the servers' own
            host, port, bind and workers settings.

    The other keyword arguments are the settings of ``serve_asgi``
    (docs/reference/settings.md tells each): those of :func:`graceful.service`, of
    :meth:`Service.run`, and the server's (``probation`` works with uvicorn;
    hypercorn's workers cannot be parked, so with hypercorn the previous generation
    drains and exits at once). Returns after a clean stop; raises ``SystemExit`` as
    :meth:`Service.run` does, with status 2 and one line on stderr for every
    argument it can check before starting (the app's module must exist, but is not
    imported here).
    """
    given = dict(locals())  # the arguments, by name: the signature is their one list
    del given["app"], given["server_options"]
    for setting in taken_by("serve_asgi"):  # one declared since the signature was written
        if setting.name in server_options:
            given[setting.name] = server_options.pop(setting.name)
    try:
        service = asgi_service(app, given, server_options)
    except ConfigError as exc:
        ensure_visible("supervisor")
        logger.error("%s", exc)
        raise SystemExit(2) from None
    code = supervise(service, given, "serve_asgi", caller=sys._getframe(1))
    if code:
        raise SystemExit(code)


def asgi_service(
    app: str, given: Mapping[str, object], server_options: dict[str, Any], *, again: bool = False
) -> Service[Any]:
    """The :class:`Service` that serves ``app``, with the settings ``given`` (as
    ``serve_asgi`` takes them), after checking everything that can be checked without
    importing the app. Built ``again`` (a reload), the app's and the ready hook's
    modules are left for the workers to find, in the release they start from (this
    process's ``sys.path`` is its start's).

    Raises:
        ConfigError: for a malformed app string, a setting that can never work, a
            missing server, a backend the server cannot run on, or an option the
            server refuses.
    """
    module, sep, attribute = app.partition(":") if isinstance(app, str) else ("", "", "")
    if not sep or not module or not attribute:
        raise ConfigError(f"app {app!r} must look like 'package.module:attribute'")
    settings = service_settings(given, "serve_asgi")
    hosting = checked(ServerSettings, given, "serve_asgi")
    server, backend = hosting.server, settings.backend
    for spec in settings.listen:
        if isinstance(spec, str):
            parse_listen_spec(spec)
    if server == "uvicorn" and backend != "asyncio":
        raise ConfigError("uvicorn runs on asyncio only; use server='hypercorn' for trio")
    for needed in (server, backend if backend == "trio" else None):
        if needed and importlib.util.find_spec(needed) is None:
            raise ConfigError(f"{needed} is not installed: {pip_install(needed)}")
    if not again and not module_exists(module):
        raise ConfigError(
            f"cannot find module {module!r} for app {app!r} (is the app directory on "
            "sys.path? see --app-dir)"
        )
    need_adapter(hosting.interface)
    if hosting.ready_hook is not None and not again:
        hook_module = hosting.ready_hook.partition(":")[0]
        if not module_exists(hook_module):
            raise ConfigError(
                f"cannot find module {hook_module!r} for ready hook {hosting.ready_hook!r}"
            )
    backend_options: dict[str, Any] = {}
    if server == "uvicorn":
        from graceful.servers.uvicorn import check_options as check_uvicorn  # noqa: PLC0415 - uvicorn is optional

        # refuses bad options now, without applying a log_config here: the workers'
        check_uvicorn(app, settings.drain_timeout, server_options)
        loop = server_options.get("loop", "auto")
        uvloop = importlib.util.find_spec("uvloop") is not None
        if loop == "uvloop" and not uvloop:
            raise ConfigError("loop='uvloop' needs uvloop: pip install uvloop")
        if loop in ("auto", "uvloop") and uvloop:
            backend_options["use_uvloop"] = True
    else:
        from graceful.servers.hypercorn import check_options  # noqa: PLC0415 - hypercorn is optional

        check_options(server_options)
    return Service(
        asgi_worker,
        settings,
        backend_options=backend_options,
        # the keyword arguments of asgi_worker
        entry_options={
            "app": app,
            **dataclasses.asdict(hosting),
            "backend": backend,
            "drain_timeout": settings.drain_timeout,
            "options": server_options,
        },
    )
