"""The supervisor's control socket: ``graceful reload --wait``, ``status``, ``scale`` and ``stop``.

Where it is
-----------
A supervisor with a PID file listens on a unix socket beside it,
``.NAME.graceful-control`` for PID file ``NAME``, created with mode 0600. The
client finds the supervisor through the PID file (which it checks as ``reload``
and ``stop`` always did), connects, and checks with ``SO_PEERCRED`` that the
process listening is that supervisor. The supervisor checks its peer the same way:
only its own user and root may use the socket; anyone else gets one line saying
so, and nothing changes.

Wire format, version 1
----------------------
Line-delimited JSON, UTF-8, one object per line. The client sends one request and
reads answers until the connection closes:

* ``{"graceful": 1, "command": "status"}`` is answered with
  ``{"graceful": 1, "ok": true, "status": {...}}`` (see :func:`status_of`).
* ``{"graceful": 1, "command": "reload", "wait": false}``: ``{"ok": true,
  "reload": "requested"}`` at once. With ``"wait": true``, the answer comes when the
  reload that runs code read after the request has ended:
  ``{"ok": true|false, "reload": {"generation", "outcome", "cause", "seconds"}}``,
  ``outcome`` being ``"serving"`` or ``"failed"``; a reload asked for while the
  service stops fails with the cause ``"the service is stopping"``.
  With ``"probation": true`` as well, the answer waits until the new generation's
  probation has ended: ``outcome`` is then ``"rolled back"`` if it was, and
  ``probation`` says how the probation ended (see :meth:`Control.reload`).
* ``{"graceful": 1, "command": "rollback"}``: rolls back the generation on
  probation; answered once the parked generation serves again with
  ``{"ok": true, "rollback": "generation 4 serves again ..."}``, or with ``"ok":
  false`` and why not (nothing parked, the rollback failed).
* ``{"graceful": 1, "command": "scale", "workers": N}``: N workers per
  generation, answered once the workers it takes were started or told to drain,
  with ``{"ok": true, "scale": "scaling from 2 to 4 workers"}``, or ``"ok": false``
  and why not.
* ``{"graceful": 1, "command": "stop", "wait": false}``: ``{"ok": true, "stop":
  "requested", "pid": P}``. With ``"wait": true``, a second line, ``{"ok": true,
  "exited": STATUS}``, comes as the supervisor exits, after its clean-up.
* Anything else, including a request longer than 4 KiB or slower than 5 s, gets
  ``{"graceful": 1, "ok": false, "error": "..."}``, one line that says why.

Every answer carries ``"graceful": 1``. A later version adds fields; a client
ignores the fields it does not know.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskGroup

from ._decisions import ReloadOutcome, RollbackEnded, ScaleEnded
from ._errors import ConfigError, GracefulError
from ._logging import logger
from ._pidfile import open_directory, supervisor_pidfd
from ._tasks import BoundedReaders, connection_limit, serve_connections

PROTOCOL_VERSION = 1
#: The longest request line read, in bytes.
MAX_REQUEST_BYTES = 4096
#: How long a client may take to send its request, in seconds.
REQUEST_TIMEOUT = 5.0
#: At most this many control connections wait for their request at once (``--wait``
#: clients, which only wait for an answer, do not count); a new one closes the oldest.
MAX_CONNECTIONS = 32
#: At most this many control connections are open at once, waiting for an answer
#: included (fewer under a low descriptor limit: see ``connection_limit``); more wait
#: in the socket's backlog, where clients retry within their timeout.
MAX_OPEN_CONNECTIONS = 128
#: ``struct ucred``: pid, uid, gid.
_UCRED = struct.Struct("3i")


def control_path(pid_file: str | os.PathLike[str]) -> str:
    """Where the supervisor with PID file ``pid_file`` listens."""
    directory, name = os.path.split(os.path.abspath(os.fspath(pid_file)))
    return os.path.join(directory, f".{name}.graceful-control")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of unix socket ``sock``."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


@dataclass
class ControlSocket:
    """The supervisor's listening control socket, and the file it made."""

    path: str
    sock: socket.socket
    #: (st_dev, st_ino) of the socket file this process bound
    identity: tuple[int, int]
    #: its directory, held open (see :func:`graceful._pidfile.open_directory`)
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
            with _short_path(path) as address:
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
            with _short_path(path) as address:
                probe.connect(address)
        except OSError:
            return False
    return True


