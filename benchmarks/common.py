"""What the benchmark scripts share: pieces of the services they write to disk, the
clients that ask those services, the arithmetic of their reports and the tables they print.

The echo services reuse the line reader of ``examples/echo_asyncio.py``: its source
(:data:`LINES`) is written into each service's file, so that the service stands alone
in its temporary directory.
"""

from __future__ import annotations

import inspect
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from echo_asyncio import lines

#: ``lines(stream)`` of ``examples/echo_asyncio.py``, as source: each line a client
#: sends, until it closes. A service that uses it imports ``AsyncIterator``,
#: ``SocketStream`` and ``BufferedByteReceiveStream``.
LINES = inspect.getsource(lines)

#: A raw ``@graceful.service`` that answers any request with its ``VERSION``: the code
#: the reload benchmarks edit. Run as a script, ``sys.argv[1]`` is its PID file and a
#: ``--no-standby`` argument turns the warm standby off.
VERSION_ECHO = """\
import sys

import graceful

VERSION = {version!r}


async def echo(stream):
    await stream.receive()
    await stream.send(VERSION.encode() + b"\\n")


@graceful.service(listen=["127.0.0.1:0"], probation=0, standby="--no-standby" not in sys.argv)
async def main(ctx):
    await ctx.serve(echo)


if __name__ == "__main__":
    main.run(pid_file=sys.argv[1])
"""


def ask_raw(address: tuple[str, int]) -> bytes:
    """One line to :data:`VERSION_ECHO` on a new connection; its answer, stripped."""
    with socket.create_connection(address, timeout=2) as sock:
        sock.sendall(b"hi\n")
        return sock.recv(100).strip()


def ask_http(address: tuple[str, int]) -> bytes:
    """``GET /`` on a new connection; the response's body, stripped."""
    with socket.create_connection(address, timeout=2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data.split(b"\r\n\r\n", 1)[-1].strip()


def until_answer(
    ask: Callable[[tuple[str, int]], bytes],
    address: tuple[str, int],
    expected: bytes,
    *,
    interval: float,
    timeout: float = 30.0,
) -> bool:
    """Ask ``address`` (``ask`` opens a new connection each time) every ``interval``
    seconds until the answer is ``expected``: True, or False once ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ask(address) == expected:
                return True
        except OSError:
            pass
        time.sleep(interval)
    return False


def p90(values: list[float]) -> float:
    """The 90th percentile of ``values`` (nearest rank)."""
    return sorted(values)[max(0, round(0.9 * len(values)) - 1)]


def print_row(*cells: object) -> None:
    """Print one row of a Markdown table, its cells as they are (formatted by the caller)."""
    print("| " + " | ".join(str(cell) for cell in cells) + " |")


def print_header(*columns: str) -> None:
    """Print the head of a Markdown table: the column names, then the rule under them."""
    print_row(*columns)
    print("|" + "---|" * len(columns))
