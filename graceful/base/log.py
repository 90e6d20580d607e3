"""Where graceful's log lines go when the application has not configured logging.

The supervisor and the workers log through the ``graceful`` logger. If neither it
nor the root logger has a handler when a process starts, one line per record goes
to stderr, so that a failure is visible without any setup. An application that
configures logging itself keeps full control.

Each line is in one of two formats (:data:`FORMATS`), chosen by the environment
variable :data:`FORMAT_VARIABLE`, which the command line sets from ``--log-format``
in the supervisor's own environment before anything is spawned: every process it
starts (workers, templates, standbys, a successor) inherits it, and nothing of the
format travels in a bootstrap.

* ``text``: ``2026-12-07T05:42:27.123Z graceful[1234] supervisor: INFO message``:
  the time (UTC, ISO 8601, milliseconds), the PID, the role, the level.
* ``json``: one JSON object per line, ASCII only (see :class:`JsonFormatter`).

The servers' own lines use the same formats where graceful configures the
server's logging (:mod:`graceful.servers.uvicorn`): :class:`Timestamped` and
:class:`JsonFormatter` are for them too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("graceful")

#: The environment variable that names the format of the log lines (:data:`FORMATS`).
FORMAT_VARIABLE = "GRACEFUL_LOG_FORMAT"
#: The formats of the log lines; the first is the default.
FORMATS = ("text", "json")
#: ``--log-level``'s names, as uvicorn's (``trace`` is uvicorn's level 5).
LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": 5,
}

#: The most log records that wait for a stderr whose reader fell behind.
MAX_WAITING_RECORDS = 10_000


def configure(log_format: str | None, level: str | None) -> None:
    """What the command line's ``--log-format`` and ``--log-level`` ask for, before
    :func:`ensure_visible`: the format, in the environment this process's children
    inherit (None: as it is), and the ``graceful`` logger's level (None: as it is)."""
    if log_format is not None:
        os.environ[FORMAT_VARIABLE] = log_format
    if level is not None:
        logger.setLevel(LEVELS[level])


def log_format() -> str:
    """The format of the lines, from :data:`FORMAT_VARIABLE` (text when unset, or set
    to something else)."""
    chosen = os.environ.get(FORMAT_VARIABLE, FORMATS[0]).strip().lower()
    return chosen if chosen in FORMATS else FORMATS[0]


class _Role:
    """What this process is, as its lines name it (set by :func:`ensure_visible`)."""

    name = "supervisor"


def ensure_visible(role: str) -> None:
    """Send ``graceful`` records to stderr unless the application handles logging.

    ``role`` names this process in every line, e.g. ``"supervisor"``,
    ``"gen 3 worker 0"``, ``"gen 3 template"``, ``"standby"`` or ``"client"``.
    """
    _Role.name = role
    for handler in logger.handlers:
        if getattr(handler, "graceful_own", False):
            # ours, from the process this one was forked from (or set up before the
            # format was chosen): format as this one
            handler.setFormatter(line_formatter())
            return
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(line_formatter())
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


def line_formatter() -> logging.Formatter:
    """The formatter of graceful's own lines, in the chosen format."""
    if log_format() == "json":
        return JsonFormatter()
    return _TextFormatter("%(levelname)s %(message)s")


def timestamp(created: float) -> str:
    """``created`` (a record's) as the lines show it: UTC, ISO 8601, milliseconds."""
    seconds, milliseconds = divmod(int(created * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{milliseconds:03d}Z"


class Timestamped(logging.Formatter):
    """A formatter (mixed in before another) whose lines start with the time."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{timestamp(record.created)} {super().format(record)}"


class _TextFormatter(logging.Formatter):
    """``TIME graceful[PID] ROLE: LEVEL message``."""

    def format(self, record: logging.LogRecord) -> str:
        where = f"graceful[{record.process or os.getpid()}] {_Role.name}"
        return f"{timestamp(record.created)} {where}: {super().format(record)}"


#: ``gen 3 worker 0``, ``gen 3 template``: a role of a generation's process
_GENERATION_ROLE = re.compile(r"gen (\d+) (worker|template)(?: (\d+))?")

#: uvicorn's access log: its record's arguments, and the fields they become
_ACCESS_LOGGER = "uvicorn.access"
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


def role_fields(role: str) -> dict[str, Any]:
    """``role`` as the JSON lines' ``role``, ``generation`` and ``worker`` fields."""
    matched = _GENERATION_ROLE.fullmatch(role)
    if matched is None:
        return {"role": role, "generation": None, "worker": None}
    generation, kind, worker = matched.groups()
    return {
        "role": kind,
        "generation": int(generation),
        "worker": int(worker) if worker is not None else None,
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line, ASCII only: ``time``, ``level``,
    ``logger``, ``role`` (supervisor, worker, template, standby or client), ``pid``,
    ``generation`` and ``worker`` (null outside a generation's worker), ``message``;
    ``exc`` with the traceback when there is one; and for uvicorn's access log, the
    request's ``client``, ``method``, ``path``, ``http_version`` and ``status``.

    Takes (and ignores) a logging configuration's formatter options (``fmt``,
    ``use_colors``), to stand in for uvicorn's formatters."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        role = role_fields(_Role.name)
        fields: dict[str, Any] = {
            "time": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "role": role["role"],
            "pid": record.process or os.getpid(),
            "generation": role["generation"],
            "worker": role["worker"],
        }
        try:
            fields["message"] = record.getMessage()
        except Exception as exc:  # arguments that do not fit the message
            fields["message"] = f"{record.msg!r} {record.args!r} ({exc})"
        args = record.args
        if record.name == _ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
            fields.update(zip(_ACCESS_FIELDS, args, strict=True))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exc"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return json.dumps(fields, default=str)


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
