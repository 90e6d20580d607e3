"""Run uvicorn's own protocol and server tests against graceful's protocol classes.

    python tests/peers/run_uvicorn_suite.py [--keep DIR] [pytest options...]

Downloads the source release of the uvicorn that is installed (it holds the test
suite), runs ``tests/protocols/test_http.py``, ``tests/protocols/test_websocket.py``
and ``tests/test_server.py`` with the :mod:`uvicorn_substitution` plugin, and
compares the failures with ``uvicorn_deviations.toml``. Exits 1 if a test fails
that is not listed there, or a listed one passes; prints the counts either way.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = [
    "tests/protocols/test_http.py",
    "tests/protocols/test_websocket.py",
    "tests/test_server.py",
]


def deviations() -> dict[str, str]:
    """Listed test id -> reason."""
    with open(HERE / "uvicorn_deviations.toml", "rb") as file:
        listed = tomllib.load(file)["deviation"]
    return {entry["test"]: entry["reason"] for entry in listed}


def fetch_source(version: str, into: Path) -> Path:
    """Download and unpack uvicorn's source release ``version``; its directory."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
         ":all:", f"uvicorn=={version}", "--dest", str(into)],
        check=True,
    )  # fmt: skip
    [archive] = into.glob(f"uvicorn-{version}.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / f"uvicorn-{version}"


def outcomes(junit: Path) -> dict[str, str]:
    """Test id -> ``passed``, ``failed`` or ``skipped`` from a JUnit XML report."""
    results = {}
    for case in ET.parse(junit).iter("testcase"):
        module = case.get("classname", "").replace(".", "/") + ".py"
        test = f"{module}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            results[test] = "failed"
        elif case.find("skipped") is not None:
            results[test] = "skipped"
        else:
            results[test] = "passed"
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", metavar="DIR", help="unpack uvicorn's source here and keep it")
    args, pytest_options = parser.parse_known_args()
    version = importlib.metadata.version("uvicorn")
    with tempfile.TemporaryDirectory(prefix="uvicorn-suite-") as scratch:
        workdir = Path(args.keep or scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        source = fetch_source(version, workdir)
        junit = workdir / "junit.xml"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(source)]))
        subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "uvicorn_substitution", "-p",
             "no:cacheprovider", "-q", "-n", "auto", f"--junitxml={junit}", *SUITE,
             *pytest_options],
            cwd=source, env=env, check=False,
        )  # fmt: skip
        results = outcomes(junit)
    expected = deviations()
    failed = {test for test, outcome in results.items() if outcome == "failed"}
    unexpected = sorted(failed - expected.keys())
    fixed = sorted(test for test in expected if results.get(test) == "passed")
    missing = sorted(test for test in expected if test not in results)
    counts = {
        kind: sum(1 for o in results.values() if o == kind)
        for kind in ("passed", "failed", "skipped")
    }
    print(
        f"uvicorn {version}'s suite against graceful's protocols: {counts['passed']} passed, "
        f"{counts['failed']} failed ({len(failed & expected.keys())} of them listed "
        f"deviations), {counts['skipped']} skipped"
    )
    for test in unexpected:
        print(f"UNEXPECTED FAILURE: {test}")
    for test in fixed:
        print(f"LISTED AS A DEVIATION BUT PASSES (update uvicorn_deviations.toml): {test}")
    for test in missing:
        print(f"LISTED AS A DEVIATION BUT DID NOT RUN: {test}")
    return 1 if unexpected or fixed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