#: sun_path holds 108 bytes with its terminating NUL.
_MAX_SOCKET_PATH = 107


def _connect_retrying(sock: socket.socket, address: str, deadline: float | None) -> None:
    """Connect ``sock`` to ``address``; while the supervisor's backlog is full (a
    busy supervisor: ``EAGAIN``), try again until ``deadline`` (monotonic; None: for
    ever).

    Raises:
        TimeoutError: once ``deadline`` has passed.
        OSError: for any other failure.
    """
    pause = 0.005
    while True:
        try:
            sock.connect(address)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() + pause >= deadline:
                raise TimeoutError("the supervisor's control socket stayed busy") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def _refused_by_mode(path: str) -> str:
    """What a user that may not open the control socket at ``path`` is told."""
    uid = os.geteuid()
    try:
        owner: int | None = os.stat(path).st_uid
    except OSError:
        owner = None
    only = f"only uid {owner} and root may" if owner is not None else "only its owner may"
    return f"refused: uid {uid} may not control this supervisor ({only}; {path} is mode 0600)"


@contextlib.contextmanager
def _short_path(path: str) -> Iterator[str]:
    """``path``, or, where it is too long for a unix socket address, the same file
    reached through an ``O_PATH`` descriptor of its directory (``/proc/self/fd/N/``)."""
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        short = f"/proc/self/fd/{fd}/{name}"
        if len(os.fsencode(short)) > _MAX_SOCKET_PATH:
            raise OSError(f"the file name {name!r} is too long for a unix socket")
        yield short
    finally:
        os.close(fd)


@dataclass
class ReloadWaiter:
    """One ``reload --wait`` (or ``rollback``) request, until what answers it ends."""

    done: anyio.Event = field(default_factory=anyio.Event)
    result: ReloadOutcome | RollbackEnded | ScaleEnded | str | None = None
    #: wait until the promoted generation's probation has ended too
    through_probation: bool = False
    #: how the reload ended, while its probation goes on
    promoted: ReloadOutcome | None = None

    def resolve(self, result: ReloadOutcome | RollbackEnded | ScaleEnded | str) -> None:
        if self.result is None:
            self.result = result
            self.done.set()

    def resolve_probation(self, outcome: str, detail: str) -> None:
        """The promoted generation's probation ended: ``outcome`` and ``detail`` as in
        :class:`~graceful._decisions.ProbationEnded`."""
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


class ControlServer:
    """Serves the control socket inside the supervisor's event loop.

    ``supervisor`` is the :class:`~graceful._supervisor_loop.SupervisorLoop` (typed
    loosely to keep the import one-way): it supplies ``status()``,
    ``request_reload(wait)`` and ``request_stop()``.
    """

    def __init__(self, sock: socket.socket, supervisor: Any) -> None:
        self.sock = sock
        self.supervisor = supervisor
        self.allowed_uids = {os.geteuid(), 0}
        #: connections of ``stop --wait`` clients, told the exit status at the end
        self.exit_waiters: list[socket.socket] = []
        #: connections whose request was being read or carried out as the supervisor
        #: ended, with what arrived of it (see last_words)
        self._unfinished: list[tuple[socket.socket, bytes]] = []
        self._open = connection_limit(MAX_OPEN_CONNECTIONS)
        self._readers = BoundedReaders.within(self._open, MAX_CONNECTIONS)

    async def serve(self, tasks: TaskGroup) -> None:
        """Serve connections in ``tasks`` until cancelled."""
        await serve_connections(
            self.sock,
            tasks,
            self._handle,
            "control socket",
            limit=self._open,
        )

    async def _handle(self, stream: SocketStream) -> None:
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
            await _answer(stream, ok=False, error=f"'wait' must be true or false, not {wait!r}")
            return False
        if command == "status":
            await _answer(stream, ok=True, status=self.supervisor.status())
        elif command == "reload":
            through_probation = request.get("probation", False)
            if not isinstance(through_probation, bool):
                await _answer(
                    stream,
                    ok=False,
                    error=f"'probation' must be true or false, not {through_probation!r}",
                )
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
            if not await _done_or_gone(stream, waiter.done):
                return False
            ended = waiter.result
            assert isinstance(ended, RollbackEnded), ended
            await _answer(stream, ok=ended.ok, rollback=ended.detail)
        elif command == "scale":
            workers = request.get("workers")
            if not isinstance(workers, int) or isinstance(workers, bool):
                await _answer(
                    stream, ok=False, error=f"'workers' must be a whole number, not {workers!r}"
                )
                return False
            waiter = self.supervisor.request_scale(workers)
            if not await _done_or_gone(stream, waiter.done):
                return False
            scaled = waiter.result
            assert isinstance(scaled, ScaleEnded), scaled
            await _answer(stream, ok=scaled.ok, scale=scaled.detail)
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
                    conn.send(_encode(ok=True, stop="requested", pid=os.getpid()))
                    if request.get("wait") is True:
                        self.exit_waiters.append(conn.dup())
                else:
                    conn.send(_encode(ok=False, error="the supervisor is exiting"))

    def tell_exit(self, code: int) -> None:
        """Tell every ``stop --wait`` client the exit status, and let them go."""
        line = _encode(ok=True, exited=code)
        for waiter in self.exit_waiters:
            with contextlib.suppress(OSError):
                # never waits: a waiting client has read everything it was sent
                waiter.send(line, socket.MSG_DONTWAIT)
            waiter.close()
        self.exit_waiters.clear()


