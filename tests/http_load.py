"""HTTP load for the ASGI tests: concurrent keep-alive clients that count every failure.

Each client owns one ``httpx.AsyncClient`` limited to one connection, so its
requests reuse a keep-alive connection for as long as the server keeps it. A
request fails if it raises (connection refused or reset, the server closing the
connection without a response, a timeout) or if the status is not 2xx. Nothing
is retried.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field

import httpx
from harness import poll_until


@dataclass
class HttpTally:
    ok: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    bodies: collections.Counter[str] = field(default_factory=collections.Counter)
    max_latency: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "failures": dict(self.failures),
            "bodies": dict(self.bodies),
            "max_latency_s": round(self.max_latency, 3),
        }


class HttpLoad:
    """``clients`` concurrent keep-alive clients on ``url`` until :meth:`stop`."""

    def __init__(self, url: str, clients: int = 50, timeout: float = 10.0) -> None:
        self.url = url
        self.clients = clients
        self.timeout = timeout
        self.tally = HttpTally()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    async def _client(self) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=self.timeout) as client:
            while not self._stopping.is_set():
                started = time.monotonic()
                try:
                    response = await client.get(self.url)
                except httpx.HTTPError as exc:
                    self.tally.failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
                    continue
                self.tally.max_latency = max(self.tally.max_latency, time.monotonic() - started)
                if 200 <= response.status_code < 300:
                    self.tally.ok += 1
                    self.tally.bodies[response.text.strip()] += 1
                else:
                    self.tally.failures[f"HTTP {response.status_code}"] += 1

    async def _run(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self.clients)))

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def __enter__(self) -> HttpLoad:
        """Start the load in a background thread; it stops when the block ends."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> HttpTally:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the HTTP load did not stop within {timeout}s")
        return self.tally

    def wait_for_body(self, body: str, timeout: float = 15.0) -> None:
        poll_until(
            lambda: self.tally.bodies.get(body, 0) > 0,
            timeout,
            f"a response {body!r} (saw {dict(self.tally.bodies)})",
        )
