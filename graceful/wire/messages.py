"""The wire between the supervisor and a worker.

Two channels connect them:

* a control channel for small messages in both directions (worker to supervisor:
  :class:`Hello` first, then :class:`Ready`, :class:`Failed`, :class:`Broken`,
  :class:`Progress`; supervisor to worker:
  :class:`Shutdown`, :class:`Park`, :class:`Resume`). It is
  a ``multiprocessing.Pipe(duplex=True)`` (a unix stream socketpair), on which each
  message is one line of JSON. Each side reads it without blocking, so a peer that
  writes half a message, garbage, or an endless line cannot stall the reader: the
  reader sees a :class:`ProtocolError` at worst. Nothing received is unpickled.
  :func:`pump` bridges a channel into an anyio memory object stream.
* a ``socket.socketpair()``, the *fd channel*, that carries the listeners' file
  descriptors (:mod:`graceful.wire.fds`): at start, and again before each
  :class:`Resume`. It stays open for the worker's life.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from graceful._version import hello_line

#: The longest control message either side accepts, newline included. A ``Failed``
#: cause is cut to fit.
MAX_MESSAGE_BYTES = 4096

#: The most messages one side accepts from the other over the channel's life. A
#: worker sends a few (its Progress, Ready, perhaps Failed), and one Ready more per
#: rollback that resumes it (and perhaps one Broken per turn); anything near this is
#: a flood.
MAX_MESSAGES = 4096

#: The most bytes read per call, so that a peer writing as fast as it can never keeps
#: the reader from its other work.
_READ_SIZE = 16384


#: What the start of every message looks like: ``[`` and printable ASCII.
_MESSAGE_START = re.compile(rb"(\[[\x20-\x7e]*)?")


@dataclass(frozen=True)
class Hello:
    """The first message of every child: the graceful ``version`` and ``protocol`` it
    runs (see ``_version.py``), on which Python (``python``, ``executable``).

    On the wire: ``["hello", {"graceful": ..., "protocol": N, "python": ...,
    "executable": ...}]``, the same in every protocol; keys a supervisor does not
    know are ignored, so later versions may add some.
    """

    graceful: str
    protocol: int
    python: str = "?"
    executable: str = "?"


#: The longest string field of a :class:`Hello` that is kept.
_HELLO_FIELD_CHARS = 300


@dataclass(frozen=True)
class Ready:
    """The worker can take traffic (again, after a :class:`Resume`). ``parkable``:
    its server can be parked and resumed."""

    parkable: bool = False


@dataclass(frozen=True)
class Broken:
    """The app declared this worker broken, because of ``cause`` (one line); it
    goes on running."""

    cause: str


@dataclass(frozen=True)
class Failed:
    """The worker is about to exit because of ``cause`` (one line)."""

    cause: str


#: The milestones a worker reports with :class:`Progress`, in the order they happen
#: (``closed`` comes from a worker of the generation being replaced).
PROGRESS_PHASES = ("interpreter", "graceful", "code", "loop", "closed")


@dataclass(frozen=True)
class Progress:
    """The worker reached milestone ``phase`` (one of :data:`PROGRESS_PHASES`): the
    supervisor times a reload's phases by when these arrive."""

    phase: str


@dataclass(frozen=True)
class Shutdown:
    """Stop accepting, finish in-flight work within ``drain_timeout`` seconds, exit."""

    drain_timeout: float


@dataclass(frozen=True)
class Park:
    """Stop accepting, close the listeners, finish in-flight work within
    ``drain_timeout`` seconds, and then wait, alive, for :class:`Resume` or
    :class:`Shutdown`."""

    drain_timeout: float


@dataclass(frozen=True)
class Resume:
    """Parked: the listeners have been sent again on the fd channel; accept on them
    and report :class:`Ready`."""


@dataclass(frozen=True)
class PeerGone:
    """The channel reached end-of-file: the other process is gone (a worker treats a
    gone supervisor as Shutdown)."""


@dataclass(frozen=True)
class ProtocolError:
    """The peer sent something that is not a control message (``detail`` says what).
    Nothing more is read from that peer."""

    detail: str


Message: TypeAlias = Hello | Ready | Failed | Broken | Progress | Shutdown | Park | Resume
Received: TypeAlias = Message | PeerGone | ProtocolError


class Connection(Protocol):
    """The part of ``multiprocess.connection.Connection`` a channel is made from."""

    def fileno(self) -> int: ...
    def close(self) -> None: ...


