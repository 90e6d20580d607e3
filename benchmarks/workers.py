"""Many workers per host: reload time and memory, spawn-per-worker against one import
per generation (``preload``), and a rolling reload against all-at-once, in one run.

    python benchmarks/workers.py [--megabytes 200] [--workers 1,2,4,8] [--rounds 3]

The service is the raw asyncio echo (``ctx.serve()``) whose module writes
``--megabytes`` of data at import, as an app that loads a model would.

1. **Reload time against workers**: for each worker count, with and without
   preload, the median over ``--rounds`` reloads of the time from the reload's start
   to the new generation serving (the supervisor's own ``ready in`` figure), and the
   memory once settled: the PSS (``/proc/PID/smaps_rollup``) of each worker, and
   per worker with the template's share added (total / workers).
2. **Peak during a reload**: 4 workers, ``max_surge=1``, probation off; a sampler
   thread reads, as fast as it can while a reload runs, how many worker processes
   are alive (draining and parked ones included), how many hold the listener, and
   the PSS of every process of the service (supervisor left out) added up. Printed
   for all-at-once and rolling, with and without preload, beside the steady state.

Figures come from one machine in one run: compare the columns, not runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
from common import LINES, print_header, print_row

from graceful.testing import ServiceProcess, holds_socket, listening_socket, poll_until

SERVICE = """\
import os
from collections.abc import AsyncIterator

from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

import graceful

#: written at import, every page: the app's model
MODEL = b"m" * ({megabytes} << 20)


{lines}

async def echo(stream):
    async for line in lines(stream):
        await stream.send(line + b"\\n")


@graceful.service(
    listen=["127.0.0.1:0"],
    workers=int(os.environ["WORKERS"]),
    preload=os.environ["PRELOAD"] == "1",
    strategy=os.environ["STRATEGY"],
    max_surge=1,
    probation=0,
    drain_timeout=5,
)
async def main(ctx):
    await ctx.serve(echo)


if __name__ == "__main__":
    main.run()
"""

TEMPLATE_NAME = "graceful-tmpl"


def pss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def is_template(pid: int) -> bool:
    try:
        return psutil.Process(pid).name() == TEMPLATE_NAME
    except psutil.Error:
        return False


def start(workdir: Path, workers: int, preload: bool, strategy: str) -> ServiceProcess:
    svc = ServiceProcess(
        workdir / "svc.py",
        env={
            "WORKERS": str(workers),
            "PRELOAD": "1" if preload else "0",
            "STRATEGY": strategy,
        },
    )
    svc.wait_serving(1, timeout=120)
    return svc


def is_worker_or_template(pid: int) -> bool:
    try:
        return any("spawn_main" in arg for arg in psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def worker_pids(svc: ServiceProcess) -> list[int]:
    return [
        pid
        for pid in svc.children()
        if is_worker_or_template(pid) and not is_template(pid) and psutil.pid_exists(pid)
    ]


def settle(svc: ServiceProcess, workers: int) -> None:
    poll_until(lambda: len(worker_pids(svc)) == workers, 60, f"{workers} workers alone")
    time.sleep(0.3)  # let the drained generation's memory go


def reload_seconds(svc: ServiceProcess, generation: int) -> float:
    mark = svc.mark()
    svc.send(signal.SIGHUP)
    found = svc.wait_for(
        rf"generation {generation} is serving \(ready in ([\d.]+)s\)", after=mark, timeout=120
    )
    return float(found.group(1))


def memory(svc: ServiceProcess) -> tuple[list[float], float]:
    """The workers' PSS, and the templates' (MiB)."""
    workers = [pss_mib(pid) for pid in worker_pids(svc)]
    templates = sum(pss_mib(pid) for pid in svc.children() if is_template(pid))
    return workers, templates


def reload_table(workdir: Path, counts: list[int], rounds: int) -> None:
    print("\n## Reload time and memory against workers\n")
    print_header(
        "workers",
        "reload, spawn (ms)",
        "reload, preload (ms)",
        "ratio",
        "PSS/worker, spawn (MiB)",
        "PSS/worker, preload, template included (MiB)",
        "ratio",
    )
    for workers in counts:
        row: dict[bool, tuple[float, float]] = {}
        for preload in (False, True):
            with start(workdir, workers, preload, "all-at-once") as svc:
                times = [reload_seconds(svc, generation) for generation in range(2, 2 + rounds)]
                settle(svc, workers)
                pss, template = memory(svc)
                row[preload] = (statistics.median(times) * 1000, (sum(pss) + template) / workers)
        (spawn_ms, spawn_pss), (fork_ms, fork_pss) = row[False], row[True]
        print_row(
            workers,
            f"{spawn_ms:.0f}",
            f"{fork_ms:.0f}",
            f"{fork_ms / spawn_ms:.2f}",
            f"{spawn_pss:.1f}",
            f"{fork_pss:.1f}",
            f"{fork_pss / spawn_pss:.2f}",
        )


class Peaks:
    """Samples a service while a reload runs (see the module docstring)."""

    def __init__(self, svc: ServiceProcess, port: int) -> None:
        self.svc = svc
        self.listener = listening_socket(svc.pid, port)
        self.workers = 0
        self.holders = 0
        self.pss = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            children = [pid for pid in self.svc.children() if psutil.pid_exists(pid)]
            workers = [pid for pid in children if is_worker_or_template(pid)]
            workers = [pid for pid in workers if not is_template(pid)]
            self.workers = max(self.workers, len(workers))
            self.holders = max(
                self.holders, sum(holds_socket(pid, self.listener) for pid in workers)
            )
            self.pss = max(self.pss, sum(pss_mib(pid) for pid in children))
            self.samples += 1

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)


def peak_table(workdir: Path) -> None:
    workers = 4
    print(f"\n## Peak during one reload: {workers} workers, max_surge=1, probation off\n")
    print_header(
        "strategy",
        "preload",
        "steady PSS (MiB)",
        "peak worker processes",
        "peak listener holders",
        "peak PSS (MiB)",
        "peak / steady",
        "reload (ms)",
        "samples",
    )
    for preload in (False, True):
        for strategy in ("all-at-once", "rolling"):
            with start(workdir, workers, preload, strategy) as svc:
                settle(svc, workers)
                steady = sum(pss_mib(pid) for pid in svc.children())
                port = int(svc.address().rpartition(":")[2])
                with Peaks(svc, port) as peaks:
                    seconds = reload_seconds(svc, 2)
                    settle(svc, workers)
                print_row(
                    strategy,
                    "yes" if preload else "no",
                    f"{steady:.0f}",
                    peaks.workers,
                    peaks.holders,
                    f"{peaks.pss:.0f}",
                    f"{peaks.pss / steady:.2f}",
                    f"{seconds * 1000:.0f}",
                    peaks.samples,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="reloads per configuration")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "svc.py").write_text(SERVICE.format(megabytes=args.megabytes, lines=LINES))
        print(
            f"# graceful: many workers, an app that writes {args.megabytes} MiB at import "
            f"({os.cpu_count()} CPUs)"
        )
        reload_table(workdir, counts, args.rounds)
        peak_table(workdir)


if __name__ == "__main__":
    main()
