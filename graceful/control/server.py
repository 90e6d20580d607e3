"""The supervisor's side of the control socket: it listens, checks its peers and
answers (the protocol: :mod:`graceful.control.protocol`)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anyio
from anyio.abc import SocketStream

from graceful.base.errors import ConfigError
from graceful.base.log import logger
from graceful.base.tasks import ConnectionServer
from graceful.control.pidfile import open_directory
from graceful.control.protocol import (
    MAX_CONNECTIONS,
    MAX_OPEN_CONNECTIONS,
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    REQUEST_TIMEOUT,
    encode,
    peer_credentials,
    short_path,
)
from graceful.core.machine import ReloadOutcome, RollbackEnded, ScaleEnded
from graceful.core.snapshot import Snapshot

#: The :attr:`ControlSocket.identity` of a socket whose file this process leaves to
#: another (an upgrade's other supervisor): no file has it, so none is removed.
DISOWNED = (-1, -1)


@dataclass
class ControlSocket:
    """The supervisor's listening control socket, and the file it made."""

    path: str
    sock: socket.socket
    #: (st_dev, st_ino) of the socket file this process bound
    identity: tuple[int, int]
    #: its directory, held open (see :func:`graceful.control.pidfile.open_directory`)
    dir_fd: int | None = None

    @classmethod
    def bind(cls, path: str) -> ControlSocket:
        """Bind and listen on ``path``, mode 0600 from the start.

        A socket left at ``path`` by an earlier supervisor of the same PID file (which
        this one has claimed) is replaced, once nothing answers on it. Any other kind
        of file, or a socket something listens on, is left alone.

        Raises:
            ConfigError: one line naming the path.
        """
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ConfigError(
                    f"control socket {path!r} exists and is not a socket; not touching it"
                )
            if _answers(path):
                raise ConfigError(
                    f"control socket {path!r} is in use by another process; not touching it"
                )
            try:
                os.unlink(path)
            except OSError as exc:
                raise ConfigError(
                    f"cannot replace control socket {path!r}: {exc.strerror}"
                ) from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        previous = os.umask(0o177)  # created 0600: no window with wider permissions
        try:
            with short_path(path) as address:
                sock.bind(address)
            info = os.lstat(path)
            os.chmod(path, 0o600)
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot listen on control socket {path!r}: {exc.strerror or exc}"
            ) from None
        finally:
            os.umask(previous)
        sock.setblocking(False)
        return cls(path, sock, (info.st_dev, info.st_ino), open_directory(os.path.dirname(path)))

    def close(self) -> None:
        """Close the socket and remove its file, if it is still the one this process
        made (never another file, nor another process's socket), in the directory it
        was made in, even if that was renamed since."""
        self.sock.close()
        name = os.path.basename(self.path) if self.dir_fd is not None else self.path
        with contextlib.suppress(OSError):
            there = os.lstat(name, dir_fd=self.dir_fd)
            if (there.st_dev, there.st_ino) == self.identity:
                os.unlink(name, dir_fd=self.dir_fd)
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None


