"""An ASGI or WSGI app inside a worker: found, loaded and served by the server
``graceful serve`` names (the supervisor's side: :mod:`graceful.api.asgi`)."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import anyio
import anyio.to_thread

from graceful.base.errors import ConfigError, one_line
from graceful.base.log import logger
from graceful.child.context import Context
from graceful.code.entry import EntryTraits, declare_traits, import_module, walk
from graceful.code.interfaces import as_asgi3
from graceful.core.settings import DEFAULT_THREADS, Interface
from graceful.servers.answers import CountAnswers


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
    import_module(f"graceful.servers.{server}")
    import_module(app.partition(":")[0], f" for app {app!r}")


def warm_up_server(*, server: str, backend: str, options: dict[str, Any], **_: Any) -> None:
    """For a warm standby (:mod:`graceful.spawn.standby`): import graceful's integration of
    ``server`` and what serving imports, never the app."""
    if server == "uvicorn":
        from graceful.servers.uvicorn import warm_up  # noqa: PLC0415 - uvicorn is optional

        warm_up(options)
    else:
        from graceful.servers.hypercorn import warm_up as warm_up_hypercorn  # noqa: PLC0415

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
    count_answers: bool = True,
) -> None:
    """The worker entry of :func:`serve_asgi`: load the app, run the ready hook, serve
    the app (counting its answers: :mod:`graceful.servers.answers`), drain, return."""
    application, kind = as_asgi3(load_app(app, factory), interface, threads)
    if count_answers:
        application = CountAnswers(application, context)
    context.report_progress("code")
    if interface == "auto" and kind != "asgi3":
        logger.debug("app %r is a %s app", app, kind)
    if ready_hook is not None:
        await run_ready_hook(ready_hook)
    if server == "uvicorn":
        from graceful.servers.uvicorn import serve_uvicorn  # noqa: PLC0415

        await serve_uvicorn(context, application, drain_timeout, options)
    else:
        from graceful.servers.hypercorn import serve_hypercorn  # noqa: PLC0415

        await serve_hypercorn(context, application, backend, drain_timeout, options)


def check_app(app: str, factory: bool, interface: Interface, threads: int) -> str:
    """Load ``app`` as a worker does (``graceful check``, in a fresh interpreter): what
    it is, in a few words.

    Raises:
        ConfigError: one line, as a worker would report it.
    """
    _, kind = as_asgi3(load_app(app, factory), interface, threads)
    return {"asgi3": "an ASGI 3 app", "asgi2": "an ASGI 2 app"}.get(kind, "a WSGI app")


def check_main(app: str, factory: str, interface: str, threads: str) -> None:
    """``graceful check``'s fresh interpreter (``python -c``): :func:`check_app`, said
    on standard output, or its one-line refusal on standard error and exit status 2."""
    try:
        print(check_app(app, factory == "1", interface, int(threads)))  # type: ignore[arg-type]
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:  # what the app's own code raised, as a worker says it
        print(f"app {app!r}: {one_line(exc, where=True)}", file=sys.stderr)
        raise SystemExit(2) from None


# the worker reports the user's code imported once the app is (not the main script)
declare_traits(
    asgi_worker, EntryTraits(preload=preload_app, warm_up=warm_up_server, imports_code=True)
)
