"""The supervisor's control socket: ``graceful reload --wait``, ``status``, ``scale``,
``upgrade`` and ``stop``.

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
* ``{"graceful": 1, "command": "upgrade", "wait": false}``: upgrades the supervisor
  itself (:mod:`graceful.supervisor.upgrade`): ``{"ok": true, "upgrade":
  "requested"}`` at once. With ``"wait": true``, answered once the successor serves
  and this supervisor has handed over, ``{"ok": true, "upgrade": "successor 4711
  (graceful 0.3.0, Python 3.12.8) serving; ..."}``, or with ``"ok": false`` and the
  cause (refused, or the successor failed). With ``"probation": true`` as well, the
  answer waits until the successor's probation has ended (``"ok": false`` if the
  upgrade was rolled back). A refusal is answered at once, whatever ``wait`` says.
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
import socket
import struct
from collections.abc import Iterator
from typing import Any

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


#: sun_path holds 108 bytes with its terminating NUL.
_MAX_SOCKET_PATH = 107


@contextlib.contextmanager
def short_path(path: str) -> Iterator[str]:
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


def encode(**fields: Any) -> bytes:
    return (json.dumps({"graceful": PROTOCOL_VERSION, **fields}) + "\n").encode()
