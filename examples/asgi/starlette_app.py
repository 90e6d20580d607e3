"""A Starlette app served with zero-downtime reloads.

    graceful serve starlette_app:app --listen 127.0.0.1:8000     # from this directory
    curl http://127.0.0.1:8000/
    # edit GREETING, then:  kill -HUP <supervisor pid>   (or: graceful reload --pid-file ...)

The lifespan startup runs in every new generation before it takes traffic; if it
raises, the reload fails and the running generation keeps serving.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

GREETING = "hello from graceful + starlette\n"


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Open connection pools, warm caches... here. graceful waits for this to finish.
    app.state.started_by = os.getpid()
    yield


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse(GREETING)


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"worker_pid": request.app.state.started_by})


app = Starlette(routes=[Route("/", home), Route("/whoami", whoami)], lifespan=lifespan)
