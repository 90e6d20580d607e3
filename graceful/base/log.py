"""Where graceful's log lines go when the application has not configured logging.

The supervisor and the workers log through the ``graceful`` logger. If neither it
nor the root logger has a handler when a process starts, one line per record goes
to stderr, prefixed with the process's role, so that a failure is visible without
any setup. An application that configures logging itself keeps full control.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator

logger = logging.getLogger("graceful")

#: The most log records that wait for a stderr whose reader fell behind.
MAX_WAITING_RECORDS = 10_000


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


@contextlib.contextmanager
def written_without_waiting() -> Iterator[None]:
    """While in this context, the records graceful's own handler writes to stderr go
    through a bounded queue to a thread of their own: a reader of stderr that falls
    behind (a stalled pipe, a journal that does not read) never blocks the
    supervisor's loop. Past :data:`MAX_WAITING_RECORDS` waiting records, new ones are
    dropped and counted, and the count is written once the reader catches up. At the
    end, what waits is written, for :data:`FINAL_WRITE_WAIT` seconds at most (a
    reader that never reads must not hold the exit). Nothing changes where the
    application handles logging itself."""
    ours = [handler for handler in logger.handlers if getattr(handler, "graceful_own", False)]
    if not ours:
        yield
        return
    [handler] = ours
    queued = _QueuedHandler(handler)
    logger.removeHandler(handler)
    logger.addHandler(queued)
    try:
        yield
    finally:
        logger.removeHandler(queued)
        queued.finish(FINAL_WRITE_WAIT)
        logger.addHandler(handler)


#: Seconds the end of a supervisor waits for stderr to take the lines still queued.
FINAL_WRITE_WAIT = 5.0


class _QueuedHandler(logging.Handler):
    """Hands records to a writer thread through a bounded queue, without waiting;
    drops (and counts) them when the queue is full."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.graceful_own = True
        self._handler = handler
        self._records: queue.Queue[logging.LogRecord | None] = queue.Queue(MAX_WAITING_RECORDS)
        self._dropped = 0
        # the writer must never take a signal (see BytecodeGate): it starts with every
        # signal blocked, which it inherits
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self._writer = threading.Thread(target=self._write, name="graceful-log", daemon=True)
            self._writer.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        self._handler.setFormatter(fmt)

    def emit(self, record: logging.LogRecord) -> None:
        # formatted now: the writer may run after the arguments changed
        record.msg, record.args = record.getMessage(), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        try:
            self._records.put_nowait(record)
        except queue.Full:
            self._dropped += 1

    def _write(self) -> None:
        while (record := self._records.get()) is not None:
            self._say_dropped()
            self._write_one(record)
        self._say_dropped()

    def _write_one(self, record: logging.LogRecord) -> None:
        """Write ``record`` as the handler would, straight to its descriptor: the
        handler's lock is never held here, so nothing else that logs (or the
        interpreter's exit, which flushes every handler) waits for a stalled reader."""
        line = (self._handler.formatter or logging.Formatter()).format(record) + "\n"
        try:
            fd = self._handler.stream.fileno()  # type: ignore[attr-defined]
        except (AttributeError, OSError, ValueError):
            self._handler.handle(record)
            return
        data = line.encode("utf-8", "backslashreplace")
        with contextlib.suppress(OSError):
            while data:
                data = data[os.write(fd, data) :]

    def _say_dropped(self) -> None:
        dropped, self._dropped = self._dropped, 0
        if dropped:
            self._write_one(
                logging.makeLogRecord(
                    {
                        "name": logger.name,
                        "levelno": logging.WARNING,
                        "levelname": "WARNING",
                        "msg": f"{dropped} log lines were dropped: stderr's reader fell behind",
                    }
                )
            )

    def finish(self, wait: float) -> None:
        """Let the writer write what waits, for ``wait`` seconds at most."""
        deadline = time.monotonic() + wait
        with contextlib.suppress(queue.Full):
            self._records.put(None, timeout=wait)
        self._writer.join(max(0.0, deadline - time.monotonic()))


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
