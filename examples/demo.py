"""Reload a live service under load and count what the clients lost.

    python examples/demo.py [--reloads 10] [--clients 20] [--workers 2]

Copies ``echo_asyncio.py`` into a temporary directory, starts it as a supervisor,
puts the echo load on it, then edits the copy's ``PREFIX`` and sends SIGHUP,
again and again. At the end it stops the service with SIGTERM and prints how many
requests were answered, how many failed, and how long each reload took. It drives
the service with ``graceful.testing`` (``pip install graceful-restarts[testing]``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from echo_load import Load

from graceful.testing import ServiceProcess

HERE = Path(__file__).resolve().parent


def echo(line: str) -> None:
    """Show one of the service's log lines, indented under the demo's own output."""
    print("  | " + line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="graceful-demo-"))
    script = workdir / "echo_asyncio.py"
    shutil.copy(HERE / "echo_asyncio.py", script)
    source = script.read_text()
    env = {"ECHO_LISTEN": "127.0.0.1:0", "ECHO_WORKERS": str(args.workers)}
    service = ServiceProcess(script, env=env, on_line=echo)
    took: list[float] = []
    try:
        service.wait_serving(1)
        load = Load(service.address(), clients=args.clients)
        load.start()
        time.sleep(1.0)  # a second of steady traffic before the first reload
        for generation in range(2, args.reloads + 2):
            script.write_text(source.replace('b"echo: "', f'b"echo v{generation}: "'))
            mark = service.mark()
            service.send(signal.SIGHUP)
            ready = service.wait_for(
                rf"generation {generation} is serving \(ready in ([\d.]+)s\)", after=mark
            )
            took.append(float(ready.group(1)))
            time.sleep(0.5)  # let traffic flow through the new generation
        tally = load.stop()
        service.send(signal.SIGTERM)
        code = service.wait_exit(60)
    except AssertionError as error:  # a bounded wait of the harness ran out
        raise SystemExit(f"demo: {str(error).splitlines()[0]}") from None
    finally:
        service.close()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        f"reloads:            {len(took)} (median {statistics.median(took) * 1000:.0f} ms, "
        f"max {max(took) * 1000:.0f} ms from SIGHUP to the new generation serving)"
    )
    print(f"requests answered:  {tally.ok}")
    print(f"requests failed:    {tally.failed} {dict(tally.failures) or ''}")
    print(f"answers by version: {dict(tally.prefixes)}")
    print(f"supervisor exit:    {code}")
    return 0 if tally.failed == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
