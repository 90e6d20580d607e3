"""The same app as WSGI, for gunicorn's workers and ``graceful serve --interface wsgi``.

``BENCH_SLOW_START`` delays the import; ``BENCH_IO_MS`` makes every request wait
that many milliseconds first, as for a database round trip."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

time.sleep(float(os.environ.get("BENCH_SLOW_START", "0")))

VERSION = "v0000"
BODY = f"hello {VERSION}\n".encode()


IO_SECONDS = float(os.environ.get("BENCH_IO_MS", "0")) / 1000


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if IO_SECONDS:
        time.sleep(IO_SECONDS)
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(BODY))),
            ("X-Pid", str(os.getpid())),
        ],
    )
    return [BODY]
