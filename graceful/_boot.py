"""The first code a spawned worker (or standby) runs, before it imports graceful's code.

A worker's ``Process`` target is :func:`start_worker`, in a module that imports
nothing, and its :class:`~graceful._worker.WorkerBootstrap` travels pickled inside
the arguments. So the worker can tell the supervisor that its interpreter is up
(multiprocess imported, nothing of graceful's yet) before it unpickles the
bootstrap, which imports graceful's worker code; the supervisor times both (see
``_timeline.py``).

A standby's target is :func:`start_standby`, for another reason: what it imports
must never come from the service's own directories, so they are off ``sys.path``
before anything is imported (see ``_standby.py``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: ``Progress("interpreter")`` as a line of the control protocol (``_wire.py``),
#: written by hand: the protocol's module is not imported yet.
_INTERPRETER_UP = b'["progress","interpreter"]\n'


def start_worker(control: Any, fd_channel: Any, bootstrap: bytes) -> None:
    """The target of a spawned worker: report the interpreter up, then run the worker
    that ``bootstrap`` (a pickled :class:`~graceful._worker.WorkerBootstrap`)
    describes, on ``control`` (a multiprocess Connection) and ``fd_channel``."""
    os.write(control.fileno(), _INTERPRETER_UP)
    # Imported here, after the report, so that the report measures the interpreter
    # alone: this is the point of the module.
    from multiprocess.reduction import ForkingPickler  # noqa: PLC0415

    from ._worker import worker_main  # noqa: PLC0415

    worker_main(ForkingPickler.loads(bootstrap), control, fd_channel)


def start_standby(
    bootstrap: bytes, hidden: list[str], link: Any, control: Any, fd_channel: Any
) -> None:
    """The target of a standby: with the directories ``hidden`` off ``sys.path``,
    import the standby's code and run it (``bootstrap`` is a pickled
    :class:`~graceful._standby.StandbyBootstrap`). It puts ``sys.path`` back once it
    has warmed up."""
    path = list(sys.path)
    sys.path[:] = [entry for entry in path if os.path.abspath(entry or os.curdir) not in hidden]
    # Imported here, once sys.path is without the service's directories: the point.
    from multiprocess.reduction import ForkingPickler  # noqa: PLC0415

    from ._standby import standby_main  # noqa: PLC0415

    standby_main(ForkingPickler.loads(bootstrap), link, control, fd_channel, sys_path=path)
