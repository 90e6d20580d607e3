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
import time
from dataclasses import dataclass, field

import httpx
from echo_load import Load, Tally
from harness import poll_until


@dataclass
class HttpTally(Tally):
    """The echo load's tally, with the responses' bodies (stripped) counted in
    ``bodies`` (``prefixes`` and ``failed_on`` stay empty)."""

    bodies: collections.Counter[str] = field(default_factory=collections.Counter)
    #: the bodies of the answers that were not 2xx, by status and body
    error_bodies: collections.Counter[tuple[int, str]] = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, object]:
        figures = super().as_dict()
        del figures["prefixes"]
        return {**figures, "bodies": dict(self.bodies)}


class HttpLoad(Load):
    """``clients`` concurrent keep-alive clients on ``url`` until :meth:`stop`: the
    echo load of ``examples/echo_load.py`` (its thread, its stop) with HTTP clients."""

    tally: HttpTally

    def __init__(
        self, url: str, clients: int = 50, timeout: float = 10.0, *, keep_alive: bool = True
    ) -> None:
        super().__init__(url, clients, timeout)
        self.url = url
        self.tally = HttpTally()
        #: False: every request opens a new connection (what a refused or unanswered
        #: connection shows up in)
        self.keep_alive = keep_alive

    async def _http_client(self) -> None:
        limits = httpx.Limits(
            max_connections=1, max_keepalive_connections=1 if self.keep_alive else 0
        )
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
                    self.tally.error_bodies[response.status_code, response.text.strip()] += 1

    async def run(self) -> HttpTally:
        """Run every client until :meth:`stop`; return the tally."""
        await asyncio.gather(*(self._http_client() for _ in range(self.clients)))
        return self.tally

    def stop(self, timeout: float = 30.0) -> HttpTally:
        """Stop every client after its current request; return the tally."""
        super().stop(timeout)
        return self.tally

    def wait_for_body(self, body: str, timeout: float = 15.0) -> None:
        poll_until(
            lambda: self.tally.bodies.get(body, 0) > 0,
            timeout,
            f"a response {body!r} (saw {dict(self.tally.bodies)})",
        )
