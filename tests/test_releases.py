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
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from deploys import Deployment
from harness import ROOT, ServiceProcess, ask, connect, graceful_cli, poll_until, running
from http_load import HttpLoad
from services import write_service

#: How each start is made, as a user's shell or service manager makes it.
INVOCATIONS = ("shell", "service_manager", "python_m")


@pytest.fixture
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Deployment:
    """Releases r1 and r2, each with its own venv (in the release, or linked to it
    from ``venvs/`` when the test asks for ``"venv_link"``), and ``current ->
    releases/r1``."""
    deployment = Deployment(tmp_path / "srv")
    venv_link = getattr(request, "param", "venv") == "venv_link"
    deployment.release("r1", "1.0", venv_link=venv_link)
    deployment.release("r2", "2.0", venv_link=venv_link)
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
    venv = Path(os.path.realpath(release / ".venv"))
    return (
        body["release"] == name
        and body["relpkg"] == version
        and Path(os.path.realpath(Path(body["executable"]).parent.parent)) == venv
        and Path(os.path.realpath(body["relpkg_file"])).is_relative_to(venv)
        and Path(body["cwd"]) == release
    )


def only_from(address: str, deployment: Deployment, name: str, version: str) -> None:
    """Wait until five answers in a row come from release ``name``."""

    def five() -> bool:
        return all(runs_release(answer(address), deployment, name, version) for _ in range(5))

    poll_until(five, 10, f"only release {name} answering")


@pytest.mark.parametrize("deployment", ["venv", "venv_link"], indirect=True)
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
        # (generation 1 answers until it has closed its listener, a moment after)
        only_from(address, deployment, "r2", "2.0")
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
        only_from(address, deployment, "r2", "2.0")
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


def test_a_release_link_that_does_not_name_where_the_service_runs_is_refused(
    deployment: Deployment, tmp_path: Path
) -> None:
    """Started from r1's physical paths with --release-link naming a link to r2:
    nothing of the service would follow the link, so it is refused in one line."""
    deployment.switch("r2")
    r1 = deployment.root / "releases" / "r1"
    command = [
        str(r1 / ".venv/bin/graceful"), "serve", "app:app", "--listen", "127.0.0.1:0",
        "--release-link", str(deployment.current),
    ]  # fmt: skip
    with running(r1 / "app.py", command=command, cwd=r1, env={"PYTHONPATH": ""}) as svc:
        assert svc.wait_exit() == 2, svc.output
        [line] = svc.lines
        assert f"release link {deployment.current} names" in line
        assert f"but the service runs from {r1}" in line


def test_with_preload_a_crash_is_replaced_from_the_template_whatever_the_link_names(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The link names a release that is gone: the serving generation's template
    still forks a replacement (only a new template needs the release)."""
    pid_file = tmp_path / "svc.pid"
    with start(deployment, "service_manager", "--preload", pid_file=pid_file) as svc:
        svc.wait_serving(1)
        address = svc.address()
        worker = status(pid_file)["generations"][0]["workers"][0]["pid"]  # type: ignore[index]
        staged = deployment.root / "current.staged"
        staged.symlink_to("releases/r9")  # a release pruned, or never finished
        staged.replace(deployment.current)
        mark = svc.mark()
        os.kill(worker, signal.SIGKILL)
        svc.wait_for(r"generation 1 worker 0 .*restarting it", after=mark)
        poll_until(
            lambda: runs_release(answer(address), deployment, "r1", "1.0"), 15, "the replacement"
        )
        assert "could not start a worker" not in svc.output
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0, svc.output


@pytest.mark.parametrize("deployment", ["venv_link"], indirect=True)
def test_a_standby_of_a_release_rebuilt_in_place_is_not_used(
    deployment: Deployment, tmp_path: Path
) -> None:
    """r2 is deleted and built again at the same path while a standby from it is warm:
    the same paths, another interpreter and environment; the reload starts cold."""
    pid_file = tmp_path / "svc.pid"
    deployment.switch("r2")
    with start(deployment, "service_manager", pid_file=pid_file) as svc:
        svc.wait_serving(1)
        svc.warm_standby()
        shutil.rmtree(deployment.root / "releases" / "r2")
        if (deployment.root / "venvs" / "r2").exists():
            shutil.rmtree(deployment.root / "venvs" / "r2")
        deployment.release("r2", "2.1", venv_link=(deployment.root / "venvs").exists())
        mark = svc.mark()
        result = reload(pid_file)
        assert result.returncode == 0, result.stderr + svc.output
        svc.wait_for(
            r"the standby \(PID \d+\) was not used: the interpreter .* was replaced", after=mark
        )
        only_from(svc.address(), deployment, "r2", "2.1")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0, svc.output


def test_a_release_that_cannot_run_graceful_fails_the_reload_in_one_line(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.release("r3", "3.0", graceful=False)
    pid_file = tmp_path / "svc.pid"
    with start(deployment, "service_manager", "--no-standby", pid_file=pid_file) as svc:
        svc.wait_serving(1)
        deployment.switch("r3")
        result = reload(pid_file)
        assert result.returncode == 1
        assert "before it said which graceful it runs: the interpreter of release " in (
            result.stderr
        )
        assert str(deployment.root / "releases" / "r3") in result.stderr
        assert runs_release(answer(svc.address()), deployment, "r1", "1.0")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0, svc.output


def test_a_stale_pwd_from_before_a_switch_is_said(deployment: Deployment, tmp_path: Path) -> None:
    """The shell entered ``current`` when it named r1; the link names r2 now: graceful
    cannot tell which the user meant, and says so."""
    r1 = deployment.root / "releases" / "r1"
    deployment.switch("r2")
    command = [str(r1 / ".venv/bin/graceful"), "serve", "app:app", "--listen", "127.0.0.1:0"]
    env = {"PYTHONPATH": "", "PWD": str(deployment.current)}
    with running(r1 / "app.py", command=command, cwd=r1, env=env) as svc:
        svc.wait_serving(1)
        svc.wait_for(rf"\$PWD={deployment.current} names .*r2 now, but the working directory is")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0, svc.output
