"""What 200 reloads leave behind in the supervisor, with every capability on.

    python benchmarks/soak.py [--reloads 200] [--workers 2] [--clients 8]

One echo service (asyncio, ``ctx.serve()``) with probation (each reload parks the
previous generation), the warm standby, rolling reloads and preload, under a light
load of concurrent clients. The code on disk changes before every reload, and the
script waits for each new generation to serve. Every ``--every`` reloads it samples
the supervisor's open descriptors, its resident memory, its children (live and
zombie) and the service's processes; at the end, the load's failed requests.

A leak shows as a column that grows with the reloads instead of staying flat.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import psutil
from common import LINES, print_header, print_row
from echo_load import Load

from graceful.testing import ServiceProcess, poll_until

SERVICE = """\
from collections.abc import AsyncIterator

from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

import graceful

PREFIX = {prefix!r}


{lines}

async def echo(stream):
    async for line in lines(stream):
        await stream.send(PREFIX + line + b"\\n")


@graceful.service(
    listen=["127.0.0.1:0"],
    workers={workers},
    probation=30.0,
    strategy="rolling",
    preload=True,
    standby=True,
    drain_timeout=5.0,
)
async def main(ctx: graceful.Context) -> None:
    await ctx.serve(echo)


if __name__ == "__main__":
    main.run()
"""


def sample(svc: ServiceProcess) -> dict[str, float]:
    """The supervisor's descriptors, memory and children, and the service's processes."""
    supervisor = psutil.Process(svc.pid)
    children = supervisor.children()
    zombies = [child for child in children if child.status() == psutil.STATUS_ZOMBIE]
    return {
        "fds": supervisor.num_fds(),
        "rss_mib": supervisor.memory_info().rss / 2**20,
        "children": len(children) - len(zombies),
        "zombies": len(zombies),
        "processes": len(svc.processes()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory) / "svc.py"
        script.write_text(SERVICE.format(prefix=b"v1: ", workers=args.workers, lines=LINES))
        env = {"PYTHONDONTWRITEBYTECODE": "1"}
        with ServiceProcess(script, env=env) as svc:
            svc.wait_serving(1)
            svc.warm_standby()
            rows = [(0, sample(svc))]
            started = time.monotonic()
            with Load(svc.address(), clients=args.clients) as load:
                poll_until(lambda: load.tally.ok > 100, 20, "answers")
                for generation in range(2, args.reloads + 2):
                    script.write_text(
                        SERVICE.format(
                            prefix=f"v{generation}: ".encode(), workers=args.workers, lines=LINES
                        )
                    )
                    mark = svc.mark()
                    svc.send(signal.SIGHUP)
                    svc.wait_serving(generation, after=mark, timeout=60)
                    done = generation - 1
                    if done % args.every == 0 or done == args.reloads:
                        # the service quiet again (the parked generation and the
                        # standby settled) before it is measured
                        svc.warm_standby()
                        rows.append((done, sample(svc)))
            took = time.monotonic() - started
            tally = load.tally
            svc.send(signal.SIGTERM)
            code = svc.wait_exit(60)
            poll_until(lambda: not svc.processes(), 20, "every process of the service gone")
    print(
        f"{args.reloads} reloads (probation 30 s, standby, rolling, preload, "
        f"{args.workers} workers) under {args.clients} clients in {took:.0f} s"
    )
    print()
    print_header(
        "reloads", "supervisor fds", "supervisor RSS (MiB)", "live children", "zombies", "processes"
    )
    for done, row in rows:
        print_row(
            done,
            f"{row['fds']:.0f}",
            f"{row['rss_mib']:.1f}",
            f"{row['children']:.0f}",
            f"{row['zombies']:.0f}",
            f"{row['processes']:.0f}",
        )
    print()
    print(
        f"requests: {tally.ok} answered, {tally.failed} failed; exit status {code}; "
        "no process left after the stop"
    )
    return 0 if tally.failed == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
