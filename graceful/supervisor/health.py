"""Health checks and metrics over HTTP, served by the supervisor itself
(``--health``): what ``/ready``, ``/live`` and ``/metrics`` answer is written in
docs/operations/control.md; each answer is rendered from a
:class:`~graceful.core.snapshot.Snapshot`.

The endpoint reads at most 8 KiB of request head within 5 s, answers
``HTTP/1.1`` with ``Connection: close``, and never blocks the supervisor: it runs
as tasks of the supervisor's event loop, and every answer is computed from the
snapshot without waiting for anything. This is HTTP at its tiniest (one request
line, one response), written by hand like sd_notify.
"""

from __future__ import annotations

import contextlib
import math
import socket
from typing import Any, Protocol

import anyio
from anyio.abc import SocketStream

from graceful._version import pip_install
from graceful.base.log import logger
from graceful.base.tasks import ConnectionServer
from graceful.core.answers import BUCKETS, OUTCOMES
from graceful.core.machine import ReloadOutcome
from graceful.core.snapshot import Snapshot

#: The longest request head read, in bytes, and how long a client may take to send it.
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT = 5.0
#: At most this many health connections wait for their request at once; a new one
#: closes the oldest. The supervisor's descriptors are what it starts workers with:
#: clients that connect and send nothing must not use them up, nor delay a probe.
MAX_CONNECTIONS = 32
#: At most this many health connections are open at once; more wait in the socket's
#: backlog. (Just above :data:`MAX_CONNECTIONS`: a new connection always finds room,
#: and displaces the oldest that sends nothing, so a probe is read at once; a health
#: answer is immediate, so nothing else holds a connection.)
MAX_OPEN_CONNECTIONS = MAX_CONNECTIONS + 2

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_NO_METRICS = f"metrics need prometheus_client: {pip_install('metrics')}\n".encode()
#: The reload durations histogram's upper bounds, in seconds.
RELOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Observed(Protocol):
    """What the health endpoint needs of the supervisor (its loop provides it)."""

    def snapshot(self) -> Snapshot:
        """The supervisor's state now."""
        ...


