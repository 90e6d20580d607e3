"""A line-echo TCP service on asyncio: each line you send comes back, prefixed.

Run it, then reload it under load:

    python examples/echo_asyncio.py --listen 127.0.0.1:8080 &
    python examples/echo_load.py 127.0.0.1:8080 --seconds 20 &
    kill -HUP %1        # as often as you like: the load reports 0 failures

Edit ``PREFIX`` between reloads: new connections get the new prefix as soon as the
new generation is ready.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

import graceful

PREFIX = b"echo: "
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


@graceful.service(
    listen=LISTEN, workers=int(os.environ.get("ECHO_WORKERS", "1")), backend="asyncio"
)
async def main(ctx: graceful.Context) -> None:
    await ctx.serve(echo)


if __name__ == "__main__":
    # Optional: a PID file (and the control socket beside it) for graceful reload
    # --wait, status and stop --wait; a health endpoint for load balancers.
    main.run(
        pid_file=os.environ.get("ECHO_PID_FILE"),
        health=os.environ.get("ECHO_HEALTH"),
        stop_delay=float(os.environ.get("ECHO_STOP_DELAY", "0")),
    )
