"""Where graceful's log lines go when the application has not configured logging.

The supervisor and the workers log through the ``graceful`` logger. If neither it
nor the root logger has a handler when a process starts, one line per record goes
to stderr, prefixed with the process's role, so that a failure is visible without
any setup. An application that configures logging itself keeps full control.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("graceful")


def ensure_visible(role: str) -> None:
    """Send ``graceful`` records to stderr unless the application handles logging.

    ``role`` names this process in every line, e.g. ``"supervisor"`` or
    ``"gen 3 worker 0"``.
    """
    for handler in logger.handlers:
        if getattr(handler, "graceful_own", False):
            # ours, from the process this one was forked from: name this one
            handler.setFormatter(_formatter(role))
            return
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(role))
    handler.graceful_own = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def _formatter(role: str) -> logging.Formatter:
    return logging.Formatter(f"graceful[{os.getpid()}] {role}: %(levelname)s %(message)s")


class _StartFailures:
    """Development mode, in a worker: a failure before the worker is ready is
    reported to the supervisor, which prints it in one line, and not logged here as
    well."""

    reported_only = False


def report_start_failures_only() -> None:
    """From now on, this process leaves its start-up failures to the supervisor."""
    _StartFailures.reported_only = True


def start_failures_logged() -> bool:
    """False once :func:`report_start_failures_only` was called."""
    return not _StartFailures.reported_only
