"""Reload a live service under load and count what the clients lost.

    python examples/demo.py [--reloads 10] [--clients 20] [--workers 2]

Copies ``echo_asyncio.py`` into a temporary directory, starts it as a supervisor,
puts the echo load on it, then edits the copy's ``PREFIX`` and sends SIGHUP,
again and again. At the end it stops the service with SIGTERM and prints how many
requests were answered, how many failed, and how long each reload took.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from echo_load import Load

HERE = Path(__file__).resolve().parent


class Supervisor:
    """The example service running as a child process, with its log lines collected."""

    def __init__(self, script: Path, workers: int) -> None:
        env = dict(os.environ, ECHO_LISTEN="127.0.0.1:0", ECHO_WORKERS=str(workers))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            print("  | " + line, end="")
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()

    def wait_for(self, pattern: str, after: int = 0, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                for line in self.lines[after:]:
                    if match := re.search(pattern, line):
                        return match
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"demo: the service did not log {pattern!r}")
                self._new_line.wait(0.2)


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
    service = Supervisor(script, args.workers)
    took: list[float] = []
    try:
        service.wait_for(r"generation 1 is serving")
        address = service.wait_for(r"listening on (\S+)").group(1)
        load = Load(address, clients=args.clients)
        load.start()
        time.sleep(1.0)  # a second of steady traffic before the first reload
        for generation in range(2, args.reloads + 2):
            script.write_text(source.replace('b"echo: "', f'b"echo v{generation}: "'))
            mark = len(service.lines)
            service.proc.send_signal(signal.SIGHUP)
            ready = service.wait_for(
                rf"generation {generation} is serving \(ready in ([\d.]+)s\)", after=mark
            )
            took.append(float(ready.group(1)))
            time.sleep(0.5)  # let traffic flow through the new generation
        tally = load.stop()
        service.proc.send_signal(signal.SIGTERM)
        code = service.proc.wait(60)
    finally:
        if service.proc.poll() is None:
            os.killpg(service.proc.pid, signal.SIGKILL)
            service.proc.wait()
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
