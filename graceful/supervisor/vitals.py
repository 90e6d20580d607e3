"""Watching the workers' vitals: hangs and recycling limits, found by the supervisor.

Every :data:`TICK` seconds the supervisor reads each worker's vitals page
(:mod:`graceful.wire.vitals`), a few loads from shared memory per worker, and judges
what the state machine cannot see:

* **hung**: a ready (or parked) worker whose event loop has not beaten for more than
  ``timeout`` seconds, counted from its last beat or from when it became ready,
  whichever is later (a worker that imports its app on its loop does not beat
  meanwhile, and is judged by ``ready_timeout`` then). One
  :class:`~graceful.core.events.WorkerHung` per worker.
* **worn out**: a ready worker that served ``max_requests`` (plus its jitter), lived
  ``max_worker_lifetime`` seconds since it became ready (plus its jitter), or whose
  unique memory exceeds ``max_worker_memory`` MiB. Sent as
  :class:`~graceful.core.events.WorkerWornOut` at most every :data:`RESEND` seconds
  while it holds and the worker is not being replaced, so that a recycle put off (another
  under way, a failed replacement's backoff) is tried again.

Memory is the worker's USS, the memory it alone holds (``Private_Clean`` plus
``Private_Dirty`` in ``/proc/PID/smaps_rollup``): what recycling it gives back, where
RSS would also count what it shares with its siblings. It is sampled every
:data:`MEMORY_EVERY` seconds in a worker thread (a read of another process's
``/proc`` must never hold the supervisor's loop). ``smaps_rollup`` walks the
process's mappings (about 1 ms for a uvicorn worker), so each sample first reads
the RSS from ``/proc/PID/statm`` (microseconds), and reads the USS only when the
RSS is above the limit (the USS never is above the RSS). A worker that leaks is
recycled within about :data:`MEMORY_EVERY` seconds of crossing the limit, plus its
replacement's start.

The requests count arrives with each heartbeat (every :data:`HEARTBEAT` seconds) for
uvicorn, at once for the others: a busy worker may serve a few more than
``max_requests`` before its recycle starts, and it serves on until its replacement
is ready.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio
import anyio.to_thread

from graceful.core import events, verdict
from graceful.core.fleet import Settings, Worker, WorkerState
from graceful.spawn.spawner import WorkerProcess
from graceful.supervisor.answers import AnswerBook
from graceful.wire.vitals import DUMP_SIGNAL

#: Seconds between two readings of the vitals pages.
TICK = 0.1
#: Seconds between two heartbeats of a worker's event loop (told to each worker).
HEARTBEAT = 0.2
#: Seconds between two samples of each worker's memory.
MEMORY_EVERY = 0.5
#: Seconds between two reports of the same worn-out worker.
RESEND = 1.0
#: Seconds a hung worker has to write its stack once signalled.
DUMP_WAIT = 1.0

_MIB = 1024 * 1024


@dataclass
class Reading:
    """What the supervisor last read of one worker, for ``status`` and metrics."""

    #: seconds since its last heartbeat (None: it has not beaten)
    heartbeat_age: float | None = None
    requests: int = 0
    #: its resident memory in bytes (None: not sampled)
    rss: int | None = None
    #: its unique memory in bytes, read when its RSS is above the limit (else None)
    memory: int | None = None
    #: its limits, with their jitter drawn
    max_requests: int = 0
    max_lifetime: float = 0.0
    hung_reported: bool = False
    worn_out_reported_at: float = -1e9


def heartbeat_interval(settings: Settings) -> float:
    """The heartbeat each worker is told to beat (0: none is needed)."""
    needed = settings.timeout > 0 or settings.max_requests > 0
    return HEARTBEAT if needed else 0.0


_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_memory(pid: int) -> int | None:
    """Process ``pid``'s RSS in bytes, from ``/proc/PID/statm`` (None if it cannot be
    read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            fields = statm.read(256).split()
        return int(fields[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def unique_memory(pid: int) -> int | None:
    """Process ``pid``'s USS in bytes, from ``/proc/PID/smaps_rollup`` (None if it
    cannot be read: gone, another user's, an old kernel)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            text = rollup.read(8192)
    except OSError:
        return None
    total = 0
    found = False
    for line in text.splitlines():
        if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                total += int(parts[1]) * 1024
                found = True
    return total if found else None


def judge(worker: Worker, reading: Reading, settings: Settings, now: float) -> events.Event | None:
    """What ``reading`` says of ``worker`` at ``now`` (the loop's clock): hung, worn
    out, or nothing. Pure; :class:`VitalsMonitor` reads and sends."""
    timeout = settings.timeout
    if (
        timeout > 0
        and worker.state in (WorkerState.READY, WorkerState.PARKED)
        and worker.ready_at is not None
        and reading.heartbeat_age is not None
        and not worker.hung
        and not reading.hung_reported
    ):
        silent = min(reading.heartbeat_age, now - worker.ready_at)
        if silent > timeout:
            return events.WorkerHung(worker.serial, round(silent, 1))
    if (
        worker.state is not WorkerState.READY
        or worker.replaced_by is not None
        or worker.ready_at is None
        or now - reading.worn_out_reported_at < RESEND
    ):
        return None
    if reading.max_requests and reading.requests >= reading.max_requests:
        return events.WorkerWornOut(
            worker.serial, "max_requests", f"after {reading.requests:,} requests"
        )
    age = now - worker.ready_at
    if reading.max_lifetime and age >= reading.max_lifetime:
        return events.WorkerWornOut(worker.serial, "max_worker_lifetime", f"after {age:,.1f}s")
    limit = settings.max_worker_memory
    if limit and reading.memory is not None and reading.memory > limit * _MIB:
        return events.WorkerWornOut(
            worker.serial,
            "max_worker_memory",
            f"at {reading.memory / _MIB:,.1f} MiB of unique memory (limit {limit:,} MiB)",
        )
    return None


class VitalsMonitor:
    """Reads the live workers' vitals and sends what it judges (see the module
    docstring). ``live`` gives the workers' processes by serial, ``machine`` their
    state, ``send`` takes the events."""

    def __init__(
        self,
        settings: Settings,
        live: Callable[[], Mapping[int, WorkerProcess]],
        machine: Callable[[], Mapping[int, Worker]],
        send: Callable[[events.Event], None],
        answers: AnswerBook | None = None,
    ) -> None:
        self.settings = settings
        #: the generations' answers, sent while one is judged
        self.answers = answers
        self._live = live
        self._machine = machine
        self._send = send
        self.readings: dict[int, Reading] = {}

    @property
    def needed(self) -> bool:
        settings = self.settings
        return bool(
            settings.timeout
            or settings.max_requests
            or settings.max_worker_lifetime
            or settings.max_worker_memory
            or (self.answers is not None and (verdict.judged(settings) or settings.canary))
        )

    async def run(self) -> None:
        """Read and judge every :data:`TICK` seconds, and sample memory every
        :data:`MEMORY_EVERY`, for the supervisor's life."""
        if not self.needed:
            return
        async with anyio.create_task_group() as tasks:
            if self.settings.max_worker_memory:
                tasks.start_soon(self._sample_memory)
            while True:
                self.tick(anyio.current_time())
                await anyio.sleep(TICK)

    def tick(self, now: float) -> None:
        if self.answers is not None:
            self.answers.tick()
        live = self._live()
        workers = self._machine()
        for serial in [serial for serial in self.readings if serial not in live]:
            del self.readings[serial]
        now_ns = time.monotonic_ns()
        for serial, process in live.items():
            worker = workers.get(serial)
            page = process.vitals
            if worker is None or page is None:
                continue
            reading = self.readings.get(serial)
            if reading is None:
                reading = self.readings[serial] = self._limits()
            beat = page.last_beat_ns
            reading.heartbeat_age = None if beat == 0 else max(0.0, (now_ns - beat) / 1e9)
            reading.requests = page.requests
            if (
                reading.hung_reported
                and not worker.hung
                and reading.heartbeat_age is not None
                and reading.heartbeat_age < self.settings.timeout
            ):
                # reported while it could not be judged (resumed meanwhile), and it
                # beats again: it may be judged again
                reading.hung_reported = False
            judged = judge(worker, reading, self.settings, now)
            if isinstance(judged, events.WorkerHung):
                reading.hung_reported = True
            elif isinstance(judged, events.WorkerWornOut):
                reading.worn_out_reported_at = now
            if judged is not None:
                self._send(judged)

    def _limits(self) -> Reading:
        settings = self.settings
        requests = settings.max_requests
        if requests and settings.max_requests_jitter:
            requests += random.randint(0, settings.max_requests_jitter)
        lifetime = settings.max_worker_lifetime
        if lifetime and settings.max_worker_lifetime_jitter:
            lifetime += random.uniform(0, settings.max_worker_lifetime_jitter)
        return Reading(max_requests=requests, max_lifetime=lifetime)

    async def _sample_memory(self) -> None:
        limit = self.settings.max_worker_memory * _MIB
        while True:
            pids = {serial: process.pid for serial, process in self._live().items()}
            sampled = await anyio.to_thread.run_sync(_sample, pids, limit, abandon_on_cancel=True)
            for serial, (rss, uss) in sampled.items():
                reading = self.readings.get(serial)
                if reading is not None:
                    reading.rss, reading.memory = rss, uss
            await anyio.sleep(MEMORY_EVERY)

    def describe(self, serial: int) -> dict[str, object]:
        """The worker's vitals for ``status`` (empty if none were read)."""
        reading = self.readings.get(serial)
        if reading is None:
            return {}
        shown: dict[str, object] = {
            "heartbeat_age": None
            if reading.heartbeat_age is None
            else round(reading.heartbeat_age, 3),
            "requests": reading.requests,
        }
        if reading.rss is not None:
            shown["rss_mib"] = round(reading.rss / _MIB, 1)
        if reading.memory is not None:
            shown["uss_mib"] = round(reading.memory / _MIB, 1)
        if reading.max_requests:
            shown["max_requests"] = reading.max_requests
        return shown


def _sample(pids: dict[int, int], limit: int) -> dict[int, tuple[int | None, int | None]]:
    """By serial: the RSS of each process, and its USS if the RSS is above ``limit``."""
    # in a worker thread, which must never take a signal meant for the loop
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    sampled: dict[int, tuple[int | None, int | None]] = {}
    for serial, pid in pids.items():
        rss = resident_memory(pid)
        sampled[serial] = rss, unique_memory(pid) if rss is not None and rss > limit else None
    return sampled


async def dump_stack(
    process: WorkerProcess, described: str, done: anyio.Event, log: Callable[[str], None]
) -> None:
    """Have ``process`` (hung; ``described`` as "generation 1 worker 0") dump its
    threads' stacks, wait up to :data:`DUMP_WAIT` seconds for the dump to be complete
    (no longer growing), log it in one record, and set ``done``. A worker that cannot
    take the signal (stopped) is said to be so."""
    page = process.vitals
    try:
        if page is None:
            return
        try:
            os.kill(process.pid, DUMP_SIGNAL)
        except OSError as exc:
            log(f"{described}: could not ask it for its stack: {exc.strerror or exc}")
            return
        # complete once it has stopped growing for two polls in a row (a worker
        # descheduled in the middle of its dump must not be cut short)
        seen, same = "", 0
        deadline = anyio.current_time() + DUMP_WAIT
        while anyio.current_time() < deadline and same < 2:
            await anyio.sleep(0.025)
            dumped = page.dump()
            same = same + 1 if dumped and dumped == seen else 0
            seen = dumped
        if seen:
            log(f"{described} hung here:\n{seen.rstrip()}")
        else:
            log(
                f"{described} wrote no stack within {DUMP_WAIT:g}s of being asked "
                "(stopped, or its signals blocked?)"
            )
    finally:
        done.set()
