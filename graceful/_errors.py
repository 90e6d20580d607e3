"""The exceptions graceful raises for input it cannot use.

Every message is one line that names the offending value, so that a supervisor
that refuses to start says exactly what to fix.
"""

from __future__ import annotations


class GracefulError(Exception):
    """Base class of every error graceful raises on purpose."""


class ConfigError(GracefulError):
    """The service as written cannot be started: a bad listen spec, a port in use,
    an entry point that a fresh interpreter could not find, a missing guard.

    The supervisor reports it in one line and exits with status 2 before it has
    spawned anything.
    """
