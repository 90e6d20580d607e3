"""Test services: line-echo servers written to disk, so tests can edit and reload them.

Every service answers each line with ``PREFIX + line``. A line ``sleep S`` is
acknowledged at once with ``PREFIX + "sleeping"`` and answered after S seconds,
so a test knows when a request is in flight in a handler. ``on_line`` is code run
for every line before it is answered (``line`` is the request, ``CTX`` the
worker's context). Settings come
from the environment: ``LISTEN`` (comma-separated specs), ``WORKERS``,
``READY_TIMEOUT``, ``DRAIN_TIMEOUT``, ``PROBATION``, ``STRATEGY``, ``MAX_SURGE``,
``PRELOAD`` (``1`` for ``preload=True``) and ``STANDBY`` (``0`` for
``standby=False``). The sync service takes part in probation (parks and resumes)
like the async ones.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from echo_asyncio import lines

#: The line reader of ``examples/echo_asyncio.py``, written into every async service
#: so that the service stands alone on disk.
_LINES = inspect.getsource(lines)

_SERVICE_ARGS = """\
    listen=os.environ["LISTEN"].split(","),
    workers=int(os.environ.get("WORKERS", "1")),
    ready_timeout=float(os.environ.get("READY_TIMEOUT", "30")),
    drain_timeout=float(os.environ.get("DRAIN_TIMEOUT", "30")),
    probation=float(os.environ.get("PROBATION", "30")),
    strategy=os.environ.get("STRATEGY", "all-at-once"),
    max_surge=int(os.environ.get("MAX_SURGE", "1")),
    preload=os.environ.get("PRELOAD") == "1",
    standby=os.environ.get("STANDBY", "1") == "1","""

ASYNC_SERVICE = """\
import os
from collections.abc import AsyncIterator

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

import graceful
{imports}
PREFIX = {prefix}
CTX = None


{lines}

async def echo(stream: SocketStream) -> None:
    async for line in lines(stream):
{on_line}
        if line.startswith(b"sleep "):
            await stream.send(PREFIX + b"sleeping\\n")
            await anyio.sleep(float(line.split()[1]))
        await stream.send(PREFIX + line + b"\\n")


@graceful.service(
{service_args}
    backend={backend!r},
)
async def main(ctx: graceful.Context) -> None:
    global CTX
    CTX = ctx
{before_serve}
    await ctx.serve(echo)


if __name__ == "__main__":
    main.run({run_args})
"""

SYNC_SERVICE = """\
import os
import socketserver
import threading
import time

import graceful
{imports}
PREFIX = {prefix}
CTX = None


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            line = line.rstrip(b"\\n")
{on_line}
            if line.startswith(b"sleep "):
                self.wfile.write(PREFIX + b"sleeping\\n")
                time.sleep(float(line.split()[1]))
            self.wfile.write(PREFIX + line + b"\\n")


@graceful.service(
{service_args}
)
def main(ctx: graceful.SyncContext) -> None:
    global CTX
    CTX = ctx
{before_serve}
    servers = []
    while True:
        listener = ctx.listeners[0]
        server = socketserver.ThreadingTCPServer(listener.address, Echo, bind_and_activate=False)
        server.socket.close()
        server.socket = listener.socket
        server.daemon_threads = False
        servers.append(server)
        thread = threading.Thread(target=server.serve_forever, kwargs={{"poll_interval": 0.05}})
        thread.start()
        ctx.ready(parkable=True)
        ctx.wait_shutdown()
        server.shutdown()
        thread.join()
        server.socket.close()  # parked or not, hold no listener
        if not ctx.wait_resume():
            break
    for server in servers:
        server.server_close()  # waits for the handlers


if __name__ == "__main__":
    main.run({run_args})
