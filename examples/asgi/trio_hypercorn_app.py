"""A plain ASGI app that uses trio, served by hypercorn on trio.

    graceful serve trio_hypercorn_app:app --server hypercorn --backend trio \\
        --listen 127.0.0.1:8000                                  # from this directory
    curl http://127.0.0.1:8000/
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

Message = MutableMapping[str, Any]

GREETING = b"hello from graceful + hypercorn on trio\n"


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await trio.sleep(0)  # this really is trio's event loop
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", b"%d" % len(GREETING)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": GREETING})
