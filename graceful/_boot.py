"""The first code a spawned worker runs, before it imports graceful's worker code.

A worker's ``Process`` target is :func:`start_worker`, in a module that imports
nothing, and its :class:`~graceful._worker.WorkerBootstrap` travels pickled inside
the arguments. So the worker can tell the supervisor that its interpreter is up
(multiprocess imported, nothing of graceful's yet) before it unpickles the
bootstrap, which imports graceful's worker code; the supervisor times both (see
``_timeline.py``).
"""

from __future__ import annotations

import os
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
