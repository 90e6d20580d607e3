"""ASGI apps under graceful: ``serve_asgi("pkg.module:app", server="uvicorn" | "hypercorn")``.

The app travels as an import string, so every generation imports it fresh. The
worker entry :func:`asgi_worker` is a library function: the supervisor names it by
module and qualified name like any entry, and hands it the app and the server
options as keyword arguments.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
from collections.abc import Sequence
from typing import Any, Literal

from graceful.api.service import Backend, Service, StrategyName, check_settings
from graceful.base.errors import ConfigError
from graceful.base.log import ensure_visible, logger
from graceful.code.entry import module_exists
from graceful.code.interfaces import DEFAULT_THREADS, Interface, check_interface
from graceful.dev.watch import Watch
from graceful.servers.asgi import asgi_worker
from graceful.sockets.listeners import parse_listen_spec

Server = Literal["uvicorn", "hypercorn"]
_EXTRAS = {
    "uvicorn": "graceful[uvicorn]",
    "hypercorn": "graceful[hypercorn]",
    "trio": "graceful[trio]",
}


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
        server: ``"uvicorn"`` (asyncio) or ``"hypercorn"`` (asyncio or trio).
        backend: ``"asyncio"`` or, with hypercorn, ``"trio"``.
        server_options: passed to ``uvicorn.Config`` or ``hypercorn.Config`` (they
            must be picklable). ``listen``/``workers`` replace the servers' own
            host, port, bind and workers settings.
        interface: ``"auto"`` (recognise the app's kind in each worker),
            ``"asgi3"``, ``"asgi2"`` or ``"wsgi"`` (see :mod:`graceful.code.interfaces`).
        threads: the thread pool that runs a WSGI app, per worker.
        ready_hook: ``"module:function"``, called (awaited if it is a coroutine
            function, else run in a thread) in each worker after the app is
            imported and before it accepts: a warm-up or a check, such as
            ``django.setup()`` and a database query. If it raises, the worker
            fails, and so does the reload: the old generation keeps serving.

    Other arguments are those of :func:`graceful.service` and :meth:`Service.run`
    (``probation`` works with uvicorn; hypercorn's workers cannot be parked, so
    with hypercorn the previous generation drains and exits at once).
    Returns after a clean stop; raises ``SystemExit`` as :meth:`Service.run` does,
    with status 2 and one line on stderr for every argument it can check before
    starting (the app's module must exist, but is not imported here).
    """
    try:
        service = asgi_service(
            app,
            listen=list(listen),
            server=server,
            workers=workers,
            ready_timeout=ready_timeout,
            drain_timeout=drain_timeout,
            factory=factory,
            backend=backend,
            server_options=server_options,
            probation=probation,
            strategy=strategy,
            max_surge=max_surge,
            preload=preload,
            standby=standby,
            watch=watch,
            interface=interface,
            threads=threads,
            ready_hook=ready_hook,
        )
    except ConfigError as exc:
        ensure_visible("supervisor")
        logger.error("%s", exc)
        raise SystemExit(2) from None
    service.run(pid_file=pid_file, health=health, stop_delay=stop_delay)


def asgi_service(
    app: str,
    *,
    listen: list[str],
    server: str,
    workers: int,
    ready_timeout: float,
    drain_timeout: float,
    factory: bool,
    backend: str,
    server_options: dict[str, Any],
    probation: float = 30.0,
    strategy: str = "all-at-once",
    max_surge: int = 1,
    preload: bool = False,
    standby: bool = True,
    watch: bool | Watch | Sequence[str] = False,
    interface: str = "auto",
    threads: int = DEFAULT_THREADS,
    ready_hook: str | None = None,
) -> Service[Any]:
    """The :class:`Service` that serves ``app``, after checking everything that can be
    checked without importing the app.

    Raises:
        ConfigError: for a malformed app string, an unknown or missing server, a
            backend the server cannot run on, or an option the server refuses.
    """
    module, sep, attribute = app.partition(":")
    if not sep or not module or not attribute:
        raise ConfigError(f"app {app!r} must look like 'package.module:attribute'")
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
    for spec in listen:
        if isinstance(spec, str):
            parse_listen_spec(spec)
    if server not in ("uvicorn", "hypercorn"):
        raise ConfigError(f"server={server!r} must be 'uvicorn' or 'hypercorn'")
    if backend not in ("asyncio", "trio"):
        raise ConfigError(f"backend={backend!r} must be 'asyncio' or 'trio'")
    if server == "uvicorn" and backend != "asyncio":
        raise ConfigError("uvicorn runs on asyncio only; use server='hypercorn' for trio")
    for needed in (server, backend if backend == "trio" else None):
        if needed and importlib.util.find_spec(needed) is None:
            raise ConfigError(f"{needed} is not installed: pip install '{_EXTRAS[needed]}'")
    if not module_exists(module):
        raise ConfigError(
            f"cannot find module {module!r} for app {app!r} (is the app directory on "
            "sys.path? see --app-dir)"
        )
    check_interface(interface, threads)
    if ready_hook is not None:
        hook_module, sep, hook_name = str(ready_hook).partition(":")
        if not sep or not hook_module or not hook_name:
            raise ConfigError(f"ready hook {ready_hook!r} must look like 'package.module:function'")
        if not module_exists(hook_module):
            raise ConfigError(f"cannot find module {hook_module!r} for ready hook {ready_hook!r}")
    backend_options: dict[str, Any] = {}
    if server == "uvicorn":
        from graceful.servers.uvicorn import uvicorn_config  # noqa: PLC0415 - uvicorn is optional

        uvicorn_config(app, drain_timeout, server_options)  # refuses bad options now
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
        listen=listen,
        workers=workers,
        ready_timeout=ready_timeout,
        drain_timeout=drain_timeout,
        backend=backend,  # type: ignore[arg-type]
        probation=probation,
        strategy=strategy,  # type: ignore[arg-type]
        max_surge=max_surge,
        preload=preload,
        standby=standby,
        watch=watch,
        backend_options=backend_options,
        entry_options={
            "app": app,
            "server": server,
            "factory": factory,
            "backend": backend,
            "drain_timeout": drain_timeout,
            "options": server_options,
            "interface": interface,
            "threads": threads,
            "ready_hook": ready_hook,
        },
    )