def encode(message: Message) -> bytes:
    """One message as the line of JSON that travels on the channel."""
    fields: list[Any]
    if isinstance(message, Hello):
        fields = ["hello", hello_fields(message)]
    elif isinstance(message, Ready):
        fields = ["ready", "parkable"] if message.parkable else ["ready"]
    elif isinstance(message, Failed | Broken):
        # At most 6 bytes per character once escaped: 600 fit in MAX_MESSAGE_BYTES.
        cause = message.cause if len(message.cause) <= 600 else message.cause[:597] + "..."
        fields = ["failed" if isinstance(message, Failed) else "broken", cause]
    elif isinstance(message, Progress):
        fields = ["progress", message.phase]
    elif isinstance(message, Shutdown):
        fields = ["shutdown", message.drain_timeout]
    elif isinstance(message, Park):
        fields = ["park", message.drain_timeout]
    else:
        fields = ["resume"]
    return json.dumps(fields, ensure_ascii=True).encode("ascii") + b"\n"


def decode(line: bytes) -> Message:
    """Turn one received line (without its newline) back into a message.

    Raises:
        ValueError: if ``line`` is not a message of this protocol (the text says why),
            whatever the JSON holds (a number too large for a float, lists nested too
            deep to parse).
    """
    try:
        fields = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"not JSON: {_preview(line)}") from None
    except RecursionError:
        raise ValueError(f"nested too deep: {_preview(line)}") from None
    if isinstance(fields, list) and fields:
        kind = fields[0]
        if kind == "hello" and len(fields) == 2 and isinstance(fields[1], dict):
            return _hello(fields[1], line)
        if kind == "ready" and len(fields) == 1:
            return Ready()
        if kind == "ready" and fields[1:] == ["parkable"]:
            return Ready(parkable=True)
        if kind in ("failed", "broken") and len(fields) == 2 and isinstance(fields[1], str):
            cause = printable(fields[1])
            return Failed(cause) if kind == "failed" else Broken(cause)
        if kind == "progress" and len(fields) == 2 and fields[1] in PROGRESS_PHASES:
            return Progress(fields[1])
        if kind in ("shutdown", "park") and len(fields) == 2 and _is_seconds(fields[1]):
            seconds = float(fields[1])
            return Shutdown(seconds) if kind == "shutdown" else Park(seconds)
        if kind == "resume" and len(fields) == 1:
            return Resume()
    raise ValueError(f"unknown message {_preview(line)}")


def hello_fields(hello: Hello) -> dict[str, Any]:
    """The JSON object of a :class:`Hello` (also written by hand:
    :func:`graceful._version.hello_line`)."""
    return {
        "graceful": hello.graceful,
        "protocol": hello.protocol,
        "python": hello.python,
        "executable": hello.executable[:_HELLO_FIELD_CHARS],
    }


def own_hello() -> Hello:
    """This process's :class:`Hello`: the one the boot entries write by hand."""
    hello = decode(hello_line().rstrip(b"\n"))
    assert isinstance(hello, Hello)
    return hello


def hello_mismatch(fields: object, role: str) -> str | None:
    """For the ``hello`` datagram of a standby or a template (``fields``, its JSON
    object): None if the supervisor can speak to it, else why not, in one line."""
    from graceful._version import mismatch  # noqa: PLC0415 - (imports nothing)

    if not isinstance(fields, dict):
        return f"the {role} sent a malformed hello"
    try:
        hello = _hello(fields, b"")
    except ValueError:
        return f"the {role} sent a hello without a protocol number"
    return mismatch(hello.graceful, hello.protocol, role)


def _hello(fields: dict[str, Any], line: bytes) -> Hello:
    protocol = fields.get("protocol")
    if not isinstance(protocol, int) or isinstance(protocol, bool):
        raise ValueError(f"a hello without a protocol number: {_preview(line)}")

    def text(key: str) -> str:
        value = fields.get(key)
        return printable(value[:_HELLO_FIELD_CHARS]) if isinstance(value, str) else "?"

    return Hello(text("graceful"), protocol, text("python"), text("executable"))


