"""Counting every answer of an ASGI app (uvicorn, hypercorn, and WSGI apps through
a2wsgi): its status class and its duration, into the worker's vitals page, for the
judged probation and the canary (docs/guides/verdicts.md).

:class:`CountAnswers` wraps the app. It costs one more coroutine per request and a
plain call per message sent (not a coroutine: the server's own ``send`` is awaited
by the app directly), about 1.3 µs per request in all; ``benchmarks/verdicts.py``
measures it against counting off.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

from graceful.child.context import Context

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CountAnswers:
    """ASGI wrapper: each HTTP request is counted once it ends, by the status it
    answered with; one that raised or was cancelled counts as ``failed``
    (:meth:`Context.count_http_answer`), even when its response had started (the
    client got a truncated one). WebSocket and lifespan scopes pass through."""

    def __init__(self, app: ASGIApp, context: Context) -> None:
        self.app = app
        self.count = context.count_http_answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None

        def seen(message: Message) -> Awaitable[None]:
            # a plain function handing back the server's own coroutine: no frame more
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        began = perf_counter()
        try:
            await self.app(scope, receive, seen)
        except BaseException:
            self.count(None, perf_counter() - began)
            raise
        self.count(status, perf_counter() - began)
