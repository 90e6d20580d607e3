"""The boot entries: the first code a process graceful spawns runs.

These functions are the *spawn targets*, named by module and function in what a
supervisor sends to every child it spawns. A running supervisor may spawn a child
that imports a newer (or older) graceful from disk, so this module and the
signatures here are part of the contract between versions (``_version.py``): they
never move, and each version keeps taking what earlier ones send.

Each entry does the same first: says ``hello`` (its graceful and protocol
versions, its Python) to the supervisor, then checks that its bootstrap starts
with this version's :data:`~graceful._version.BOOTSTRAP_HEADER`. A bootstrap of
another protocol is not unpickled: the child exits at once, quietly (status 3),
and the supervisor, which read the hello, says in one line which versions met.
Only then is the bootstrap unpickled, which imports graceful's code for the role.

A worker's target is :func:`start_worker`, which imports nothing of graceful's
worker code before it has reported the interpreter up, so the supervisor can
time both (see :mod:`graceful.core.timeline`). A standby's target is :func:`start_standby`,
which takes the service's own directories off ``sys.path`` before it imports
anything (see :mod:`graceful.spawn.standby`); a template's is :func:`start_template`.
A successor supervisor's (``graceful upgrade``) is :func:`start_supervisor`, whose
bootstrap is JSON under the succession contract (``_version.SUCCESSION``), never a
pickle: it is taken from any version.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from graceful._version import BOOTSTRAP_HEADER, hello_datagram, hello_line

#: The exit status of a child whose bootstrap is of another protocol.
WRONG_PROTOCOL_EXIT = 3


def _say_hello(link: Any) -> None:
    try:
        link.send(hello_datagram())
    except OSError:
        os._exit(0)  # the supervisor is done with this process, or gone


#: ``Progress("interpreter")``, likewise by hand.
_INTERPRETER_UP = b'["progress","interpreter"]\n'


def _unwrap(bootstrap: bytes) -> Any:
    """The bootstrap object, unpickled, if it is of this protocol; else exit quietly
    (the supervisor names both versions: it read this child's hello)."""
    if not bootstrap.startswith(BOOTSTRAP_HEADER):
        os._exit(WRONG_PROTOCOL_EXIT)
    # Imported here, after the report, so that the report measures the interpreter
    # alone.
    from multiprocess.reduction import ForkingPickler  # noqa: PLC0415

    return ForkingPickler.loads(bootstrap[len(BOOTSTRAP_HEADER) :])


def wrap(bootstrap: Any) -> bytes:
    """``bootstrap`` as a boot entry takes it: the header, then its pickle."""
    from multiprocess.reduction import ForkingPickler  # noqa: PLC0415

    return BOOTSTRAP_HEADER + bytes(ForkingPickler.dumps(bootstrap))


def start_worker(control: Any, fd_channel: Any, bootstrap: bytes) -> None:
    """The target of a spawned worker: say hello and report the interpreter up, then
    run the worker that ``bootstrap`` (a wrapped
    :class:`~graceful.wire.bootstrap.WorkerBootstrap`) describes, on ``control`` (a
    multiprocess Connection) and ``fd_channel``."""
    os.write(control.fileno(), hello_line() + _INTERPRETER_UP)
    boot = _unwrap(bootstrap)
    from graceful.child.worker import worker_main  # noqa: PLC0415

    worker_main(boot, control, fd_channel)


def start_standby(
    bootstrap: bytes, hidden: list[str], link: Any, control: Any, fd_channel: Any
) -> None:
    """The target of a standby: with the directories ``hidden`` off ``sys.path``,
    import the standby's code and run it (``bootstrap`` is a wrapped
    :class:`~graceful.wire.bootstrap.StandbyBootstrap`). It says hello on its ``link``,
    and on ``control`` too when it has one (it may become a worker)."""
    if control is not None:
        os.write(control.fileno(), hello_line())
    _say_hello(link)
    path = list(sys.path)
    sys.path[:] = [entry for entry in path if os.path.abspath(entry or os.curdir) not in hidden]
    boot = _unwrap(bootstrap)
    from graceful.child.standby import standby_main  # noqa: PLC0415

    standby_main(boot, link, control, fd_channel, sys_path=path)


def start_template(bootstrap: bytes, forks: Any) -> None:
    """The target of a template (``preload``), spawned cold: run the template that
    ``bootstrap`` (a wrapped :class:`~graceful.wire.bootstrap.TemplateBootstrap`)
    describes, forking workers on request over ``forks``."""
    _say_hello(forks)
    boot = _unwrap(bootstrap)
    from graceful.child.template import template_main  # noqa: PLC0415

    template_main(boot, forks)


def start_supervisor(bootstrap: bytes, link: Any) -> None:
    """The target of a successor supervisor (``graceful upgrade``): say hello on
    ``link`` (a ``SOCK_SEQPACKET`` socket), then run the service's own command as
    the supervisor that takes over from the running one; ``bootstrap`` is JSON (see
    :mod:`graceful.spawn.successor`)."""
    _say_hello(link)
    try:
        from graceful.child.successor import successor_main  # noqa: PLC0415
    except BaseException as exc:
        cause = f"the successor cannot import graceful: {type(exc).__name__}: {exc}"
        try:
            link.send(b'{"failed": ' + _json_string(cause) + b"}")
        finally:
            os._exit(1)
    successor_main(bootstrap, link)


def _json_string(text: str) -> bytes:
    import json  # noqa: PLC0415

    return json.dumps(text.splitlines()[0] if text else text).encode()
