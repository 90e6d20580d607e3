"""The line-echo service on trio: the same entry code runs on either backend.

python examples/echo_trio.py        # listens on 127.0.0.1:8080 (ECHO_LISTEN to change)
kill -HUP <pid>                     # reload; kill -TERM <pid> to stop
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import trio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

import graceful

PREFIX = b"echo (trio): "
LISTEN = os.environ.get("ECHO_LISTEN", "127.0.0.1:8080").split(",")


async def lines(stream: SocketStream) -> AsyncIterator[bytes]:
    """Each line the client sends (without its newline), until it closes the connection."""
    buffered = BufferedByteReceiveStream(stream)
    while True:
        try:
            line = await buffered.receive_until(b"\n", 65536)
        except Exception:
            return  # the client went away (EOF, reset, or an over-long line)
        yield line


async def echo(stream: SocketStream) -> None:
    """Answer every line with PREFIX + line, until the client closes."""
    async for line in lines(stream):
        await stream.send(PREFIX + line + b"\n")


@graceful.service(listen=LISTEN, workers=int(os.environ.get("ECHO_WORKERS", "1")), backend="trio")
async def main(ctx: graceful.Context) -> None:
    # trio is really the event loop here: trio APIs work next to anyio ones.
    assert trio.lowlevel.current_trio_token() is not None
    await ctx.serve(echo)


if __name__ == "__main__":
    main.run()
