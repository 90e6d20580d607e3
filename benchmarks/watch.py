"""Development mode: the time from a save to the new code answering, in one run.

    python benchmarks/watch.py [--saves 12]

Two services under ``--watch``: the raw asyncio echo (``graceful run``) and a
Starlette app (``graceful serve``, uvicorn). Each save is written beside the file
and renamed into place, as editors do; a client then asks on a new connection every
2 ms until the answer carries the saved version. Printed: the median and the 90th
percentile of the save-to-answer time, beside the supervisor's own reload time
(its status line's ``serving in``), so that what the watching adds shows apart.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import VERSION_ECHO, ask_http, ask_raw, print_header, print_row, until_answer

from graceful.testing import ServiceProcess

STARLETTE = """\
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

VERSION = {version!r}


async def home(request):
    return PlainTextResponse(VERSION)


app = Starlette(routes=[Route("/", home)])
"""

SERVING = re.compile(r"generation (\d+) serving in ([\d.]+)s")


def save(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def measure(
    name: str,
    *,
    svc: ServiceProcess,
    path: Path,
    source: str,
    ask: Callable[[tuple[str, int]], bytes],
    saves: int,
) -> None:
    svc.wait_serving(1, timeout=60)
    host, _, port = svc.address().rpartition(":")
    address = (host, int(port))
    answers, reloads = [], []
    for number in range(1, saves + 1):
        version = f"v{number}"
        mark = svc.mark()
        started = time.monotonic()
        save(path, source.format(version=version))
        if not until_answer(ask, address, version.encode(), interval=0.002):
            raise SystemExit(f"{version} never answered:\n{svc.output}")
        answers.append(time.monotonic() - started)
        found = svc.wait_for(r"generation \d+ serving in", after=mark, timeout=30)
        took = SERVING.search(found.string)
        assert took is not None
        reloads.append(float(took.group(2)))
        time.sleep(0.3)  # let the previous generation drain before the next save
    answers_ms = sorted(a * 1000 for a in answers)
    print_row(
        name,
        f"{statistics.median(answers_ms):.0f}",
        f"{answers_ms[int(0.9 * (len(answers_ms) - 1))]:.0f}",
        f"{statistics.median(reloads) * 1000:.0f}",
        saves,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saves", type=int, default=12)
    args = parser.parse_args()
    print_header(
        "service",
        "save to new answer, median (ms)",
        "p90 (ms)",
        "reload alone, median (ms)",
        "saves",
    )
    services = [
        # (name, file, source, graceful's arguments, how to ask)
        ("graceful run (raw asyncio echo)", "svc.py", VERSION_ECHO,
         ["run", "svc:main", "--watch"], ask_raw),
        ("graceful serve (Starlette on uvicorn)", "app.py", STARLETTE,
         ["serve", "app:app", "--watch", "--listen", "127.0.0.1:0", "--no-access-log",
          "--probation", "0"], ask_http),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name, filename, source, arguments, ask in services:
            path = workdir / filename
            save(path, source.format(version="v0"))
            with ServiceProcess(path, module="graceful", args=arguments, cwd=workdir) as svc:
                measure(name, svc=svc, path=path, source=source, ask=ask, saves=args.saves)


if __name__ == "__main__":
    main()
