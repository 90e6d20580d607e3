"""A warm standby's own side: import everything but the user's code, then wait
for work (the concept and its wire: :mod:`graceful.spawn.standby`)."""

from __future__ import annotations

import importlib
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from multiprocess.reduction import ForkingPickler

from graceful.base import processes as _processes
from graceful.base.errors import one_line
from graceful.child.worker import import_and_run, settle_process
from graceful.code.entry import resolve_entry, traits_of
from graceful.code.release import child_sys_path
from graceful.code.stale_imports import ImportSnapshot
from graceful.wire import messages as _wire
from graceful.wire.bootstrap import Assignment, StandbyBootstrap

if TYPE_CHECKING:
    pass


#: A standby's process name (``/proc/PID/comm``, at most 15 bytes), once it is warm.
STANDBY_NAME = "graceful-warm"

#: Set in a standby's environment (and removed once it has work), so that tools can
#: tell a standby that has not named itself yet from a worker.
STANDBY_VARIABLE = "GRACEFUL_STANDBY_PROCESS"


def standby_main(
    boot: StandbyBootstrap,
    link: socket.socket,
    control: Any,
    fd_channel: socket.socket | None,
    *,
    sys_path: list[str],
) -> None:
    """A standby's life (its target is ``_boot.start_standby``, which took the
    service's own directories off ``sys.path``): import, put ``sys_path`` back,
    report warm, wait for an assignment, check that nothing imported changed, and
    become what it is assigned."""
    settle_process("standby", boot.log_level, boot.options, name=None)
    try:
        warm_up(boot)
        sys.path[:] = child_sys_path(boot.sys_path, sys_path)
        snapshot = ImportSnapshot.take(boot.started_ns)
        shadowed = snapshot.shadows()
    except BaseException as exc:
        _wire.send_or_exit(link, failed=one_line(exc, where=True))
        sys.exit(1)
    if shadowed:
        _wire.send_or_exit(
            link, failed=f"the service's own modules shadow what it imported: {', '.join(shadowed)}"
        )
        sys.exit(1)
    _processes.set_name(STANDBY_NAME)
    _wire.send_or_exit(link, warm=True)
    try:
        data = link.recv(_wire.LINK_MESSAGE_BYTES)
    except OSError:
        data = b""
    if not data:
        sys.exit(0)  # the supervisor is done with it (or gone)
    assignment: Assignment = ForkingPickler.loads(data)  # from the supervisor
    changes = snapshot.changes()
    if changes:
        _wire.send_or_exit(link, stale=changes)
        sys.exit(0)
    _take(assignment)
    _wire.send_or_exit(link, taken=True)
    if assignment.template is not None:
        # (not at the top: the template's module imports the spawner's, which imports
        # this one; a template standby imported it while warming up)
        from graceful.child.template import template_main  # noqa: PLC0415

        template_main(assignment.template, link)
        return
    worker = assignment.worker
    assert worker is not None
    assert fd_channel is not None
    link.close()
    role = f"gen {worker.generation} worker {worker.worker_id}"
    settle_process(role, worker.log_level, boot.options)
    import_and_run(worker, _wire.ControlChannel(control), fd_channel)


def warm_up(boot: StandbyBootstrap) -> None:
    """Import what a worker (or a template) of this service imports before the
    user's code, and what its event loop and server import: never the user's code.
    graceful's own entry points (``graceful serve``'s) may name more, with a
    ``warm_up`` trait (:class:`~graceful.code.entry.EntryTraits`), given the entry
    options."""
    for name in _WORKER_MODULES:
        importlib.import_module(name)
    if boot.options.backend == "trio":
        importlib.import_module("anyio._backends._trio")
    if boot.options.backend_options.get("use_uvloop"):
        importlib.import_module("uvloop")
    if boot.template:
        importlib.import_module("graceful.child.template")
    if boot.entry.module.startswith("graceful."):  # graceful's own code, never the user's
        warm = traits_of(resolve_entry(boot.entry)).warm_up
        if warm is not None:
            warm(**boot.options.entry_options)


#: What every worker imports before (or while) it runs the user's code: the
#: decorator and the context the user's code uses, and the event loop the sync and
#: asyncio paths run (the trio backend is added for trio services).
_WORKER_MODULES = (
    "graceful.api.service",
    "graceful.child.context",
    "graceful.child.worker",
    "anyio._backends._asyncio",
    "anyio.from_thread",
)


def _take(assignment: Assignment) -> None:
    """Become a process spawned now: its working directory, no standby mark, and no
    memory of what the directories on ``sys.path`` held."""
    os.environ.pop(STANDBY_VARIABLE, None)
    os.chdir(assignment.cwd)
    importlib.invalidate_caches()
