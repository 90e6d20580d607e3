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
import inspect
import os
from collections.abc import Sequence
from typing import Any, Literal

import anyio
import anyio.to_thread

from ._context import Context
from ._dev import Watch
from ._entry import import_module, walk
from ._errors import ConfigError, one_line
from ._interfaces import DEFAULT_THREADS, Interface, as_asgi3, check_interface
from ._listeners import parse_listen_spec
from ._logging import ensure_visible, logger
from ._service import Backend, Service, StrategyName, check_settings

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
    drains its keep-alive connections without losing a request (see the README for
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
            ``"asgi3"``, ``"asgi2"`` or ``"wsgi"`` (see ``_interfaces.py``).
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
        from ._uvicorn import uvicorn_config  # noqa: PLC0415 - uvicorn is optional

        uvicorn_config(app, drain_timeout, server_options)  # refuses bad options now
        loop = server_options.get("loop", "auto")
        uvloop = importlib.util.find_spec("uvloop") is not None
        if loop == "uvloop" and not uvloop:
            raise ConfigError("loop='uvloop' needs uvloop: pip install uvloop")
        if loop in ("auto", "uvloop") and uvloop:
            backend_options["use_uvloop"] = True
    else:
        from ._hypercorn import check_options  # noqa: PLC0415 - hypercorn is optional

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


def module_exists(name: str) -> bool:
    """True if module ``name`` can be found, without running any of its code or its
    packages': the top-level name is looked up by the import system's finders, and
    each submodule in its parent package's directories.

    A package whose ``__init__`` computes its ``__path__`` (``pkgutil.extend_path``)
    may hold submodules elsewhere: for such a package only, the lookup imports it, as
    a worker would.

    Raises:
        ConfigError: if importing such a package fails.
    """
    top, _, rest = name.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    parent = top
    for part in rest.split(".") if rest else []:
        if spec is None or spec.submodule_search_locations is None:
            return False
        found = importlib.machinery.PathFinder.find_spec(
            part, list(spec.submodule_search_locations)
        )
        if found is None and _computes_its_path(spec):
            try:
                found = importlib.util.find_spec(f"{parent}.{part}")
            except Exception as exc:
                raise ConfigError(f"cannot import {parent!r}: {one_line(exc)}") from exc
        spec, parent = found, f"{parent}.{part}"
    return spec is not None


def _computes_its_path(spec: importlib.machinery.ModuleSpec) -> bool:
    origin = spec.origin
    if not origin or not origin.endswith("__init__.py"):
        return False
    try:
        with open(origin, encoding="utf-8", errors="replace") as file:
            return "__path__" in file.read()
    except OSError:
        return False


def load_app(app: str, factory: bool) -> Any:
    """Import ``"module:attribute"`` (fresh in each worker) and return the ASGI app.

    Raises:
        ConfigError: one line naming the app and the cause, also when what the name
            leads to (or the factory returns) is not callable.
    """
    module_name, _, attribute = app.partition(":")
    target = walk(import_module(module_name, f" for app {app!r}"), attribute)
    if target is None:
        raise ConfigError(f"app {app!r}: module {module_name!r} has no {attribute!r}")
    if factory:
        try:
            target = target()
        except Exception as exc:
            raise ConfigError(f"app factory {app!r} failed: {one_line(exc, where=True)}") from exc
    if not callable(target):
        made = "the factory returned" if factory else "it is"
        raise ConfigError(
            f"app {app!r} is not an ASGI application: {made} {type(target).__name__!r}, "
            "which is not callable"
        )
    return target


async def run_ready_hook(ref: str) -> None:
    """Import the hook named ``"module:function"`` (fresh, in this worker) and call
    it: awaited if it is a coroutine function, else in a thread.

    Raises:
        ConfigError: one line naming the hook, if it cannot be found or raises.
    """
    module_name, _, name = ref.partition(":")
    hook = walk(import_module(module_name, f" for ready hook {ref!r}"), name)
    if hook is None or not callable(hook):
        raise ConfigError(f"ready hook {ref!r}: module {module_name!r} has no function {name!r}")
    try:
        if inspect.iscoroutinefunction(hook):
            await hook()
        else:
            await anyio.to_thread.run_sync(hook)
    except Exception as exc:
        raise ConfigError(f"ready hook {ref!r} failed: {one_line(exc, where=True)}") from exc


def preload_app(*, app: str, server: str, **_: Any) -> None:
    """With ``preload``, in the generation's template: import what every worker would
    import first, once (graceful's integration of ``server``, and the app's module,
    fresh from disk); the forked workers find them imported.

    Raises:
        ConfigError: if the app's module cannot be imported.
    """
    import_module(f"graceful._{server}")
    import_module(app.partition(":")[0], f" for app {app!r}")


def warm_up_server(*, server: str, backend: str, options: dict[str, Any], **_: Any) -> None:
    """For a warm standby (``_standby.py``): import graceful's integration of
    ``server`` and what serving imports, never the app."""
    if server == "uvicorn":
        from ._uvicorn import warm_up  # noqa: PLC0415 - uvicorn is optional

        warm_up(options)
    else:
        from ._hypercorn import warm_up as warm_up_hypercorn  # noqa: PLC0415

        warm_up_hypercorn(backend)


async def asgi_worker(
    context: Context,
    *,
    app: str,
    server: str,
    factory: bool,
    backend: str,
    drain_timeout: float,
    options: dict[str, Any],
    interface: Interface = "auto",
    threads: int = DEFAULT_THREADS,
    ready_hook: str | None = None,
) -> None:
    """The worker entry of :func:`serve_asgi`: load the app, run the ready hook, serve
    the app, drain, return."""
    application, kind = as_asgi3(load_app(app, factory), interface, threads)
    context.report_progress("code")
    if interface == "auto" and kind != "asgi3":
        logger.debug("app %r is a %s app", app, kind)
    if ready_hook is not None:
        await run_ready_hook(ready_hook)
    if server == "uvicorn":
        from ._uvicorn import serve_uvicorn  # noqa: PLC0415

        await serve_uvicorn(context, application, drain_timeout, options)
    else:
        from ._hypercorn import serve_hypercorn  # noqa: PLC0415

        await serve_hypercorn(context, application, backend, drain_timeout, options)


asgi_worker.graceful_preload = preload_app  # type: ignore[attr-defined]
asgi_worker.graceful_warm_up = warm_up_server  # type: ignore[attr-defined]
#: the worker reports the user's code imported once the app is (not the main script)
asgi_worker.graceful_imports_code = True  # type: ignore[attr-defined]
