"""graceful: zero-downtime restarts for Python network services.

A supervisor process (the one you start; its PID never changes) binds the
listeners once and runs generations of worker processes, each importing your code
fresh from disk. SIGHUP starts a new generation; the old one keeps serving until
the new one is ready, then drains. See the README for the whole contract.
"""

from ._asgi import serve_asgi
from ._context import Context, SyncContext
from ._control import Control
from ._decisions import ReloadOutcome
from ._dev import Watch
from ._errors import ConfigError, GracefulError
from ._listeners import Listener, parse_listen_spec
from ._service import Service, service

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
