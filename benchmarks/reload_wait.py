"""What ``graceful reload --wait`` adds over a bare SIGHUP, in one run.

    python benchmarks/reload_wait.py [--reloads 20]

Starts the echo example with a PID file and reloads it ``--reloads`` times each
way, one after the other:

* ``SIGHUP``: ``graceful reload`` (a signal) and then the supervisor's log line
  saying the new generation serves: what a deploy script had to do before;
* ``graceful reload --wait``: the command, until it exits;
* ``Control.reload()``: the same from Python, without an interpreter to start.

For each it prints the median and p90 of the wall time and of the part that is
not the reload itself (the wall time minus the reload's own duration, as the
supervisor measured it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import p90, print_header, print_row

from graceful import Control
from graceful.testing import ServiceProcess, poll_until

ROOT = Path(__file__).resolve().parent.parent


Timings = tuple[list[float], list[float]]
CLI = [sys.executable, "-m", "graceful"]


def by_signal(svc: ServiceProcess, pid_file: Path, first: int, reloads: int) -> Timings:
    """``graceful reload`` (SIGHUP), then the log line saying generation N serves."""
    walls, extra = [], []
    for generation in range(first, first + reloads):
        mark = svc.mark()
        started = time.monotonic()
        subprocess.run([*CLI, "reload", "--pid-file", str(pid_file)], check=True)
        line = svc.wait_for(
            rf"generation {generation} is serving \(ready in ([\d.]+)s\)", after=mark
        )
        wall = time.monotonic() - started
        walls.append(wall)
        extra.append(wall - float(line.group(1)))
    return walls, extra


def by_command(pid_file: Path, first: int, reloads: int) -> Timings:
    """``graceful reload --wait``, until it exits."""
    walls, extra = [], []
    for generation in range(first, first + reloads):
        started = time.monotonic()
        done = subprocess.run(
            [*CLI, "reload", "--wait", "--pid-file", str(pid_file)],
            check=True,
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - started
        assert done.stdout.startswith(f"generation {generation} serving"), done.stdout
        seconds = Control(pid_file).status()["last_reload"]["seconds"]
        walls.append(wall)
        extra.append(wall - seconds)
    return walls, extra


def by_api(pid_file: Path, first: int, reloads: int) -> Timings:
    """``Control(pid_file).reload()``."""
    walls, extra = [], []
    control = Control(pid_file)
    for generation in range(first, first + reloads):
        started = time.monotonic()
        outcome = control.reload(timeout=60)
        wall = time.monotonic() - started
        assert (outcome.generation, outcome.outcome) == (generation, "serving")
        walls.append(wall)
        extra.append(wall - outcome.seconds)
    return walls, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=20)
    n = parser.parse_args().reloads
    with tempfile.TemporaryDirectory() as workdir:
        pid_file = Path(workdir) / "echo.pid"
        env = {"ECHO_LISTEN": "127.0.0.1:0", "ECHO_PID_FILE": str(pid_file)}
        svc = ServiceProcess(ROOT / "examples" / "echo_asyncio.py", env=env)
        try:
            svc.wait_serving(1)
            poll_until(pid_file.exists, 30, "the PID file")
            results = {
                "SIGHUP, then the log line": by_signal(svc, pid_file, 2, n),
                "graceful reload --wait": by_command(pid_file, 2 + n, n),
                "Control(pid_file).reload()": by_api(pid_file, 2 + 2 * n, n),
            }
        finally:
            svc.close()
    print(f"{n} reloads each, echo example, milliseconds")
    print_header("way", "wall median", "wall p90", "beyond the reload itself, median", "p90")
    for name, (walls, extra) in results.items():
        print_row(
            name,
            f"{statistics.median(walls) * 1000:.1f}",
            f"{p90(walls) * 1000:.1f}",
            f"{statistics.median(extra) * 1000:.1f}",
            f"{p90(extra) * 1000:.1f}",
        )


if __name__ == "__main__":
    main()
