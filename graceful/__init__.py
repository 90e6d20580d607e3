"""graceful: zero-downtime restarts for Python network services.

A supervisor process (the one you start; its PID never changes across reloads)
binds the listeners once and runs generations of worker processes, each importing
your code fresh from disk. SIGHUP starts a new generation; the old one keeps serving until
the new one is ready, then drains. The public names are the ones below (and
:mod:`graceful.testing`); the documentation site tells the whole contract.

The public names are imported on first use, so that ``import graceful`` costs a
worker (which imports it again in every generation) only what its code uses.

Finding your way in the source
------------------------------
* **Where a reload is decided:** :mod:`graceful.core.machine`, with no I/O: events
  in, actions out (``SupervisorStateMachine.handle``), its concerns beside it (a
  trial's probation and rollback in :mod:`~graceful.core.trial`, rolling reloads
  in :mod:`~graceful.core.rollout`, crashes in :mod:`~graceful.core.crashes`).
  The supervisor's loop (:mod:`graceful.supervisor.loop`) only carries the actions
  out.
* **Where descriptors cross processes:** :mod:`graceful.wire.fds`, every one of them
  (listeners to a worker, a forked worker's channels to its template, a worker's
  pidfd to the orphan guard); the orphan guard's program, which imports nothing of
  graceful, receives its own (:mod:`graceful.child.guard`).
* **Where user code is resolved:** :mod:`graceful.code`: the entry point named
  and found again (:mod:`~graceful.code.entry`), the script the user ran, the
  release directory it runs from.
* **Where the supervisor itself is replaced** (``graceful upgrade``): the old
  supervisor's side in :mod:`graceful.supervisor.upgrade` (its docstring is the
  hand-over protocol), the successor's start in :mod:`graceful.child.successor`, and
  its side in :mod:`graceful.supervisor.succession`.

Which process runs a file, by package (each imports only from those below it;
``lint-imports`` checks it):

=====================  ======================================================
package                the process that runs it
=====================  ======================================================
``cli``, ``api``       the process the user starts, before it supervises
``supervisor``         the supervisor
``control``, ``dev``   the supervisor (``control.client``: the command line)
``spawn``              the supervisor: its side of each process it starts
``_boot``              every process graceful spawns, first (never moves)
``servers``, ``child`` workers, standbys, templates, the orphan guard; a
                       successor supervisor's start (``child.successor``)
``code``, ``wire``     both sides
``sockets``, ``base``  both sides
``core``               the supervisor (its decisions; the settings' checks)
=====================  ======================================================
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graceful.api.asgi import serve_asgi
    from graceful.api.service import Service, service
    from graceful.base.errors import ConfigError, GracefulError
    from graceful.child.context import Context, SyncContext
    from graceful.control.client import Control
    from graceful.core.machine import ReloadOutcome
    from graceful.core.settings import Watch
    from graceful.sockets.listeners import Listener, parse_listen_spec

#: public name -> the module that defines it
_MODULE_OF = {
    "ConfigError": "graceful.base.errors",
    "Context": "graceful.child.context",
    "Control": "graceful.control.client",
    "GracefulError": "graceful.base.errors",
    "Listener": "graceful.sockets.listeners",
    "ReloadOutcome": "graceful.core.machine",
    "Service": "graceful.api.service",
    "SyncContext": "graceful.child.context",
    "Watch": "graceful.core.settings",
    "parse_listen_spec": "graceful.sockets.listeners",
    "serve_asgi": "graceful.api.asgi",
    "service": "graceful.api.service",
}

__all__ = [
    "ConfigError",
    "Context",
    "Control",
    "GracefulError",
    "Listener",
    "ReloadOutcome",
    "Service",
    "SyncContext",
    "Watch",
    "parse_listen_spec",
    "serve_asgi",
    "service",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'graceful' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
