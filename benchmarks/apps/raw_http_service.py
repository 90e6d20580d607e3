"""A raw ``@graceful.service``: a minimal HTTP/1.1 keep-alive server on ``ctx.serve``.

It answers every request with the same small body. Once its generation drains, the
next response on each connection says ``Connection: close`` and the connection
closes after it. Settings: ``LISTEN`` (comma-separated), ``WORKERS``,
``BENCH_SLOW_START``.
"""

from __future__ import annotations

import os

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

import graceful

VERSION = "v0000"
BODY = f"hello {VERSION}\n".encode()


def response(close: bool) -> bytes:
    connection = b"close" if close else b"keep-alive"
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
        b"x-pid: %d\r\nconnection: %s\r\n\r\n%s" % (len(BODY), os.getpid(), connection, BODY)
    )


@graceful.service(
    listen=os.environ.get("LISTEN", "127.0.0.1:8000").split(","),
    workers=int(os.environ.get("WORKERS", "1")),
)
async def main(ctx: graceful.Context) -> None:
    await anyio.sleep(float(os.environ.get("BENCH_SLOW_START", "0")))

    async def handle(stream: SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        while True:
            try:
                head = await reader.receive_until(b"\r\n\r\n", 65536)
            except Exception:
                return
            close = ctx.shutdown_requested or b"connection: close" in head.lower()
            await stream.send(response(close))
            if close:
                return

    await ctx.serve(handle)


if __name__ == "__main__":
    main.run()
