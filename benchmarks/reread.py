"""What reading the configuration again costs a reload, in one run.

    python benchmarks/reread.py [--reloads N]

Two services of the same small ASGI app run side by side, ``graceful serve app:app
--workers 2 --probation 0``: one given every setting on its command line, the other
the same settings from a ``graceful.toml`` with an ``[env]`` table and an env file,
which each reload reads again (``graceful/supervisor/reconfigure.py``). They are
reloaded in turn, ``N`` times each (default 20), with ``graceful reload --wait``; the
median and the 90th percentile of the time each reload took until the new
generation served (as the supervisor reports it; each reload waits for the warm
standby first, as a reload between deploys finds it) are printed side by side, with
their ratio. Turns alternate, so that the machine's noise falls on both alike.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from graceful import Control

APP = """\
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = os.environ.get("DATABASE_URL", "").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""

SETTINGS = ["--workers", "2", "--probation", "0", "--timeout-keep-alive", "5", "--header", "X-A: b"]
CONFIGURATION = """\
workers = 2
probation = 0
timeout_keep_alive = 5
headers = ["X-A: b"]
env_file = ".env"

[env]
DATABASE_URL = "postgres://db/app"
"""


def start(directory: Path, options: list[str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "graceful", "serve", "app:app", "--listen", "127.0.0.1:0"]
    command += ["--pid-file", str(directory / "pid"), "--no-access-log", *options]
    return subprocess.Popen(
        command, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def wait_for_pid_file(directory: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (directory / "pid").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the service in {directory} did not start")
        time.sleep(0.05)


def reload(directory: Path) -> float:
    """One reload, once the warm standby is ready (as between deploys): the seconds
    until the new generation served, as the supervisor reports it."""
    control = Control(directory / "pid")
    deadline = time.monotonic() + 30
    while not (control.status().get("standby") or {}).get("warm"):
        if time.monotonic() > deadline:
            raise SystemExit(f"the standby of {directory} never became warm")
        time.sleep(0.05)
    outcome = control.reload(timeout=60)
    if outcome.outcome != "serving" or outcome.seconds is None:
        raise SystemExit(f"reload failed: {outcome}")
    return float(outcome.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as top:
        flags, configured = Path(top, "flags"), Path(top, "configured")
        for directory in (flags, configured):
            directory.mkdir()
            (directory / "app.py").write_text(APP)
        (configured / "graceful.toml").write_text(CONFIGURATION)
        (configured / ".env").write_text("FROM_ENV_FILE=1\nOTHER=2\n")
        services = [start(flags, SETTINGS), start(configured, [])]
        try:
            for directory in (flags, configured):
                wait_for_pid_file(directory)
            times: dict[str, list[float]] = {"flags": [], "configured": []}
            for _ in range(args.reloads):
                times["flags"].append(reload(flags))
                times["configured"].append(reload(configured))
        finally:
            for service in services:
                service.send_signal(signal.SIGTERM)
            for service in services:
                service.wait(60)
    print(f"{args.reloads} reloads each, 2 workers, {os.cpu_count()} CPUs")
    print("| settings from | median (ms) | p90 (ms) |")
    print("| --- | --- | --- |")
    medians = {}
    for name, values in times.items():
        medians[name] = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"| {name} | {medians[name] * 1000:.1f} | {p90 * 1000:.1f} |")
    print(f"ratio of medians (configured / flags): {medians['configured'] / medians['flags']:.2f}")


if __name__ == "__main__":
    main()
