"""graceful: zero-downtime restarts for Python network services.

A supervisor process (the one you start; its PID never changes) binds the
listeners once and runs generations of worker processes, each importing your code
fresh from disk. SIGHUP starts a new generation; the old one keeps serving until
the new one is ready, then drains. See the README for the whole contract.

The public names are imported on first use, so that ``import graceful`` costs a
worker (which imports it again in every generation) only what its code uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._asgi import serve_asgi
    from ._context import Context, SyncContext
    from ._control import Control
    from ._decisions import ReloadOutcome
    from ._dev import Watch
    from ._errors import ConfigError, GracefulError
    from ._listeners import Listener, parse_listen_spec
    from ._service import Service, service

#: public name -> the module that defines it
_MODULE_OF = {
    "ConfigError": "._errors",
    "Context": "._context",
    "Control": "._control",
    "GracefulError": "._errors",
    "Listener": "._listeners",
    "ReloadOutcome": "._decisions",
    "Service": "._service",
    "SyncContext": "._context",
    "Watch": "._dev",
    "parse_listen_spec": "._listeners",
    "serve_asgi": "._asgi",
    "service": "._service",
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
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
