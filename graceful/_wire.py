"""The wire between the supervisor and a worker.

Two channels connect them:

* a ``multiprocessing.Pipe`` for control messages, small tuples in both directions
  (worker to supervisor: :class:`Ready`, :class:`Failed`; supervisor to worker:
  :class:`Shutdown`), bridged into anyio memory object streams by :func:`pump`;
* a ``socket.socketpair()`` that carries the listeners' file descriptors once, at
  start, with ``socket.send_fds`` (at most :data:`MAX_FDS_PER_MESSAGE` per message).

Messages stay far below a pipe buffer, so a readable pipe always holds a whole
message and ``recv()`` after ``wait_readable()`` never blocks for long.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import anyio
from anyio.abc import ObjectSendStream

#: SCM_MAX_FD on Linux: one ``sendmsg`` carries at most this many descriptors.
MAX_FDS_PER_MESSAGE = 253


@dataclass(frozen=True)
class Ready:
    """The worker can take traffic."""


@dataclass(frozen=True)
class Failed:
    """The worker is about to exit because of ``cause`` (one line)."""

    cause: str


@dataclass(frozen=True)
class Shutdown:
    """Stop accepting, finish in-flight work within ``drain_timeout`` seconds, exit."""

    drain_timeout: float


@dataclass(frozen=True)
class PeerGone:
    """The pipe reached end-of-file: the other process is gone (a worker treats a
    gone supervisor as Shutdown)."""


Message: TypeAlias = Ready | Failed | Shutdown


class Connection(Protocol):
    """The part of ``multiprocess.connection.Connection`` the wire uses."""

    def send(self, obj: Any) -> None: ...
    def recv(self) -> Any: ...
    def fileno(self) -> int: ...
    def poll(self, timeout: float | None = ...) -> bool: ...
    def close(self) -> None: ...


def encode(message: Message) -> tuple[Any, ...]:
    """Turn a message into the plain tuple that travels on the pipe."""
    if isinstance(message, Ready):
        return ("ready",)
    if isinstance(message, Failed):
        return ("failed", message.cause)
    return ("shutdown", message.drain_timeout)


def decode(raw: Any) -> Message:
    """Turn a received tuple back into a message.

    Raises:
        ValueError: if ``raw`` is not a message of this protocol.
    """
    if isinstance(raw, tuple) and raw:
        kind = raw[0]
        if kind == "ready" and len(raw) == 1:
            return Ready()
        if kind == "failed" and len(raw) == 2 and isinstance(raw[1], str):
            return Failed(raw[1])
        if kind == "shutdown" and len(raw) == 2 and isinstance(raw[1], int | float):
            return Shutdown(float(raw[1]))
    raise ValueError(f"not a graceful control message: {raw!r}")


def send(conn: Connection, message: Message) -> bool:
    """Send ``message``; return False if the other side is already gone."""
    try:
        conn.send(encode(message))
    except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
        return False
    return True


async def pump(conn: Connection, into: ObjectSendStream[Message | PeerGone]) -> None:
    """Forward every message arriving on ``conn`` into ``into`` until end-of-file.

    The only cancellation point is the wait for the pipe to become readable, so a
    cancelled pump never loses a message it had started to read. At end-of-file it
    sends :class:`PeerGone` and returns.
    """
    while True:
        await anyio.wait_readable(conn.fileno())
        try:
            raw = conn.recv()
        except (EOFError, OSError):
            await into.send(PeerGone())
            return
        await into.send(decode(raw))


def send_fds(channel: socket.socket, fds: list[int]) -> None:
    """Send ``fds`` over ``channel`` in as many messages as SCM_MAX_FD requires.

    The count goes first, as 4 bytes, so that the receiver knows when it has all.
    """
    channel.sendall(len(fds).to_bytes(4, "big"))
    for start in range(0, len(fds), MAX_FDS_PER_MESSAGE):
        chunk = fds[start : start + MAX_FDS_PER_MESSAGE]
        socket.send_fds(channel, [b"F"], chunk)


def recv_fds(channel: socket.socket) -> list[int]:
    """Receive the descriptors :func:`send_fds` sent, each set non-inheritable.

    Raises:
        ConnectionError: if the channel closes before every descriptor arrived.
    """
    header = b""
    while len(header) < 4:
        part = channel.recv(4 - len(header))
        if not part:
            raise ConnectionError("the supervisor closed the fd channel before sending listeners")
        header += part
    expected = int.from_bytes(header, "big")
    fds: list[int] = []
    while len(fds) < expected:
        data, received, _flags, _addr = socket.recv_fds(channel, 1, MAX_FDS_PER_MESSAGE)
        if not data:
            raise ConnectionError(f"received {len(fds)} of {expected} listener fds")
        for fd in received:
            # recv_fds ignores MSG_CMSG_CLOEXEC on 3.11: set it ourselves.
            os.set_inheritable(fd, False)
        fds.extend(received)
    return fds
