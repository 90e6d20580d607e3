"""Server-sent events: a long-lived response that shows the drain deadline.

    graceful serve sse_app:app --listen 127.0.0.1:8000 --drain-timeout 5   # from this dir
    curl -N http://127.0.0.1:8000/events      # one event per second
    kill -HUP <supervisor pid>

After the reload, new requests go to the new generation at once. The open stream
stays on the old generation and keeps receiving events until the drain deadline
(5 s here), then it is closed. A client such as the browser's EventSource then
reconnects, to the new generation.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

VERSION = "v1"


async def events(request: Request) -> StreamingResponse:
    async def stream() -> AsyncIterator[str]:
        for n in range(1_000_000):
            yield f"data: {VERSION} event {n} from pid {os.getpid()}\n\n"
            await anyio.sleep(1)

    return StreamingResponse(stream(), media_type="text/event-stream")


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"{VERSION}\n")


app = Starlette(routes=[Route("/", home), Route("/events", events)])
