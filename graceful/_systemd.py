"""systemd: the sd_notify protocol and socket activation, written by hand (both are tiny).

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

Socket activation: ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` describe
descriptors 3, 4, ... that systemd passed in. They are read once, checked, set
close-on-exec, and removed from the environment, so that workers never see them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
import time
from dataclasses import dataclass

from ._decisions import Announce, Phase
from ._errors import ConfigError

logger = logging.getLogger("graceful")

#: The longest start or reload systemd is told to wait for, in seconds (a
#: ready_timeout of days is allowed, but EXTEND_TIMEOUT_USEC must stay a sane number).
_MAX_EXTEND = 365 * 24 * 3600.0

#: SD_LISTEN_FDS_START: the first descriptor systemd passes.
LISTEN_FDS_START = 3
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class Notifier:
    """Sends sd_notify messages to ``NOTIFY_SOCKET``, or does nothing if it is unset.

    A failed send is logged once and never stops the service.
    """

    def __init__(self, address: str | None) -> None:
        self._address: str | None = None
        self._socket: socket.socket | None = None
        self._warned = False
        if not address:
            return
        if address.startswith("@"):
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            logger.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying", address)
            return
        self._address = address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environment(cls) -> Notifier:
        """Read ``NOTIFY_SOCKET`` and remove it from the environment (workers must not
        notify: systemd accepts messages from the main process only)."""
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: str | int) -> None:
        """Send one message, ``KEY=VALUE`` per line, in the order given."""
        if self._socket is None or self._address is None:
            return
        # A value is one line: a newline in it would smuggle in a field of its own.
        message = "\n".join(
            f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()
        )
        try:
            self._socket.sendto(message.encode("utf-8", "backslashreplace"), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                logger.warning("cannot notify systemd at %s: %s", self._address, exc.strerror)

    def announce(self, announce: Announce) -> None:
        """Send what the supervisor's state machine announced (see the module
        docstring for the fields)."""
        self.send(**notification(announce))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


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


@dataclass(frozen=True)
class ActivatedSocket:
    fd: int
    name: str


_activated: list[ActivatedSocket] | None = None


def activated_sockets() -> list[ActivatedSocket]:
    """The sockets systemd passed to this process (read once, then remembered).

    Raises:
        ConfigError: if ``LISTEN_FDS`` is missing or malformed, ``LISTEN_PID`` names
            another process, or a passed descriptor is not a socket.
    """
    global _activated  # noqa: PLW0603 - the environment can be read only once
    if _activated is not None:
        return _activated
    count_text = os.environ.get("LISTEN_FDS")
    pid_text = os.environ.get("LISTEN_PID")
    names_text = os.environ.get("LISTEN_FDNAMES")
    if count_text is None:
        raise ConfigError(
            "listen spec 'systemd' needs socket activation, but LISTEN_FDS is not set "
            "(start the service from a .socket unit or systemd-socket-activate)"
        )
    if pid_text is None or not pid_text.isdecimal() or int(pid_text) != os.getpid():
        raise ConfigError(
            f"LISTEN_PID={pid_text!r} does not name this process ({os.getpid()}): the "
            "sockets were passed to another process"
        )
    if not count_text.isdecimal() or int(count_text) < 1:
        raise ConfigError(f"LISTEN_FDS={count_text!r} is not a positive number")
    count = int(count_text)
    names = names_text.split(":") if names_text else []
    if names and len(names) != count:
        raise ConfigError(f"LISTEN_FDNAMES has {len(names)} names for LISTEN_FDS={count}")
    found = []
    for index in range(count):
        fd = LISTEN_FDS_START + index
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            raise ConfigError(f"systemd passed fd {fd}, but it is not open") from None
        if not stat.S_ISSOCK(mode):
            raise ConfigError(f"systemd passed fd {fd}, but it is not a socket")
        flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        found.append(ActivatedSocket(fd, names[index] if names else "unknown"))
    for variable in _ACTIVATION_VARIABLES:
        os.environ.pop(variable, None)
    _activated = found
    return found


def sockets_named(name: str | None) -> list[ActivatedSocket]:
    """The activated sockets for ``systemd`` (``name`` None: all) or ``systemd:NAME``.

    Raises:
        ConfigError: if no passed socket has that name (the names passed are listed).
    """
    every = activated_sockets()
    if name is None:
        return every
    chosen = [sock for sock in every if sock.name == name]
    if not chosen:
        passed = ", ".join(sorted({sock.name for sock in every})) or "none"
        raise ConfigError(
            f"listen spec 'systemd:{name}': systemd passed no socket named {name!r} "
            f"(names passed: {passed}; set FileDescriptorName= in the .socket unit)"
        )
    return chosen