def _outcome(outcome: ReloadOutcome) -> dict[str, Any]:
    return {
        "generation": outcome.generation,
        "outcome": outcome.outcome,
        "cause": outcome.cause,
        "seconds": round(outcome.seconds, 6),
        "probation": outcome.probation,
    }


def _encode(**fields: Any) -> bytes:
    return (json.dumps({"graceful": PROTOCOL_VERSION, **fields}) + "\n").encode()


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
        await stream.send(_encode(**fields))


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


# --- the client ------------------------------------------------------------------------


class NoControlSocket(GracefulError):
    """The supervisor named by the PID file has no control socket."""


class Control:
    """Steer the supervisor named by a PID file, from a deploy script or a program.

    Every method raises :class:`graceful.GracefulError` with a one-line message if
    the supervisor cannot be found or reached (no PID file, a stale one, a process
    that is not a graceful supervisor, a socket that another process serves) or
    refuses the request.
    """

    def __init__(self, pid_file: str | os.PathLike[str]) -> None:
        self.pid_file = os.fspath(pid_file)

    def reload(
        self, *, timeout: float | None = None, through_probation: bool = False
    ) -> ReloadOutcome:
        """Ask for a reload and wait until the reload that runs code read after this
        call has ended; return how it ended (``outcome`` is ``"serving"`` or
        ``"failed"``, with ``cause``).

        With ``through_probation``, wait until the new generation's probation has
        ended too: ``outcome`` is then ``"rolled back"`` (with ``cause``) if it was
        rolled back, and ``probation`` says how the probation ended (``"passed"``,
        ``"rolled back"``, ``"cut short"`` by a newer reload, ``"rollback failed"``
        or ``"stopped"``; None if there was no probation).

        Raises:
            TimeoutError: after ``timeout`` seconds (the reload goes on).
        """
        answer = self.request("reload", wait=True, timeout=timeout, probation=through_probation)
        reload = answer.get("reload")
        if not isinstance(reload, dict):
            raise GracefulError(f"unexpected answer from the supervisor: {answer}")
        probation = reload.get("probation")
        return ReloadOutcome(
            generation=int(reload.get("generation") or 0),  # 0: it never started
            outcome=str(reload.get("outcome")),
            cause=None if reload.get("cause") is None else str(reload.get("cause")),
            seconds=float(reload.get("seconds") or 0.0),
            probation=None if probation is None else str(probation),
        )

    def rollback(self, *, timeout: float | None = None) -> str:
        """Roll back the generation on probation: the parked previous generation
        serves again. Returns once it does, with one line saying so.

        Raises:
            GracefulError: one line, if there is nothing to roll back to (no
                generation on probation) or the rollback failed.
            TimeoutError: after ``timeout`` seconds (the rollback goes on).
        """
        answer = self.request("rollback", timeout=timeout)
        detail = str(answer.get("rollback"))
        if not answer.get("ok", False):
            raise GracefulError(detail)
        return detail

    def scale(self, workers: int, *, timeout: float | None = 10.0) -> str:
        """Ask for ``workers`` workers per generation (as SIGTTIN and SIGTTOU do one at
        a time). Returns one line once the supervisor has started or told to drain
        the workers it takes; their progress shows in :meth:`status`.

        Raises:
            GracefulError: one line, if the supervisor refused (fewer than 1 worker,
                more than the descriptor limit allows, a stop or a rollback under
                way, or code on disk that was rolled back).
        """
        answer = self.request("scale", timeout=timeout, workers=workers)
        detail = str(answer.get("scale", answer.get("error")))
        if not answer.get("ok", False):
            raise GracefulError(detail)
        return detail

    def status(self, *, timeout: float | None = 10.0) -> dict[str, Any]:
        """The supervisor's state, as ``graceful status --json`` prints it."""
        status = self.request("status", timeout=timeout).get("status")
        if not isinstance(status, dict):
            raise GracefulError("unexpected answer from the supervisor to 'status'")
        return status

    def stop(self, *, timeout: float | None = None) -> int:
        """Ask for a stop and wait until the supervisor has exited; return its exit
        status.

        Raises:
            TimeoutError: after ``timeout`` seconds (the stop goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pid, pidfd = supervisor_pidfd(self.pid_file)
        try:
            answer = self.request(
                "stop", wait=True, timeout=timeout, on_answer=lambda a: "exited" in a
            )
            if "exited" not in answer:
                raise GracefulError("the supervisor closed the connection before it exited")
            _wait_for_exit(pid, pidfd, deadline)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return int(answer["exited"])

    def _connect(self, timeout: float | None) -> tuple[socket.socket, int]:
        pid, pidfd = supervisor_pidfd(self.pid_file)
        if pidfd is not None:
            os.close(pidfd)
        path = control_path(self.pid_file)
        deadline = None if timeout is None else time.monotonic() + timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            with _short_path(path) as address:
                _connect_retrying(sock, address, deadline)
        except FileNotFoundError:
            sock.close()
            raise NoControlSocket(
                f"supervisor {pid} has no control socket at {path!r} "
                "(a graceful older than the control socket?)"
            ) from None
        except PermissionError:
            sock.close()
            raise GracefulError(_refused_by_mode(path)) from None
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise GracefulError(f"cannot connect to {path!r}: {exc.strerror or exc}") from None
        server_pid, _, _ = peer_credentials(sock)
        if server_pid != pid:
            sock.close()
            raise GracefulError(
                f"{path!r} is served by process {server_pid}, not by supervisor {pid}: "
                "refusing to talk to it"
            )
        return sock, pid

    def request(
        self,
        command: str,
        *,
        wait: bool = False,
        timeout: float | None = None,
        on_answer: Callable[[dict[str, Any]], bool] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Send ``command`` (with ``fields``) and return the last answer (the first
        one, if ``on_answer`` says to stop by returning True). ``timeout`` bounds the
        whole exchange.

        Raises:
            GracefulError: one line, if the supervisor cannot be reached or refuses.
            TimeoutError: when ``timeout`` passes first.
        """
        try:
            return self._exchange(command, wait, timeout, on_answer, fields)
        except TimeoutError:
            raise
        except OSError as exc:
            raise GracefulError(
                f"the control connection to the supervisor of {self.pid_file!r} failed: "
                f"{exc.strerror or exc}"
            ) from None

    def _exchange(
        self,
        command: str,
        wait: bool,
        timeout: float | None,
        on_answer: Callable[[dict[str, Any]], bool] | None,
        fields: dict[str, Any],
    ) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        sock, _ = self._connect(timeout)
        with sock:
            sock.sendall(_encode(command=command, wait=wait, **fields))
            buffer = b""
            last: dict[str, Any] | None = None
            while True:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    sock.settimeout(left)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    raise TimeoutError from None
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    last = _decode_answer(line)
                    if on_answer is not None and on_answer(last):
                        return last
        if last is None:
            raise GracefulError("the supervisor closed the control connection without answering")
        if not last.get("ok", False) and "error" in last:
            raise GracefulError(str(last["error"]))
        return last


def _decode_answer(line: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(line)
    except ValueError:
        raise GracefulError(f"unreadable answer from the supervisor: {line[:60]!r}") from None
    if not isinstance(answer, dict):
        raise GracefulError(f"unreadable answer from the supervisor: {line[:60]!r}")
    return answer


def _wait_for_exit(pid: int, pidfd: int | None, deadline: float | None) -> None:
    """Wait until process ``pid`` (whose pidfd, if any, is ``pidfd``) is gone."""
    while True:
        if pidfd is not None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if select.select([pidfd], [], [], left)[0]:
                return
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
            time.sleep(0.02)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError
