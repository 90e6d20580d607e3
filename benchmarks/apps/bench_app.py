"""The ASGI app every ASGI contender serves: a fixed body, the worker's PID in a header.

``BENCH_SLOW_START`` (seconds) makes its lifespan startup that slow.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

VERSION = "v0000"
BODY = f"hello {VERSION}\n".encode()
PID = str(os.getpid()).encode()

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                time.sleep(float(os.environ.get("BENCH_SLOW_START", "0")))
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(BODY)).encode()),
        (b"x-pid", PID),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})
