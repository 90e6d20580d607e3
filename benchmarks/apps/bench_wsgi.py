"""The same app for gunicorn's sync workers (WSGI). ``BENCH_SLOW_START`` delays import."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

time.sleep(float(os.environ.get("BENCH_SLOW_START", "0")))

VERSION = "v0000"
BODY = f"hello {VERSION}\n".encode()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(BODY))),
            ("X-Pid", str(os.getpid())),
        ],
    )
    return [BODY]
