"""Deploys as deploy tools make them: a directory per release, each with its own
virtual environment, a ``current`` link switched between them, old releases pruned.

Each release has its own virtual environment (a real ``python -m venv``, with the
test environment's packages reachable through a ``.pth`` file, as a shared wheel
cache would give them), its own copy of a small local package ``relpkg`` whose
version differs per release, a console script ``graceful`` whose shebang names the
release's physical interpreter (as pip writes it), and an ASGI app that answers with
its release, ``relpkg``'s version, and the interpreter it runs on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import ROOT, ServiceProcess, ask, connect, graceful_cli, poll_until, running
from http_load import HttpLoad
from services import write_service

APP = """\
import json
import os
import sys

import relpkg

RELEASE = {release!r}
{extra}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({{"type": message["type"] + ".complete"}})
            if message["type"] == "lifespan.shutdown":
                return
    body = json.dumps(
        {{"release": RELEASE, "relpkg": relpkg.VERSION, "executable": sys.executable,
         "prefix": sys.prefix, "cwd": os.getcwd(), "relpkg_file": relpkg.__file__}}
    )
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": body.encode()}})
"""

#: How each start is made, as a user's shell or service manager makes it.
INVOCATIONS = ("shell", "service_manager", "python_m")


@dataclass
class Deployment:
    """``root/releases/rN`` and ``root/current`` pointing at one of them."""

    root: Path

    @property
    def current(self) -> Path:
        return self.root / "current"

    def release(self, name: str, relpkg_version: str, *, extra: str = "") -> Path:
        """Make release ``name``: its app, its venv, its ``relpkg`` and console script."""
        release = self.root / "releases" / name
        release.mkdir(parents=True)
        (release / "app.py").write_text(APP.format(release=name, extra=extra))
        venv = release / ".venv"
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
        )
        site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
        package = site / "relpkg"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"VERSION = {relpkg_version!r}\n")
        metadata = site / f"relpkg-{relpkg_version}.dist-info"
        metadata.mkdir()
        (metadata / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: relpkg\nVersion: {relpkg_version}\n"
        )
        # the test environment's packages (graceful's dependencies, the servers) and
        # this graceful, after the release's own site-packages
        shared = sysconfig.get_path("purelib")
        (site / "shared.pth").write_text(f"{shared}\n{ROOT}\n")
        script = venv / "bin" / "graceful"
        script.write_text(
            f"#!{venv}/bin/python3\nimport re\nimport sys\nfrom graceful._cli import main\n"
            "if __name__ == '__main__':\n"
            "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
            "    sys.exit(main())\n"
        )
        script.chmod(0o755)
        return release

    def switch(self, name: str) -> None:
        """Point ``current`` at release ``name`` atomically (``ln -s`` + ``mv -T``)."""
        staged = self.root / "current.staged"
        staged.symlink_to(Path("releases") / name)
        staged.replace(self.current)


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    deployment = Deployment(tmp_path / "srv")
    deployment.release("r1", "1.0")
    deployment.release("r2", "2.0")
    deployment.switch("r1")
    return deployment


def start(deployment: Deployment, invocation: str, *args: str, pid_file: Path) -> ServiceProcess:
    """Start ``graceful serve app:app`` from ``current`` as ``invocation`` does."""
    current = deployment.current
    serve = [
        "serve", "app:app", "--listen", "127.0.0.1:0", "--pid-file", str(pid_file),
        "--health", "127.0.0.1:0", "--probation", "0", *args,
    ]  # fmt: skip
    # The test process's own $PWD names another directory: as under a service
    # manager, graceful cannot take the logical working directory from it.
    env = {"PYTHONPATH": "", "PWD": str(ROOT)}
    if invocation == "shell":
        # cd current && .venv/bin/graceful serve ...: the shell sets $PWD
        command = [".venv/bin/graceful", *serve]
        env["PWD"] = str(current)
    elif invocation == "service_manager":
        # WorkingDirectory=/srv/app/current, ExecStart=/srv/app/current/.venv/bin/graceful
        command = [str(current / ".venv/bin/graceful"), *serve]
    else:
        command = [str(current / ".venv/bin/python"), "-m", "graceful", *serve]
    return running(current / "app.py", command=command, cwd=current, env=env)


def answer(address: str, path: str = "/") -> dict[str, str]:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
        body: dict[str, str] = json.loads(response.read())
        return body


def health(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def status(pid_file: Path) -> dict[str, object]:
    result = graceful_cli("status", "--json", "--pid-file", str(pid_file))
    assert result.returncode == 0, result.stderr
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def reload(pid_file: Path) -> subprocess.CompletedProcess[str]:
    return graceful_cli("reload", "--wait", "--pid-file", str(pid_file))


def runs_release(body: dict[str, str], deployment: Deployment, name: str, version: str) -> bool:
    release = deployment.root / "releases" / name
    return (
        body["release"] == name
        and body["relpkg"] == version
        and Path(body["executable"]).parent.parent == release / ".venv"
        and Path(body["relpkg_file"]).is_relative_to(release)
        and Path(body["cwd"]) == release
    )


@pytest.mark.parametrize("invocation", INVOCATIONS)
def test_a_switched_release_runs_its_own_code_interpreter_and_packages(
    deployment: Deployment, invocation: str, tmp_path: Path
) -> None:
    pid_file = tmp_path / "svc.pid"
    with start(deployment, invocation, pid_file=pid_file) as svc:
        svc.wait_serving(1)
        address = svc.address()
        health_address = svc.wait_for(r"health endpoint on http://(\S+)/ready").group(1)
        first = answer(address)
        assert runs_release(first, deployment, "r1", "1.0"), first
        with HttpLoad(f"http://{address}/", clients=8) as load:
            deployment.switch("r2")
            result = reload(pid_file)
            assert result.returncode == 0, result.stderr + svc.output
            poll_until(lambda: load.tally.ok > 0, 10, "answers")
        assert load.tally.failed == 0, load.tally.as_dict()
        for _ in range(5):
            body = answer(address)
            assert runs_release(body, deployment, "r2", "2.0"), (body, svc.output)
        described = status(pid_file)
        serving = [g for g in described["generations"] if g["state"] == "serving"]  # type: ignore[attr-defined]
        assert serving[0]["release"] == str(deployment.root / "releases" / "r2")
        assert Path(serving[0]["interpreter"]).is_relative_to(deployment.root / "releases" / "r2")

        # r1 is pruned; a crashed worker is replaced from r2 and the service answers
        shutil.rmtree(deployment.root / "releases" / "r1")
        worker = serving[0]["workers"][0]["pid"]
        mark = svc.mark()
        os.kill(worker, signal.SIGKILL)
        svc.wait_for(r"generation 2 worker 0 .*restarting it", after=mark)
        poll_until(
            lambda: runs_release(answer(address), deployment, "r2", "2.0"),
            10,
            "an answer from the replacement",
        )
        assert health(health_address, "/ready")[0] == 200
        # and a reload still works
        result = reload(pid_file)
        assert result.returncode == 0, result.stderr + svc.output
        assert runs_release(answer(address), deployment, "r2", "2.0")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0, svc.output


def test_health_tells_the_truth_while_no_worker_can_start(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A release whose code cannot start, switched to before a crash: the crashed
    worker's replacements fail, /ready says 503 (with how many workers accept), /live
    turns 503 once that has lasted longer than ready_timeout; pointing back at a good
    release heals it at the next restart."""
    deployment.release("r3", "3.0", extra="raise RuntimeError('r3 cannot start')")
    pid_file = tmp_path / "svc.pid"
    with start(deployment, "service_manager", "--ready-timeout", "2", pid_file=pid_file) as svc:
        svc.wait_serving(1)
        address = svc.address()
        health_address = svc.wait_for(r"health endpoint on http://(\S+)/ready").group(1)
        assert health(health_address, "/ready") == (200, "ready\n")
        assert health(health_address, "/live") == (200, "live\n")
        deployment.switch("r3")
        described = status(pid_file)
        worker = described["generations"][0]["workers"][0]["pid"]  # type: ignore[index]
        mark = svc.mark()
        os.kill(worker, signal.SIGKILL)
        svc.wait_for(r"r3 cannot start", after=mark)
        code, body = health(health_address, "/ready")
        assert code == 503, body
        assert "0/1 workers accept connections" in body, body
        poll_until(lambda: health(health_address, "/live")[0] == 503, 10, "/live to turn 503")
        assert "no worker has accepted connections" in health(health_address, "/live")[1]
        # the service points to a good release again: the next restart heals it
        deployment.switch("r2")
        poll_until(lambda: health(health_address, "/ready")[0] == 200, 30, "/ready to turn 200")
        assert health(health_address, "/live") == (200, "live\n")
        assert runs_release(answer(address), deployment, "r2", "2.0")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0, svc.output


def test_a_deleted_working_directory_fails_the_reload_in_one_line_and_the_stop_ends(
    tmp_path: Path,
) -> None:
    """The supervisor's working directory is deleted while a standby is warm: the
    reload fails with one line naming it, the old generation serves on, and a stop
    ends the supervisor and every process it started."""
    code = tmp_path / "code"
    code.mkdir()
    script = write_service(code / "svc.py", "asyncio", prefix="v1")
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    env = {"LISTEN": "127.0.0.1:0", "PROBATION": "0", "PWD": str(workdir)}
    with running(script, cwd=workdir, env=env) as svc:
        svc.wait_serving(1)
        svc.warm_standby()
        shutil.rmtree(workdir)
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        failure = svc.wait_for(r"reload failed: generation 2", after=mark)
        assert f"the working directory {workdir} no longer exists" in failure.string
        assert "Traceback" not in svc.output
        with connect(svc.address()) as client:
            assert ask(client, "still") == b"v1: still\n"
        svc.send(signal.SIGTERM)
        assert svc.wait_exit(timeout=20) == 0, svc.output
        poll_until(lambda: not svc.processes(), 10, "every process of the service gone")