def _answers(path: str) -> bool:
    """True if something listens on the unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(1.0)
        try:
            with short_path(path) as address:
                probe.connect(address)
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class UpgradeEnded:
    """How an upgrade (``graceful upgrade``) ended, as far as its request waits:
    ``ok``, and one line saying what happened."""

    ok: bool
    detail: str


@dataclass
class ReloadWaiter:
    """One ``reload --wait`` (or ``rollback``) request, until what answers it ends."""

    done: anyio.Event = field(default_factory=anyio.Event)
    result: ReloadOutcome | RollbackEnded | ScaleEnded | UpgradeEnded | str | None = None
    #: wait until the promoted generation's probation has ended too
    through_probation: bool = False
    #: how the reload ended, while its probation goes on
    promoted: ReloadOutcome | None = None

    def resolve(
        self, result: ReloadOutcome | RollbackEnded | ScaleEnded | UpgradeEnded | str
    ) -> None:
        if self.result is None:
            self.result = result
            self.done.set()

    def resolve_probation(self, outcome: str, detail: str) -> None:
        """The promoted generation's probation ended: ``outcome`` and ``detail`` as in
        :class:`~graceful.core.machine.ProbationEnded`."""
        promoted = self.promoted
        assert promoted is not None, "resolve_probation() before the promotion"
        rolled_back = outcome == "rolled back"
        self.resolve(
            replace(
                promoted,
                outcome="rolled back" if rolled_back else promoted.outcome,
                cause=None if outcome in ("passed", "cut short") else detail,
                probation=outcome,
            )
        )


class Steered(Protocol):
    """What the control socket needs of the supervisor (its loop provides it)."""

    def snapshot(self) -> Snapshot:
        """The supervisor's state now."""
        ...

    def request_reload(self, through_probation: bool = False) -> ReloadWaiter:
        """Ask for a reload; the waiter learns how it ended."""
        ...

    def request_rollback(self, by: str) -> ReloadWaiter:
        """Ask for a rollback; the waiter learns how it ended."""
        ...

    def request_scale(self, workers: int) -> ReloadWaiter:
        """Ask for ``workers`` workers per generation; the waiter learns what was done."""
        ...

    def request_stop(self) -> None:
        """Ask for a stop, as the first SIGTERM does."""
        ...

    def request_upgrade(self, through_probation: bool) -> ReloadWaiter:
        """Ask for an upgrade of the supervisor itself; the waiter learns how it ended."""
        ...


