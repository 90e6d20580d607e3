"""systemd: the sd_notify protocol, written by hand (it is tiny).

sd_notify: when ``NOTIFY_SOCKET`` is set, the supervisor sends newline-separated
``KEY=VALUE`` datagrams to it. A path that starts with ``@`` names a socket in
the Linux abstract namespace. graceful sends:

* ``EXTEND_TIMEOUT_USEC=`` when a generation starts, so that a slow start within
  ``ready_timeout`` is not cut short by ``TimeoutStartSec``;
* ``READY=1`` once generation 1 is ready;
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` when a reload starts, and ``READY=1``
  when it ends, whether it succeeded or failed (``STATUS=`` says which). This is
  what ``Type=notify-reload`` needs: ``systemctl reload`` returns when the new
  code serves or the reload failed without harm;
* ``STOPPING=1`` at shutdown;
* ``STATUS=`` with every change: the generation, its workers, the last reload.

Socket activation (the listeners systemd passes in) is :mod:`graceful.sockets.activation`.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time

import anyio

from graceful.core.machine import Announce, Phase

logger = logging.getLogger("graceful")

#: The longest start or reload systemd is told to wait for, in seconds (a
#: ready_timeout of days is allowed, but EXTEND_TIMEOUT_USEC must stay a sane number).
_MAX_EXTEND = 365 * 24 * 3600.0


class Notifier:
    """Sends sd_notify messages to ``NOTIFY_SOCKET``, or does nothing if it is unset.

    It never blocks: the socket is non-blocking and connected, so a reader that
    falls behind (a full queue) makes a send fail with ``EAGAIN`` instead of putting
    the supervisor to sleep. Messages it cannot send yet wait, in order, at most
    :data:`MAX_PENDING` of them (the oldest go first), for :meth:`run` to send once
    the socket is writable again. A failed send is logged once and never stops the
    service.
    """

    def __init__(self, address: str | None) -> None:
        self._address: str | None = None
        self._socket: socket.socket | None = None
        self._warned = False
        self._pending: collections.deque[bytes] = collections.deque()
        self._wake: anyio.Event | None = None
        #: the ``NOTIFY_SOCKET`` value, as read (a successor supervisor is given it)
        self.address = address
        #: announcements are not sent: another supervisor is the service's main
        #: process (an upgrade; see :mod:`graceful.supervisor.upgrade`)
        self.muted = False
        if not address:
            return
        if address.startswith("@"):
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            logger.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying", address)
            return
        self._address = address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setblocking(False)

    @classmethod
    def from_environment(cls) -> Notifier:
        """Read ``NOTIFY_SOCKET`` and remove it from the environment (workers must not
        notify: systemd accepts messages from the main process only)."""
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: str | int) -> None:
        """Send one message, ``KEY=VALUE`` per line, in the order given: now, or once
        the messages before it are sent."""
        if self._socket is None or self._address is None:
            return
        # A value is one line: a newline in it would smuggle in a field of its own.
        message = "\n".join(
            f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()
        )
        self._pending.append(message.encode("utf-8", "backslashreplace"))
        while len(self._pending) > MAX_PENDING:
            self._pending.popleft()
            self._warn(
                f"more than {MAX_PENDING} messages wait (the reader is stuck?); dropping the oldest"
            )
        self._flush()
        if self._pending and self._wake is not None:
            self._wake.set()

    def _flush(self) -> None:
        """Send what waits, in order, until the socket would block."""
        while self._pending:
            try:
                self._send_one(self._pending[0])
            except BlockingIOError:
                return
            except OSError as exc:
                self._warn(exc.strerror or str(exc))
            self._pending.popleft()

    def _send_one(self, data: bytes) -> None:
        assert self._socket is not None
        assert self._address is not None
        try:
            self._socket.send(data)
        except (BlockingIOError, InterruptedError):
            raise BlockingIOError from None
        except OSError:
            # not connected yet, or the manager made its socket anew: connect again
            self._socket.connect(self._address)
            self._socket.send(data)

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("cannot notify systemd at %s: %s", self._address, why)

    async def run(self) -> None:
        """Send what could not be sent at once, as the socket becomes writable again;
        for the supervisor's life (cancelled at its end)."""
        if self._socket is None:
            return
        while True:
            self._wake = anyio.Event()
            if not self._pending:
                await self._wake.wait()
            if self._pending:
                await anyio.wait_writable(self._socket)
                self._flush()

    def announce(self, announce: Announce) -> None:
        """Send what the supervisor's state machine announced (see the module
        docstring for the fields), unless :attr:`muted`."""
        if not self.muted:
            self.send(**notification(announce))

    def become_main(self, status: str) -> None:
        """Tell the service manager that this process is the service's main process
        now, and ready (``MAINPID=`` needs ``NotifyAccess=all``), and stop being
        :attr:`muted`."""
        self.muted = False
        self.send(MAINPID=os.getpid(), READY=1, STATUS=status)

    def close(self) -> None:
        if self._socket is not None:
            self._flush()  # what can still go without waiting
            if self._pending:
                logger.warning(
                    "%d sd_notify messages were not delivered: the reader at %s did not read them",
                    len(self._pending),
                    self._address,
                )
            self._socket.close()
            self._socket = None


#: The most sd_notify messages that wait for a reader that fell behind.
MAX_PENDING = 64


def notification(announce: Announce) -> dict[str, str | int]:
    """The sd_notify fields for ``announce``, in the order they are sent."""
    fields: dict[str, str | int] = {}
    if announce.phase is Phase.READY:
        fields["READY"] = 1
    elif announce.phase is Phase.RELOADING:
        fields["RELOADING"] = 1
        fields["MONOTONIC_USEC"] = monotonic_usec()
    elif announce.phase is Phase.STOPPING:
        fields["STOPPING"] = 1
    if announce.extend is not None:
        fields["EXTEND_TIMEOUT_USEC"] = int(min(announce.extend, _MAX_EXTEND) * 1_000_000)
    fields["STATUS"] = announce.status
    return fields


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC=`` wants it."""
    return time.monotonic_ns() // 1000