class Metrics:
    """The supervisor's Prometheus metrics, if ``prometheus_client`` is installed."""

    def __init__(self, supervisor: Observed) -> None:
        from prometheus_client import CollectorRegistry, Histogram  # noqa: PLC0415

        self.registry = CollectorRegistry()
        self.reload_seconds = Histogram(
            "graceful_reload_duration_seconds",
            "Time from a reload's start to its end, by outcome.",
            ["outcome"],
            buckets=RELOAD_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(supervisor))

    @classmethod
    def create(cls, supervisor: Observed) -> Metrics | None:
        """Metrics for ``supervisor``, or None without ``prometheus_client``."""
        try:
            return cls(supervisor)
        except ImportError:
            return None

    def observe_reload(self, outcome: ReloadOutcome) -> None:
        self.reload_seconds.labels(outcome.outcome).observe(outcome.seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest  # noqa: PLC0415

        text: bytes = generate_latest(self.registry)
        return text


class _StateCollector:
    """Counters and gauges read from a snapshot taken at each scrape."""

    def __init__(self, supervisor: Observed) -> None:
        self.supervisor = supervisor

    def collect(self) -> Any:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snapshot = self.supervisor.snapshot()
        counters = snapshot.counters
        reloads = CounterMetricFamily(
            "graceful_reloads", "Reloads that ended, by outcome.", labels=["outcome"]
        )
        reloads.add_metric(["serving"], counters.reloads_serving)
        reloads.add_metric(["failed"], counters.reloads_failed)
        yield reloads
        yield CounterMetricFamily(
            "graceful_worker_crashes",
            "Workers of the serving generation that exited unexpectedly.",
            value=counters.worker_crashes,
        )
        yield CounterMetricFamily(
            "graceful_worker_restarts",
            "Replacements started for crashed workers.",
            value=counters.worker_restarts,
        )
        yield CounterMetricFamily(
            "graceful_workers_hung",
            "Workers found hung: their event loop missed its heartbeat for timeout seconds.",
            value=counters.workers_hung,
        )
        recycles = CounterMetricFamily(
            "graceful_worker_recycles",
            "Workers recycled (replaced once their replacement was ready), by the limit reached.",
            labels=["limit"],
        )
        for limit in ("max_requests", "max_worker_lifetime", "max_worker_memory"):
            recycles.add_metric([limit], counters.recycles.get(limit, 0))
        yield recycles
        yield from _worker_gauges(snapshot, GaugeMetricFamily)
        yield from _answers(snapshot, CounterMetricFamily, HistogramMetricFamily)
        canaries = CounterMetricFamily(
            "graceful_canaries", "Canaries judged to the end, by verdict.", labels=["outcome"]
        )
        for outcome in ("passed", "failed"):
            canaries.add_metric([outcome], counters.canaries.get(outcome, 0))
        yield canaries
        yield CounterMetricFamily(
            "graceful_rollbacks",
            "Rollbacks to a parked generation that completed.",
            value=counters.rollbacks,
        )
        yield GaugeMetricFamily(
            "graceful_on_probation",
            "1 while the serving generation is on probation (the previous one parked).",
            value=1 if snapshot.probation is not None else 0,
        )
        yield GaugeMetricFamily(
            "graceful_rolled_back",
            "1 from a rollback until the next reload: the code on disk was rolled back.",
            value=1 if snapshot.rolled_back is not None else 0,
        )
        workers = GaugeMetricFamily(
            "graceful_workers", "Worker processes, by state.", labels=["state"]
        )
        for state, count in snapshot.workers_by_state.items():
            workers.add_metric([state], count)
        yield workers
        yield GaugeMetricFamily(
            "graceful_workers_wanted",
            "Workers per generation, as configured and scaled (SIGTTIN, SIGTTOU, graceful scale).",
            value=snapshot.workers,
        )
        yield GaugeMetricFamily(
            "graceful_serving_generation",
            "The number of the generation that serves (0 for none).",
            value=snapshot.serving or 0,
        )
        yield GaugeMetricFamily(
            "graceful_ready",
            "1 while /ready answers 200, else 0.",
            value=1 if snapshot.ready else 0,
        )


def _worker_gauges(snapshot: Snapshot, gauge: Any) -> Any:
    """Each live worker's heartbeat age, requests, memory and age, labelled by its
    generation and worker id."""
    labels = ["generation", "worker"]
    beats = gauge(
        "graceful_worker_heartbeat_age_seconds", "Seconds since its last heartbeat.", labels=labels
    )
    requests = gauge("graceful_worker_requests", "Requests it has served.", labels=labels)
    memory = gauge(
        "graceful_worker_resident_memory_bytes",
        "Its resident memory (RSS), sampled with max_worker_memory.",
        labels=labels,
    )
    ages = gauge("graceful_worker_age_seconds", "Seconds since it became ready.", labels=labels)
    for generation in snapshot.generations:
        for worker in generation.workers:
            key = [str(generation.generation), str(worker.worker_id)]
            vitals = worker.vitals
            if vitals.get("heartbeat_age") is not None:
                beats.add_metric(key, vitals["heartbeat_age"])
            if "requests" in vitals:
                requests.add_metric(key, vitals["requests"])
            if "rss_mib" in vitals:
                memory.add_metric(key, vitals["rss_mib"] * 1024 * 1024)
            if worker.age is not None:
                ages.add_metric(key, worker.age)
    yield from (beats, requests, memory, ages)


def _answers(snapshot: Snapshot, counter: Any, histogram: Any) -> Any:
    """The newest generations' answers by outcome, and their durations."""
    labels = ["generation", "outcome"]
    requests = counter(
        "graceful_requests",
        "Answers, by generation and outcome (2xx..5xx, or failed: no response).",
        labels=labels,
    )
    durations = histogram(
        "graceful_request_duration_seconds",
        "How long answers took, by generation.",
        labels=["generation"],
    )
    for number, counted in snapshot.answers.items():
        for outcome in OUTCOMES:
            requests.add_metric([str(number), outcome], counted[outcome])
        cumulative, buckets = 0, []
        for bound, count in zip((*BUCKETS, math.inf), counted["buckets"], strict=True):
            cumulative += count
            buckets.append(("+Inf" if math.isinf(bound) else f"{bound:g}", cumulative))
        durations.add_metric([str(number)], buckets, counted["seconds"])
    yield from (requests, durations)


class HealthServer(ConnectionServer):
    """Serves ``/ready``, ``/live`` and ``/metrics`` on ``sock`` for ``supervisor``."""

    def __init__(self, sock: socket.socket, supervisor: Observed) -> None:
        super().__init__(sock, "health endpoint", MAX_OPEN_CONNECTIONS, MAX_CONNECTIONS)
        self.supervisor = supervisor
        self.metrics = Metrics.create(supervisor)

    async def handle(self, stream: SocketStream) -> None:
        try:
            await self._answer_on(stream)
        except Exception:
            # A request, or a failing metrics collector, costs that connection only.
            logger.exception("health endpoint: a request failed")

    async def _answer_on(self, stream: SocketStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                head: bytes | None = None
                with self._readers.reading() as reading:
                    head = await _read_head(stream)
                if reading.cancelled_caught:
                    return  # a newer connection took its place
                status, body, content_type = self._answer(head)
                with anyio.move_on_after(REQUEST_TIMEOUT):
                    await stream.send(_response(status, body, content_type, head))

    def _answer(self, head: bytes | None) -> tuple[int, bytes, str]:
        text = "text/plain; charset=utf-8"
        if head is None:
            return 400, b"bad request\n", text
        request_line = head.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
        if len(request_line) != 3 or request_line[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
            return 400, b"bad request\n", text
        method, target = request_line[0], request_line[1].split(b"?", 1)[0]
        if target.startswith((b"http://", b"https://")):  # absolute-form
            target = b"/" + target.split(b"/", 3)[3] if target.count(b"/") >= 3 else b"/"
        if method not in (b"GET", b"HEAD"):
            return 405, b"only GET and HEAD\n", text
        if target == b"/live":
            snapshot = self.supervisor.snapshot()
            return (200 if snapshot.live else 503), f"{snapshot.live_why}\n".encode(), text
        if target == b"/ready":
            snapshot = self.supervisor.snapshot()
            if snapshot.ready:
                return 200, b"ready\n", text
            return 503, f"not ready: {snapshot.not_ready_because()}\n".encode(), text
        if target == b"/metrics":
            if self.metrics is None:
                return 404, _NO_METRICS, text
            return 200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8"
        return 404, b"not found: try /ready, /live or /metrics\n", text


async def _read_head(stream: SocketStream) -> bytes | None:
    data = b""
    with anyio.move_on_after(REQUEST_TIMEOUT):
        while not _complete(data) and len(data) <= MAX_REQUEST_BYTES:
            try:
                data += await stream.receive(MAX_REQUEST_BYTES + 1 - len(data))
            except anyio.EndOfStream:
                break
    if not _complete(data):
        return None
    return data


def _complete(data: bytes) -> bool:
    """True once ``data`` holds a whole request head (lines may end in a bare LF)."""
    return b"\r\n\r\n" in data or b"\n\n" in data


def _response(status: int, body: bytes, content_type: str, head: bytes | None) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    header = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if head is not None and head.startswith(b"HEAD "):
        return header
    return header + body
