"""Every file descriptor that crosses from one of graceful's processes to another.

Descriptors travel as ``SCM_RIGHTS`` ancillary data (``socket.send_fds``) on unix
sockets, in two framings, one per kind of link:

* **a worker's fd channel** (a stream socket pair): the listeners, at a worker's
  start followed by its vitals page (:mod:`graceful.wire.vitals`), and again
  (the listeners alone) before it resumes. :func:`send_all` sends their count first, then
  the descriptors in as many messages as ``SCM_MAX_FD`` requires;
  :func:`receive_all` reads them all back.
* **a datagram link** (``SOCK_SEQPACKET``): one message with its descriptors.
  The supervisor hands a template the two channels of each worker it forks
  (:mod:`graceful.spawn.template`), and the orphan guard a pidfd of each worker
  (:mod:`graceful.spawn.guard`): :func:`send_with` and :func:`receive_with`.

The guard's program imports nothing of graceful (:mod:`graceful.child.guard`):
it receives its pidfds with the same framing, written there again.

Whatever is received is made non-inheritable: ``socket.recv_fds`` ignores
``MSG_CMSG_CLOEXEC`` on Python 3.11.
"""

from __future__ import annotations

import os
import socket

#: SCM_MAX_FD on Linux: one ``sendmsg`` carries at most this many descriptors.
MAX_FDS_PER_MESSAGE = 253


def send_all(channel: socket.socket, fds: list[int]) -> None:
    """Send ``fds`` over the stream ``channel``: their count, as 4 bytes, then the
    descriptors in as many messages as ``SCM_MAX_FD`` requires."""
    channel.sendall(len(fds).to_bytes(4, "big"))
    for start in range(0, len(fds), MAX_FDS_PER_MESSAGE):
        chunk = fds[start : start + MAX_FDS_PER_MESSAGE]
        socket.send_fds(channel, [b"F"], chunk)


def receive_all(channel: socket.socket) -> list[int]:
    """Receive the descriptors :func:`send_all` sent.

    Raises:
        ConnectionError: if the channel closes before every descriptor arrived, or
            this process had no room for them (its descriptor limit).
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
        data, received, flags, _addr = socket.recv_fds(channel, 1, MAX_FDS_PER_MESSAGE)
        _not_inherited(received)
        fds.extend(received)
        if flags & socket.MSG_CTRUNC:
            raise ConnectionError(
                f"received {len(fds)} of {expected} listener fds: this process's "
                "file descriptor limit is too low"
            )
        if not data:
            raise ConnectionError(f"received {len(fds)} of {expected} listener fds")
    return fds


def send_with(link: socket.socket, message: bytes, fds: list[int]) -> None:
    """Send ``message`` with ``fds`` as one datagram on ``link``; raises what
    ``sendmsg`` raises (``BlockingIOError`` on a full non-blocking link)."""
    socket.send_fds(link, [message], fds)


def receive_with(link: socket.socket, size: int, most: int) -> tuple[bytes, list[int]]:
    """One datagram of at most ``size`` bytes from ``link``, with at most ``most``
    descriptors (fewer if this process had no room for them); ``b""`` at the end
    of the link."""
    data, fds, _flags, _addr = socket.recv_fds(link, size, most)
    _not_inherited(fds)
    return data, fds


def _not_inherited(fds: list[int]) -> None:
    for fd in fds:
        os.set_inheritable(fd, False)
