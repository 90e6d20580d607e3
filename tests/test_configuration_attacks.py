"""Attacks on the configuration file, the env file and what a reload reads again
(``graceful/api/configuration.py``, ``graceful/supervisor/reconfigure.py``): each a
fault once found, kept so that it stays fixed."""

from __future__ import annotations

import http.client
import os
import signal
import threading
from pathlib import Path

import pytest
from harness import ServiceProcess, graceful_cli
from test_configuration import ENVIRONMENT_APP, get, reload_and_wait

from graceful.api.configuration import environment_of, gather
from graceful.base.errors import ConfigError
from graceful.control.client import Control
from graceful.core.configured import Configured


def serve(tmp_path: Path, *options: str) -> ServiceProcess:
    (tmp_path / "app.py").write_text(ENVIRONMENT_APP)
    command = [
        "serve", "app:app", "--listen", "127.0.0.1:0", "--pid-file",
        str(tmp_path / "graceful.pid"), "--probation", "0", "--no-access-log", *options,
    ]  # fmt: skip
    return ServiceProcess(tmp_path / "app.py", module="graceful", args=command)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("A=x\x00y\n", "env file .env, line 1: A='x\\x00y' holds a NUL character"),
        ("'B=C'=1\n", "env file .env, line 1: 'B=C' is not an environment variable's name"),
    ],
)
def test_an_env_file_variable_the_environment_cannot_hold_is_refused_in_one_line(
    tmp_path: Path, text: str, said: str
) -> None:
    (tmp_path / ".env").write_text(text)
    with pytest.raises(ConfigError) as caught:
        environment_of({"env_file": ".env"}, {}, str(tmp_path))
    assert said in str(caught.value), caught.value
    assert "\n" not in str(caught.value)


def test_a_reload_with_an_env_file_the_environment_cannot_hold_fails_that_reload_only(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text("FROM_ENV_FILE=one\n")
    with serve(tmp_path, "--env-file", ".env") as svc:
        svc.wait_serving(1)
        address = svc.address()
        (tmp_path / ".env").write_text("FROM_ENV_FILE=two\nA=x\x00y\n")
        code, said = reload_and_wait(tmp_path / "graceful.pid")
        assert code == 1, said
        (tmp_path / ".env").write_text("FROM_ENV_FILE=three\n")
        code, said = reload_and_wait(tmp_path / "graceful.pid")
        assert code == 0, said
        assert get(address)["FROM_ENV_FILE"] == "three"
        # the supervisor still takes SIGHUP (its mask is as it was)
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        svc.wait_serving(4, after=mark)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit(30) == 0


def test_a_deeply_nested_configuration_file_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "graceful.toml").write_text("workers = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as caught:
        gather("graceful serve", {}, {}, str(tmp_path))
    assert "graceful.toml" in str(caught.value)


@pytest.mark.parametrize("which", ["config", "env_file"])
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, which: str) -> None:
    fifo = tmp_path / "file"
    os.mkfifo(fifo)
    found: list[BaseException | None] = []

    def read() -> None:
        try:
            if which == "config":
                gather("graceful serve", {"config": str(fifo)}, {}, str(tmp_path))
            else:
                environment_of({"env_file": str(fifo)}, {}, str(tmp_path))
        except BaseException as exc:
            found.append(exc)
        else:
            found.append(None)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # unblock it
        with open(fifo, "wb"):
            pass
        thread.join(5)
        pytest.fail("reading a FIFO blocked")
    assert isinstance(found[0], ConfigError), found
    assert "not a regular file" in str(found[0])


def test_a_reload_reading_a_fifo_leaves_the_supervisor_able_to_stop(tmp_path: Path) -> None:
    (tmp_path / "graceful.toml").write_text("[env]\nDATABASE_URL = 'one'\n")
    with serve(tmp_path, "-c", "graceful.toml") as svc:
        svc.wait_serving(1)
        (tmp_path / "graceful.toml").unlink()
        os.mkfifo(tmp_path / "graceful.toml")
        code, said = reload_and_wait(tmp_path / "graceful.pid")
        assert code == 1, said
        svc.send(signal.SIGTERM)
        assert svc.wait_exit(30) == 0


def test_graceful_check_with_a_fifo_as_its_configuration_file(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(ENVIRONMENT_APP)
    os.mkfifo(tmp_path / "graceful.toml")
    result = graceful_cli("check", "app:app", "-c", "graceful.toml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not a regular file" in result.stderr


def test_a_default_file_gone_at_a_reload_fails_it_rather_than_dropping_the_configuration(
    tmp_path: Path,
) -> None:
    """The configuration file found at the start is read again by each reload: a
    deploy that removed it half-way (or left a directory there) fails the reload,
    and the next generation never runs without its [env]."""
    (tmp_path / "graceful.toml").write_text("[env]\nDATABASE_URL = 'one'\n")
    with serve(tmp_path) as svc:
        svc.wait_serving(1)
        address = svc.address()
        (tmp_path / "graceful.toml").unlink()
        code, said = reload_and_wait(tmp_path / "graceful.pid")
        assert code == 1, said
        assert "configuration file graceful.toml: cannot read it" in said, said
        (tmp_path / "graceful.toml").mkdir()
        code, said = reload_and_wait(tmp_path / "graceful.pid")
        assert code == 1, said
        assert get(address)["DATABASE_URL"] == "one"


def test_a_reading_stuck_for_good_is_given_up_and_keeps_no_one_from_exiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A disk that never answers: the reload fails after the timeout, and the
    reading left behind is a daemon thread (the interpreter joins the others at
    exit, so the supervisor would never end)."""
    from graceful.supervisor import reconfigure  # noqa: PLC0415

    monkeypatch.setattr(reconfigure, "READ_TIMEOUT", 0.2)
    never = threading.Event()

    def stuck(cwd: str) -> Configured:
        never.wait()
        raise AssertionError("unblocked")

    # (it blocks every signal in the calling thread, as the supervisor's reading
    # threads must: the test's own is given its mask back, or every process it
    # starts later would inherit SIGHUP blocked)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        with pytest.raises(TimeoutError):
            reconfigure._in_thread(stuck, "/")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        [reader] = [t for t in threading.enumerate() if t.name == "graceful configuration reader"]
        assert reader.daemon
    finally:
        never.set()


def server_header(address: str) -> str | None:
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        return response.getheader("server")
    finally:
        connection.close()


def test_a_setting_that_needs_an_upgrade_is_not_applied_by_a_reload(tmp_path: Path) -> None:
    """``server`` and ``drain_timeout`` are the supervisor's: a reload logs that
    they need graceful upgrade, and the new generation runs as before (it did run
    the other server, under a supervisor that said it did not)."""
    pytest.importorskip("hypercorn")
    (tmp_path / "graceful.toml").write_text("server = 'uvicorn'\n")
    with serve(tmp_path) as svc:
        svc.wait_serving(1)
        address = svc.address()
        assert server_header(address) == "uvicorn"
        (tmp_path / "graceful.toml").write_text("server = 'hypercorn'\ndrain_timeout = 3\n")
        mark = svc.mark()
        code, said = reload_and_wait(tmp_path / "graceful.pid")
        assert code == 0, said
        svc.wait_for(r"server changed in the configuration \(hypercorn, was uvicorn\)", after=mark)
        svc.wait_for(r"generation 2 is serving", after=mark)
        assert server_header(address) == "uvicorn"
        status = Control(tmp_path / "graceful.pid").status()
        [serving] = [g for g in status["generations"] if g["state"] == "serving"]
        assert "server" not in serving["settings"], serving