class ControlServer(ConnectionServer):
    """Serves the control socket inside the supervisor's event loop, for
    ``supervisor``."""

    def __init__(self, sock: socket.socket, supervisor: Steered) -> None:
        super().__init__(sock, "control socket", MAX_OPEN_CONNECTIONS, MAX_CONNECTIONS)
        self.supervisor = supervisor
        self.allowed_uids = {os.geteuid(), 0}
        #: connections of ``stop --wait`` clients, told the exit status at the end
        self.exit_waiters: list[socket.socket] = []
        #: connections whose request was being read or carried out as the supervisor
        #: ended, with what arrived of it (see last_words)
        self._unfinished: list[tuple[socket.socket, bytes]] = []
        #: this supervisor serves the socket (not while another one does, in an
        #: upgrade): what waits in its backlog is this supervisor's to answer
        self.serving = True

    async def handle(self, stream: SocketStream) -> None:
        keep_open = False
        raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        #: what arrived of the request so far
        received = bytearray()
        try:
            _, uid, _ = peer_credentials(raw)
            # The request is read before anything is decided: closing with it unread
            # would reset the connection, and the client would never see the answer.
            request: dict[str, Any] | None = None
            problem = ""
            with self._readers.reading() as reading:
                try:
                    request = await _read_request(stream, received)
                except ValueError as exc:
                    problem = str(exc)
            if reading.cancelled_caught:
                return  # a newer connection took its place
            if uid not in self.allowed_uids:
                logger.warning("control socket: refused a request from uid %d", uid)
                await _answer(
                    stream,
                    ok=False,
                    error=f"refused: uid {uid} may not control this supervisor "
                    f"(only uid {os.geteuid()} and root may)",
                )
                return
            if request is None:
                await _answer(stream, ok=False, error=problem)
                return
            keep_open = await self._dispatch(stream, raw, request)
        except anyio.get_cancelled_exc_class():
            # the supervisor is ending: what this client asked for is answered by
            # last_words, from what arrived of its request
            if not keep_open:
                with contextlib.suppress(OSError):
                    self._unfinished.append((raw.dup(), bytes(received)))
            raise
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the client left; nothing it asked for is undone
        except Exception:
            # Whatever a client sends costs that client's connection, never the
            # supervisor.
            logger.exception("control socket: a request failed")
        finally:
            if not keep_open:
                await stream.aclose()

    async def _dispatch(
        self, stream: SocketStream, raw: socket.socket, request: dict[str, Any]
    ) -> bool:
        """Carry out ``request``; True if the connection must outlive this call."""
        command, wait = request.get("command"), request.get("wait", False)
        if not isinstance(wait, bool):
            await _answer(stream, ok=False, error=_not_a_flag("wait", wait))
            return False
        if command == "status":
            await _answer(stream, ok=True, status=self.supervisor.snapshot().as_json())
        elif command == "reload":
            through_probation = request.get("probation", False)
            if not isinstance(through_probation, bool):
                await _answer(stream, ok=False, error=_not_a_flag("probation", through_probation))
                return False
            waiter = self.supervisor.request_reload(through_probation)
            if not wait:
                await _answer(stream, ok=True, reload="requested")
                return False
            if not await _done_or_gone(stream, waiter.done):
                return False
            result = waiter.result
            if isinstance(result, ReloadOutcome):
                await _answer(stream, ok=result.succeeded, reload=_outcome(result))
            else:
                await _answer(
                    stream,
                    ok=False,
                    reload={"generation": None, "outcome": "failed", "cause": result},
                )
        elif command == "rollback":
            waiter = self.supervisor.request_rollback(by="graceful rollback")
            await _answer_when_decided(stream, waiter, "rollback")
        elif command == "scale":
            workers = request.get("workers")
            if not isinstance(workers, int) or isinstance(workers, bool):
                await _answer(
                    stream, ok=False, error=f"'workers' must be a whole number, not {workers!r}"
                )
                return False
            await _answer_when_decided(stream, self.supervisor.request_scale(workers), "scale")
        elif command == "upgrade":
            through_probation = request.get("probation", False)
            if not isinstance(through_probation, bool):
                await _answer(stream, ok=False, error=_not_a_flag("probation", through_probation))
                return False
            waiter = self.supervisor.request_upgrade(through_probation)
            if not wait and waiter.result is None:
                await _answer(stream, ok=True, upgrade="requested")
                return False
            await _answer_when_decided(stream, waiter, "upgrade")
        elif command == "stop":
            self.supervisor.request_stop()
            await _answer(stream, ok=True, stop="requested", pid=os.getpid())
            if wait:
                # answered from run_supervisor once everything is cleaned up
                self.exit_waiters.append(raw.dup())
        else:
            await _answer(stream, ok=False, error=f"unknown command {command!r}")
        return False

    def last_words(self) -> None:
        """Once the supervisor's loop has ended, and before the socket closes: answer
        the connections still waiting in its backlog, without waiting for anything (a
        ``stop --wait`` asked for in the last moments of a stop must not be reset). A
        ``stop`` is answered as requested (and, with ``wait``, told the exit status
        by :meth:`tell_exit`); anything else that the supervisor is exiting."""
        unfinished, self._unfinished = self._unfinished, []
        for conn, received in unfinished:
            self._last_word(conn, received)
        if not self.serving:
            return  # the backlog is the other supervisor's (graceful upgrade)
        for _ in range(MAX_OPEN_CONNECTIONS):
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # nothing more waits (or the socket is closed)
            self._last_word(conn, b"")

    def _last_word(self, conn: socket.socket, received: bytes) -> None:
        """Answer ``conn``, whose request began with ``received``, without waiting."""
        with conn:
            conn.setblocking(False)
            data = received
            with contextlib.suppress(OSError):
                data += conn.recv(MAX_REQUEST_BYTES + 1)
            line, newline, _ = data.partition(b"\n")
            try:
                request = _parse_request(line) if newline else {}
            except ValueError:
                request = {}
            try:
                _, uid, _ = peer_credentials(conn)
            except OSError:
                return
            if uid not in self.allowed_uids:
                request = {}
            with contextlib.suppress(OSError):
                if request.get("command") == "stop":
                    conn.send(encode(ok=True, stop="requested", pid=os.getpid()))
                    if request.get("wait") is True:
                        self.exit_waiters.append(conn.dup())
                else:
                    conn.send(encode(ok=False, error="the supervisor is exiting"))

    def tell_exit(self, code: int) -> None:
        """Tell every ``stop --wait`` client the exit status, and let them go."""
        line = encode(ok=True, exited=code)
        for waiter in self.exit_waiters:
            with contextlib.suppress(OSError):
                # never waits: a waiting client has read everything it was sent
                waiter.send(line, socket.MSG_DONTWAIT)
            waiter.close()
        self.exit_waiters.clear()


