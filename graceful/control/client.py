"""The client of the control socket: what ``graceful reload --wait``, ``status``,
``scale`` and ``stop`` run (the protocol: :mod:`graceful.control.protocol`)."""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from graceful.base.errors import GracefulError
from graceful.control.pidfile import supervisor_pidfd
from graceful.control.protocol import control_path, encode, peer_credentials, short_path
from graceful.core.machine import ReloadOutcome


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

    def upgrade(
        self,
        *,
        wait: bool = True,
        through_probation: bool = False,
        timeout: float | None = None,
    ) -> tuple[bool, str]:
        """Ask the supervisor to hand the service to a successor supervisor started
        from the release and configuration on disk now (``graceful upgrade``; see
        :mod:`graceful.supervisor.upgrade`). Returns whether it succeeded, and one
        line saying what happened: at once without ``wait`` (``"requested"``), else
        once the successor serves or failed, and with ``through_probation``, once its
        probation has ended. A refusal is returned at once.

        Raises:
            TimeoutError: after ``timeout`` seconds (the upgrade goes on).
        """
        answer = self.request("upgrade", wait=wait, timeout=timeout, probation=through_probation)
        return bool(answer.get("ok", False)), str(answer.get("upgrade", answer.get("error")))

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
            with short_path(path) as address:
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
            sock.sendall(encode(command=command, wait=wait, **fields))
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
