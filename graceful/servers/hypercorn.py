"""hypercorn inside a graceful worker, on asyncio or trio.

Extension points used:

* ``Config.bind = ["fd://N"]`` with a duplicate of each listener, so hypercorn
  owns (and closes) its own descriptor;
* ``shutdown_trigger=ctx.wait_shutdown``: hypercorn stops accepting and drains
  when graceful asks;
* readiness: on trio, ``serve()``'s ``task_status``. hypercorn's asyncio
  ``serve()`` has no readiness hook, so ``Config.logger_class`` is used: hypercorn
  logs "Running on ..." right after it starts serving each listener, after the
  lifespan startup;
* an ASGI wrapper that adds ``Connection: close`` to every response that starts
  once the drain has begun. hypercorn would otherwise close those connections
  after the response without telling the client.

What these extension points cannot change: when its shutdown trigger fires,
hypercorn closes every *idle* keep-alive connection at once, including one it has
just accepted whose first request it has not read yet (``TCPServer._idle_timeout``
waits on the worker's ``terminated`` event). A client that sends a request on such
a connection at that moment sees the connection close without an answer.
hypercorn has no option or hook to keep idle connections through a drain, so
that window stays open. docs/benchmarks.md gives the measured cost.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from hypercorn.config import Config
from hypercorn.logging import Logger

from graceful.base.errors import ConfigError
from graceful.base.tasks import run_beside, unwrap_group
from graceful.child.context import Context

#: hypercorn settings that graceful owns.
RESERVED_OPTIONS = frozenset({"bind", "insecure_bind", "quic_bind", "workers", "use_reloader"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def warm_up(backend: str) -> None:
    """Import, ahead of any app, what serving on ``backend`` imports (for a warm
    standby, see :mod:`graceful.spawn.standby`)."""
    importlib.import_module("hypercorn.trio" if backend == "trio" else "hypercorn.asyncio")


def check_options(options: dict[str, Any]) -> None:
    """Refuse options hypercorn does not know (it would ignore them silently) and
    the ones graceful owns.

    Raises:
        ConfigError: naming the first offending option.
    """
    for key in sorted(options):
        if key in RESERVED_OPTIONS:
            raise ConfigError(
                f"hypercorn option {key!r} is graceful's to set: use listen=, workers= "
                "and SIGHUP instead"
            )
        if not hasattr(Config, key):
            raise ConfigError(f"hypercorn has no option {key!r}")


class CloseWhenDraining:
    """ASGI wrapper: counts each HTTP request (:meth:`Context.count_request`), and
    once shutdown is requested, responses say ``Connection: close``."""

    def __init__(self, app: ASGIApp, context: Context) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.context.count_request()

        async def send_announcing_close(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and self.context.shutdown_requested:
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_announcing_close)


async def serve_hypercorn(
    context: Context, app: ASGIApp, backend: str, drain_timeout: float, options: dict[str, Any]
) -> None:
    """Serve ``app`` with hypercorn on the context's listeners until shutdown is requested."""
    listeners_served = anyio.Event()
    expected = len(context.listeners)
    seen = 0

    class ReadinessLogger(Logger):
        async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
            nonlocal seen
            await super().info(message, *args, **kwargs)
            if message.startswith("Running on "):
                seen += 1
                if seen >= expected:
                    listeners_served.set()

    config = Config.from_mapping(options)
    config.graceful_timeout = drain_timeout
    config.logger_class = ReadinessLogger
    config.bind = []
    for listener in context.listeners:
        config.bind.append(f"fd://{os.dup(listener.socket.fileno())}")
        listener.socket.close()  # hypercorn serves through its duplicate
    wrapped = CloseWhenDraining(app, context)

    if backend == "trio":
        from hypercorn.trio import serve as serve_trio  # noqa: PLC0415

        async def serve_reporting_ready() -> None:
            async with anyio.create_task_group() as tasks:
                await tasks.start(
                    lambda task_status: serve_trio(
                        wrapped,  # type: ignore[arg-type]
                        config,
                        shutdown_trigger=context.wait_shutdown,
                        task_status=task_status,
                    )
                )
                await context.ready()

        await unwrap_group(serve_reporting_ready)
        return

    from hypercorn.asyncio import serve as serve_asyncio  # noqa: PLC0415

    async def report_ready() -> None:
        await listeners_served.wait()
        await context.ready()

    await run_beside(
        lambda: serve_asyncio(wrapped, config, shutdown_trigger=context.wait_shutdown),  # type: ignore[arg-type]
        report_ready,
    )
