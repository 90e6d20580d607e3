"""Running wrk and reading its report."""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class WrkResult:
    """What one wrk run saw. Latencies are in milliseconds (of completed requests)."""

    requests: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    non_2xx: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests_per_s: float

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non_2xx

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "socket_errors": self.socket_errors, "failed": self.failed}


def parse(output: str) -> WrkResult:
    """Read wrk's report (run with ``--latency``)."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output)
        if match is None:
            raise ValueError(f"wrk's report has no {pattern!r}:\n{output}")
        return match

    errors = [0, 0, 0, 0]
    if socket := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors = [int(n) for n in socket.groups()]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(find(r"(\d+) requests in").group(1)),
        connect_errors=errors[0],
        read_errors=errors[1],
        write_errors=errors[2],
        timeouts=errors[3],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        p50_ms=_ms(find(r"\n\s+50%\s+(\S+)").group(1)),
        p99_ms=_ms(find(r"\n\s+99%\s+(\S+)").group(1)),
        max_ms=_ms(find(r"Latency\s+\S+\s+\S+\s+(\S+)").group(1)),
        requests_per_s=float(find(r"Requests/sec:\s+([\d.]+)").group(1)),
    )


def start(
    url: str,
    seconds: float,
    *,
    keep_alive: bool = True,
    connections: int = 50,
    timeout: float = 5.0,
) -> subprocess.Popen[str]:
    """Start ``wrk -t2 -cN -dS --latency --timeout T`` (with ``Connection: close``
    unless keep-alive). wrk counts a request that takes ``timeout`` or longer as a
    timeout, and leaves it out of the latencies."""
    command = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{math.ceil(seconds)}s",
        "--latency",
        "--timeout",
        f"{math.ceil(timeout)}s",
    ]
    if not keep_alive:
        command += ["-H", "Connection: close"]
    return subprocess.Popen(
        [*command, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen[str], timeout: float) -> WrkResult:
    output, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {output}")
    return parse(output)
