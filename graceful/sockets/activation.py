"""systemd socket activation: the listeners systemd passed in, written by hand (tiny).

``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` describe descriptors 3, 4, ...
that systemd passed in. They are read once, checked, set close-on-exec, and removed
from the environment, so that workers never see them. (sd_notify is
:mod:`graceful.supervisor.systemd`.)
"""

from __future__ import annotations

import fcntl
import os
import stat
from dataclasses import dataclass

from graceful.base.errors import ConfigError

#: SD_LISTEN_FDS_START: the first descriptor systemd passes.
LISTEN_FDS_START = 3
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


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