"""

KINDS = ("asyncio", "trio", "sync")


def wait_for_file(path: Path) -> str:
    """``before_serve`` code (async kinds) that holds the start-up until ``path``
    exists: a start-up the test ends when it chooses, not after a fixed time."""
    return f"    while not os.path.exists({str(path)!r}):\n        await anyio.sleep(0.01)"


def service_source(
    kind: str = "asyncio",
    *,
    prefix: str = "v1",
    before_serve: str = "",
    on_line: str = "",
    prefix_from_module: bool = False,
    pid_file: Path | None = None,
    run_args: str = "",
) -> str:
    """Source of a test service. ``kind`` is ``asyncio``, ``trio`` or ``sync``.

    ``before_serve`` is code run in the entry function before it serves (indent it
    by four spaces); ``on_line`` runs in the handler for each request line (indent
    it by eight spaces for asyncio and trio, twelve for sync); with
    ``prefix_from_module`` the prefix is imported from ``handlers.py`` beside the
    script instead of being defined in it; with ``pid_file`` the supervisor writes
    its PID there; ``run_args`` are more keyword arguments of ``main.run()``, as code.
    """
    arguments = [f"pid_file={str(pid_file)!r}"] if pid_file is not None else []
    if run_args:
        arguments.append(run_args)
    imports = "from handlers import PREFIX" if prefix_from_module else ""
    prefix_value = "PREFIX" if prefix_from_module else repr(f"{prefix}: ".encode())
    template = SYNC_SERVICE if kind == "sync" else ASYNC_SERVICE
    return template.format(
        imports=imports,
        prefix=prefix_value,
        service_args=_SERVICE_ARGS,
        lines=_LINES,
        backend=kind,
        before_serve=before_serve or "    pass",
        run_args=", ".join(arguments),
        on_line=on_line or ("            pass" if kind == "sync" else "        pass"),
    )


def write_service(path: Path, kind: str = "asyncio", **options: object) -> Path:
    path.write_text(service_source(kind, **options))  # type: ignore[arg-type]
    return path


def pid_service(directory: Path, kind: str = "asyncio", **options: object) -> tuple[Path, Path]:
    """``svc.py`` in ``directory`` (:func:`write_service`), whose supervisor writes its
    PID to ``svc.pid`` beside it; (script, pid_file)."""
    pid_file = directory / "svc.pid"
    script = write_service(directory / "svc.py", kind, pid_file=pid_file, **options)
    return script, pid_file


MINIMAL_ASGI_APP = """\
import os
{header}
MESSAGE = {message!r}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({{"type": message["type"] + ".complete"}})
            if message["type"] == "lifespan.shutdown":
                return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": {body}.encode()}})
"""


def minimal_asgi_app(message: str, *, header: str = "", body: str = "MESSAGE") -> str:
    """Source of a plain ASGI app (no framework) that answers ``body`` (an expression;
    ``MESSAGE`` is ``message``), with ``header`` code run at import."""
    return MINIMAL_ASGI_APP.format(header=header, message=message, body=body)


STARLETTE_APP = """\
import contextlib
import os

import anyio
from starlette import applications, responses, routing
{imports}
MESSAGE = {message!r}


@contextlib.asynccontextmanager
async def lifespan(app):
{lifespan}
    yield


async def home(request):
    return responses.PlainTextResponse(MESSAGE)


async def slow(request):
    await anyio.sleep(float(request.query_params.get("s", "1")))
    return responses.PlainTextResponse(MESSAGE + " slow")


async def hold(request):
    while not os.path.exists(request.query_params["until"]):
        await anyio.sleep(0.01)
    return responses.PlainTextResponse(MESSAGE + " held")


async def ticks(websocket):
    await websocket.accept()
    n = 0
    while True:
        await websocket.send_text(f"{{MESSAGE}} {{n}}")
        n += 1
        await anyio.sleep(0.1)


async def events(request):
    async def stream():
        for n in range(100_000):
            yield f"data: {{MESSAGE}} {{n}}\\n\\n"
            await anyio.sleep(0.1)

    return responses.StreamingResponse(stream(), media_type="text/event-stream")


app = applications.Starlette(
    routes=[
        routing.Route("/", home),
        routing.Route("/slow", slow),
        routing.Route("/hold", hold),
        routing.Route("/events", events),
        routing.WebSocketRoute("/ws", ticks),
    ],
    lifespan=lifespan,
)
"""


def starlette_app(message: str, *, lifespan: str = "    pass", imports: str = "") -> str:
    """Source of a Starlette app whose routes answer with ``message``: ``/``; ``/slow?s=S``
    after S seconds; ``/hold?until=PATH`` once PATH exists; ``/events``, a stream of
    server-sent events; ``/ws``, a WebSocket that sends a message every 0.1 s.

    ``lifespan`` is the code of its lifespan's start-up (indent it by four spaces);
    ``imports`` is code on line 6, before anything else runs (tests name that line).
    """
    return STARLETTE_APP.format(message=message, lifespan=lifespan, imports=imports)