def _is_seconds(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:  # an int too large for a float
        return False


def _preview(data: bytes) -> str:
    return repr(data[:40]) + ("..." if len(data) > 40 else "")


def printable(text: str) -> str:
    """``text`` made safe for one log line and an sd_notify field: control characters
    become spaces, and what UTF-8 cannot encode (lone surrogates) is escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(" " if ord(char) < 32 or ord(char) == 127 else char for char in text)


class ControlChannel:
    """One end of the control channel.

    Made from a ``multiprocess`` Pipe end, whose descriptor it takes over. A worker's
    sends block (messages are tiny, and the supervisor always reads); the supervisor
    sends with :meth:`send_nowait`; receiving never blocks.
    """

    def __init__(self, connection: Connection) -> None:
        self._socket = socket.socket(fileno=os.dup(connection.fileno()))
        connection.close()
        self._buffer = b""
        self._finished = False
        self._messages = 0

    def fileno(self) -> int:
        return self._socket.fileno()

    def send(self, message: Message) -> bool:
        """Send ``message``; return False if the other side is already gone."""
        try:
            self._socket.sendall(encode(message))
        except OSError:
            return False
        return True

    def send_nowait(self, message: Message) -> bool:
        """Send ``message`` without ever waiting (the supervisor's side: no peer may
        block it); return False if the other side is already gone.

        Raises:
            BlockingIOError: if it could not be sent whole because the other side
                does not read its channel (the channel is then of no more use).
        """
        data = encode(message)
        try:
            sent = self._socket.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            raise
        except OSError:
            return False
        if sent != len(data):
            raise BlockingIOError(f"sent {sent} of {len(data)} bytes")
        return True

    def receive_available(self) -> list[Received]:
        """What has arrived, without waiting for more, reading at most one bounded
        chunk (call again while the channel stays readable).

        The list ends with :class:`PeerGone` at end-of-file, or with
        :class:`ProtocolError` when the peer broke the protocol (including sending
        more than :data:`MAX_MESSAGES` messages); after either, this always returns
        an empty list.
        """
        if self._finished:
            return []
        try:
            data = self._socket.recv(_READ_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            self._finished = True
            return [PeerGone()]
        self._buffer += data
        return self._split_lines()

    def receive_all_available(self) -> list[Received]:
        """:meth:`receive_available` until nothing more is there (for the last words
        of a peer that has exited: what it wrote is bounded by the socket buffer)."""
        received: list[Received] = []
        while more := self.receive_available():
            received.extend(more)
        return received

    def _split_lines(self) -> list[Received]:
        *lines, self._buffer = self._buffer.split(b"\n")
        found: list[Received] = []
        for line in lines:
            self._messages += 1
            if self._messages > MAX_MESSAGES:
                return [*found, self._broken(f"more than {MAX_MESSAGES} messages")]
            try:
                found.append(decode(line))
            except ValueError as exc:
                return [*found, self._broken(str(exc))]
        # Every message is a JSON list in printable ASCII: a partial line that is
        # anything else will never become one.
        if len(self._buffer) >= MAX_MESSAGE_BYTES:
            found.append(self._broken(f"a line longer than {MAX_MESSAGE_BYTES} bytes"))
        elif not _MESSAGE_START.fullmatch(self._buffer):
            found.append(self._broken(f"not a message: {_preview(self._buffer)}"))
        return found

    def _broken(self, detail: str) -> ProtocolError:
        self._finished = True
        self._buffer = b""
        return ProtocolError(detail)

    def close(self) -> None:
        self._socket.close()


async def pump(channel: ControlChannel, into: MemoryObjectSendStream[Received]) -> None:
    """Forward everything arriving on ``channel`` into ``into`` (an unbounded stream)
    until end-of-file or a protocol error, which it forwards too.

    The only cancellation point is the wait for the channel to become readable, so a
    cancelled pump never loses a message it had read.
    """
    while True:
        await anyio.wait_readable(channel.fileno())
        for item in channel.receive_available():
            into.send_nowait(item)
            if isinstance(item, PeerGone | ProtocolError):
                return


# --- the JSON messages of a template's or a standby's SOCK_SEQPACKET socket -----------


def send_or_exit(sock: socket.socket, **message: Any) -> None:
    """In a template or a standby: send ``message`` as one JSON datagram to the
    supervisor; exit quietly (status 0) if it is done with this process, or gone."""
    try:
        sock.send(json.dumps(message).encode())
    except OSError:
        raise SystemExit(0) from None


class NotAMessage(ValueError):
    """What a template or a standby sent is not a JSON object (``str()``: a preview)."""


async def receive_object(sock: socket.socket, limit: int) -> dict[str, Any] | None:
    """The next JSON object on the non-blocking SOCK_SEQPACKET socket ``sock`` (at
    most ``limit`` bytes), or None once it has closed. Nothing received is unpickled.

    Raises:
        NotAMessage: for a datagram that is not a JSON object.
    """
    while True:
        await anyio.wait_readable(sock)
        try:
            data = sock.recv(limit)
        except BlockingIOError:
            continue
        except OSError:
            return None
        if not data:
            return None
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise NotAMessage(repr(data[:80]))
        return answer


#: The largest message on a standby's or a template's link (a ``SOCK_SEQPACKET``
#: socket pair), and the largest assignment sent over it.
LINK_MESSAGE_BYTES = 65536
