"""Where a reload's time goes, beside the cold-spawn floor, in one run.

    python benchmarks/reload_latency.py [--reloads 12] [--floors 12]

For two services, a minimal raw ``@graceful.service`` echo and a minimal ASGI app
under ``graceful serve`` (uvicorn), it measures, each in the same run:

* **reload**: from SIGHUP to the first answer from the new code. The service's
  file is edited (a new version string), SIGHUP is sent, and a client asks on a new
  connection every millisecond until the answer carries the new version;
* **floor**: a cold multiprocess spawn that imports graceful, anyio (and uvicorn
  for the ASGI app) and the same module, and reports over a Pipe, from
  ``Process.start()`` to the report. This is what a reload would cost if graceful
  added nothing and started a new interpreter;
* **phases**: the supervisor's own timeline of each reload (``graceful status``'s
  ``last_reload.phases``: its monotonic clock, see ``graceful/core/timeline.py``).

Each service runs with the warm standby (the default) and without it
(``--no-standby``), one after the other. Printed: medians (and p90 of the reload),
the ratio of the reload to the floor, and the median time of every phase.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import VERSION_ECHO, ask_http, ask_raw, p90, print_header, print_row, until_answer

from graceful import Control
from graceful.core.timeline import PHASES
from graceful.testing import ServiceProcess

ASGI = """\
VERSION = {version!r}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = VERSION.encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({{"type": "http.response.start", "status": 200, "headers": headers}})
    await send({{"type": "http.response.body", "body": body}})
"""

#: A cold spawn that imports what the worker needs and the service's module.
FLOOR = """\
import json, sys, time

import multiprocess


