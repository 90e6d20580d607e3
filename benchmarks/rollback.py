"""How fast a crash of new code is survived: a rollback against a respawn, in one run.

    python benchmarks/rollback.py [--rounds 12] [--workers 1]

One echo service (asyncio, ``ctx.serve()``), started twice: with ``probation`` (a
rollback resumes the parked previous generation) and without (the crashed worker
is respawned from disk, as every peer does). Each round deploys code that crashes
on cue, and a client that opens a new connection for every request measures the
time from the crash (the crashing worker's own ``time.monotonic()``, which is
system-wide on Linux) to the first answer after it:

* **rollback**: reload to new code, make it crash; the first answer after the crash
  comes from the parked generation's processes (the old code).
* **respawn** (the spawn floor): make the serving code crash; the first answer
  from a freshly spawned replacement (a PID not seen before the crash). The restart backoff
  the supervisor waited (0.1 s, doubling with each crash of the slot) is
  subtracted: what a respawn costs even with no backoff at all.

It also prints the memory of the parked generation (USS and PSS of its processes,
from /proc), the cost of keeping it through the probation.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
from common import LINES, p90, print_header, print_row

from graceful.testing import ServiceProcess, poll_until

SERVICE = """\
import os
import time

from collections.abc import AsyncIterator

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

import graceful

PREFIX = {prefix!r}
ARM = os.environ["BENCH_ARM"]


{lines}

async def echo(stream):
    async for line in lines(stream):
        await stream.send(PREFIX + b" " + str(os.getpid()).encode() + b" " + line + b"\\n")


async def crash_on_cue():
    # Only code that is told to crash does: it claims the cue file, records when,
    # and exits at once.
    while True:
        await anyio.sleep(0.005)
        if PREFIX.startswith(b"crashes") and os.path.exists(ARM):
            try:
                os.rename(ARM, ARM + ".taken")
            except OSError:
                continue
            with open(ARM + ".at", "w") as record:
                record.write(repr(time.monotonic()))
            os._exit(3)


@graceful.service(
    listen=["127.0.0.1:0"],
    workers=int(os.environ["BENCH_WORKERS"]),
    probation=float(os.environ["BENCH_PROBATION"]),
)
async def main(ctx):
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(crash_on_cue)
        await ctx.serve(echo)
        tasks.cancel_scope.cancel()


if __name__ == "__main__":
    main.run()
"""


def ask(address: tuple[str, int]) -> tuple[bytes, int] | None:
    """One request on a new connection; the answer's prefix and the PID that gave it,
    or None if it failed."""
    try:
        with socket.create_connection(address, timeout=5) as sock:
            sock.sendall(b"x\n")
            answer = sock.makefile("rb").readline()
    except OSError:
        return None
    if not answer.endswith(b" x\n"):
        return None
    prefix, pid = answer[:-3].split()
    return prefix, int(pid)


def crash_to_answer(
    address: tuple[str, int], arm: Path, wanted: Callable[[bytes, int], bool]
) -> float:
    """Cue the crash, then ask until an answer that is ``wanted`` comes after it;
    seconds from the crash to that answer."""
    taken = Path(f"{arm}.taken")
    at = Path(f"{arm}.at")
    for stale in (taken, at):
        stale.unlink(missing_ok=True)
    arm.write_text("")
    while True:
        answer = ask(address)
        answered = time.monotonic()
        if at.exists() and at.read_text() and answer is not None and wanted(*answer):
            crashed = float(at.read_text())
            if answered > crashed:
                return answered - crashed


def start(workdir: Path, probation: float, workers: int) -> tuple[ServiceProcess, Path]:
    script = workdir / "svc.py"
    script.write_text(SERVICE.format(prefix=b"old", lines=LINES))
    arm = workdir / "arm"
    env = {
        "BENCH_ARM": str(arm),
        "BENCH_WORKERS": str(workers),
        "BENCH_PROBATION": str(probation),
    }
    svc = ServiceProcess(script, env=env)
    svc.wait_serving(1)
    return svc, arm


def address_of(svc: ServiceProcess) -> tuple[str, int]:
    host, _, port = svc.address().rpartition(":")
    return host, int(port)


def is_new(before: set[int], _prefix: bytes, pid: int) -> bool:
    return pid not in before


def workers_are(svc: ServiceProcess, pids: list[int]) -> bool:
    return sorted(svc.worker_pids()) == pids


def rollbacks(workdir: Path, rounds: int, workers: int) -> tuple[list[float], list[int]]:
    """Crash-to-old-answer times, and the parked generation's memory (bytes, USS and
    PSS summed over its processes, measured in the first round)."""
    svc, arm = start(workdir, probation=600, workers=workers)
    times: list[float] = []
    memory: list[int] = []
    try:
        generation = 1
        for _ in range(rounds):
            parked = sorted(svc.worker_pids())
            (workdir / "svc.py").write_text(SERVICE.format(prefix=b"crashes", lines=LINES))
            generation += 1
            mark = svc.mark()
            svc.send(signal.SIGHUP)
            svc.wait_serving(generation, after=mark)
            if not memory:
                infos = [psutil.Process(pid).memory_full_info() for pid in parked]
                memory = [sum(i.uss for i in infos), sum(i.pss for i in infos)]
            times.append(crash_to_answer(address_of(svc), arm, lambda prefix, _: prefix == b"old"))
            svc.wait_for(r"rolled back: generation \d+ serves again", after=mark)
            poll_until(functools.partial(workers_are, svc, parked), 30, "the rollback")
            (workdir / "svc.py").write_text(SERVICE.format(prefix=b"old", lines=LINES))
    finally:
        svc.close()
    return times, memory


def respawns(workdir: Path, rounds: int, workers: int) -> list[float]:
    """Crash-to-answer times through a respawn from disk, less the restart backoff
    the supervisor waited (it grows with every crash of the same slot)."""
    svc, arm = start(workdir, probation=0, workers=workers)
    times: list[float] = []
    try:
        (workdir / "svc.py").write_text(SERVICE.format(prefix=b"crashes", lines=LINES))
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        svc.wait_serving(2, after=mark)
        for _ in range(rounds):
            mark = svc.mark()
            before = set(svc.worker_pids())
            took = crash_to_answer(address_of(svc), arm, functools.partial(is_new, before))
            backoff = svc.wait_for(r"restarting it in ([\d.]+)s", after=mark)
            svc.wait_for(r"worker \d is back in service", after=mark)
            times.append(took - float(backoff.group(1)))
    finally:
        svc.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        rolled, memory = rollbacks(Path(first), args.rounds, args.workers)
        respawned = respawns(Path(second), args.rounds, args.workers)
    print(f"{args.rounds} crashes each, {args.workers} worker(s), echo service, milliseconds")
    print_header("path", "crash to answering, median", "p90")
    for name, values in (
        ("rollback: the parked generation resumes", rolled),
        ("respawn from disk, restart backoff subtracted (the spawn floor)", respawned),
    ):
        print_row(name, f"{statistics.median(values) * 1000:.1f}", f"{p90(values) * 1000:.1f}")
    print(
        f"parked generation ({args.workers} process(es)): USS {memory[0] / 2**20:.1f} MiB, "
        f"PSS {memory[1] / 2**20:.1f} MiB"
    )
    ratio = statistics.median(respawned) / statistics.median(rolled)
    print(f"spawn floor / rollback, medians: {ratio:.1f}x")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