def _not_a_flag(name: str, value: object) -> str:
    return f"{name!r} must be true or false, not {value!r}"


def _outcome(outcome: ReloadOutcome) -> dict[str, Any]:
    return {
        "generation": outcome.generation,
        "outcome": outcome.outcome,
        "cause": outcome.cause,
        "seconds": round(outcome.seconds, 6),
        "probation": outcome.probation,
    }


async def _answer_when_decided(stream: SocketStream, waiter: ReloadWaiter, what: str) -> None:
    """Answer a rollback or a scaling request once the supervisor has decided it:
    ``{"ok": ..., what: detail}`` (nothing if the client has gone meanwhile)."""
    if await _done_or_gone(stream, waiter.done):
        decided = waiter.result
        assert isinstance(decided, RollbackEnded | ScaleEnded | UpgradeEnded), decided
        await _answer(stream, ok=decided.ok, **{what: decided.detail})


async def _done_or_gone(stream: SocketStream, done: anyio.Event) -> bool:
    """Wait until ``done`` is set (True), or the client has gone (False: a client
    that left must not keep its connection, and a slot, until then)."""
    gone = False
    async with anyio.create_task_group() as tasks:

        async def until_the_client_leaves() -> None:
            nonlocal gone
            with contextlib.suppress(
                anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
            ):
                while True:
                    await stream.receive()  # (it has nothing more to say: ignored)
            gone = True
            tasks.cancel_scope.cancel()

        tasks.start_soon(until_the_client_leaves)
        await done.wait()
        tasks.cancel_scope.cancel()
    return not gone


async def _answer(stream: SocketStream, **fields: Any) -> None:
    with anyio.fail_after(REQUEST_TIMEOUT):
        await stream.send(encode(**fields))


async def _read_request(stream: SocketStream, received: bytearray) -> dict[str, Any]:
    """Read one request line from ``stream``, keeping what arrives in ``received``.

    Raises:
        ValueError: for anything but a request of this protocol (the text says why).
    """
    ended = False
    with anyio.move_on_after(REQUEST_TIMEOUT):
        while b"\n" not in received and len(received) <= MAX_REQUEST_BYTES:
            try:
                received += await stream.receive(MAX_REQUEST_BYTES + 1 - len(received))
            except anyio.EndOfStream:
                ended = True
                break
    data = bytes(received)
    line, newline, _ = data.partition(b"\n")
    if not newline:
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError(f"request longer than {MAX_REQUEST_BYTES} bytes")
        if ended:
            raise ValueError("the connection ended before a complete request line")
        raise ValueError(f"no complete request line within {REQUEST_TIMEOUT:g}s")
    return _parse_request(line)


def _parse_request(line: bytes) -> dict[str, Any]:
    """The request on ``line`` (without its newline).

    Raises:
        ValueError: if it is not a request of this protocol (the text says why).
    """
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError(f"request is not JSON: {line[:60]!r}") from None
    if not isinstance(request, dict):
        raise ValueError("request is not a JSON object")
    version = request.get("graceful")
    if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
        raise ValueError(
            f"unsupported protocol version {version!r} (this supervisor speaks {PROTOCOL_VERSION})"
        )
    return request