def child(conn, path, extra):
    import importlib, importlib.util
    import anyio
    import graceful
    for name in extra:
        importlib.import_module(name)
    spec = importlib.util.spec_from_file_location("service_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    conn.send("imported")


if __name__ == "__main__":
    path, count, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    context = multiprocess.get_context("spawn")
    times = []
    for _ in range(count):
        ours, theirs = context.Pipe()
        process = context.Process(target=child, args=(theirs, path, extra))
        started = time.monotonic()
        process.start()
        ours.recv()
        times.append(time.monotonic() - started)
        process.join()
    print(json.dumps(times))
"""


def floor(workdir: Path, module: Path, count: int, extra: list[str]) -> list[float]:
    """Cold spawns in a clean interpreter (no ``__main__`` for the children to import)."""
    script = workdir / "floor.py"
    script.write_text(FLOOR)
    out = subprocess.run(
        [sys.executable, str(script), str(module), str(count), *extra],
        capture_output=True,
        text=True,
        check=True,
        cwd=workdir,
    )
    return [float(value) for value in json.loads(out.stdout)]


def reloads(
    svc: ServiceProcess,
    *,
    pid_file: Path,
    path: Path,
    source: str,
    ask: Callable[[tuple[str, int]], bytes],
    count: int,
    memory: dict[str, float],
) -> tuple[list[float], list[dict[str, float]]]:
    """``count`` reloads: SIGHUP to the new version's first answer, and the phases."""
    svc.wait_serving(1, timeout=60)
    host, _, port = svc.address().rpartition(":")
    address = (host, int(port))
    control = Control(pid_file)
    answers, phases = [], []
    memory.update(footprint(svc))
    for number in range(1, count + 1):
        version = f"v{number}"
        path.write_text(source.format(version=version))
        time.sleep(0.3)  # let the previous generation drain
        wait_for_standby(control)
        mark = svc.mark()
        started = time.monotonic()
        svc.send(signal.SIGHUP)
        if not until_answer(ask, address, version.encode(), interval=0.001):
            raise SystemExit(f"{version} never answered:\n{svc.output}")
        answers.append(time.monotonic() - started)
        svc.wait_serving(number + 1, after=mark, timeout=30)
        deadline = time.monotonic() + 5
        while True:  # the old generation's "closed" comes a moment later
            last = control.status()["last_reload"]
            if last["generation"] == number + 1 and "closed" in last["phases"]:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        phases.append(last["phases"])
    return answers, phases


def pss_mib(pid: int) -> float:
    """The proportional set size of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no Pss for {pid}")


def footprint(svc: ServiceProcess) -> dict[str, float]:
    """The PSS of the worker and, once warm, of the standby (if there is one, within
    a few seconds), in MiB."""
    found: dict[str, float] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "standby" not in found:
        for pid in svc.processes():
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            if name in ("graceful-worker", "graceful-warm"):
                found["worker" if name == "graceful-worker" else "standby"] = pss_mib(pid)
        time.sleep(0.1)
    return found


def wait_for_standby(control: Control) -> None:
    """Until the standby is warm (at most 10 s), unless it is turned off."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        standby = control.status()["standby"]
        if standby is None or standby["warm"]:
            return
        time.sleep(0.01)


def report(
    name: str,
    answers: list[float],
    phases: list[dict[str, float]],
    floor_ms: float,
    memory: dict[str, float],
) -> None:
    ms = [a * 1000 for a in answers]
    median = statistics.median(ms)
    standby = f"{memory['standby']:.1f}" if "standby" in memory else "—"
    print_row(
        name,
        f"{median:.1f}",
        f"{p90(ms):.1f}",
        f"{floor_ms:.1f}",
        f"{median / floor_ms:.2f}",
        f"{memory.get('worker', 0):.1f}",
        standby,
        *(
            f"{statistics.median(p[phase] for p in phases if phase in p):.1f}"
            if any(phase in p for p in phases)
            else "—"
            for phase in PHASES[1:]
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=12)
    parser.add_argument("--floors", type=int, default=12)
    parser.add_argument(
        "--modes",
        default="standby,no-standby",
        help="comma-separated: standby, no-standby, default (no option given)",
    )
    args = parser.parse_args()
    print_header(
        "service",
        "SIGHUP to new answer, median (ms)",
        "p90",
        "cold-spawn floor, median (ms)",
        "ratio",
        "worker PSS (MiB)",
        "standby PSS (MiB)",
        *PHASES[1:],
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        raw = workdir / "svc.py"
        raw.write_text(VERSION_ECHO.format(version="v0"))
        asgi = workdir / "app.py"
        asgi.write_text(ASGI.format(version="v0"))
        for label in args.modes.split(","):
            pid_file = workdir / "svc.pid"
            memory: dict[str, float] = {}
            flags = ["--no-standby"] if label == "no-standby" else []
            with ServiceProcess(raw, args=[str(pid_file), *flags], cwd=workdir) as svc:
                answers, phases = reloads(
                    svc, pid_file=pid_file, path=raw, source=VERSION_ECHO, ask=ask_raw,
                    count=args.reloads, memory=memory,
                )  # fmt: skip
            floor_ms = statistics.median(floor(workdir, raw, args.floors, [])) * 1000
            report(f"raw @graceful.service, {label}", answers, phases, floor_ms, memory)
            pid_file = workdir / "app.pid"
            memory = {}
            command = ["serve", "app:app", "--listen", "127.0.0.1:0", "--no-access-log",
                       "--probation", "0", "--pid-file", str(pid_file), *flags]  # fmt: skip
            with ServiceProcess(asgi, module="graceful", args=command, cwd=workdir) as svc:
                answers, phases = reloads(
                    svc, pid_file=pid_file, path=asgi, source=ASGI, ask=ask_http, count=args.reloads,
                    memory=memory,
                )  # fmt: skip
            floor_ms = statistics.median(floor(workdir, asgi, args.floors, ["uvicorn"])) * 1000
            report(f"graceful serve (uvicorn), {label}", answers, phases, floor_ms, memory)


if __name__ == "__main__":
    main()
