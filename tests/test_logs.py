"""Logs an operator can use: every line timestamped, ``--log-level`` for graceful's
lines too, ``--log-format json`` for the supervisor, the workers and uvicorn alike,
and a user's ``log_config`` that never silences the supervisor."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from harness import ROOT, ServiceProcess, graceful_cli, hup, poll_until

from graceful.base.log import FORMAT_VARIABLE, JsonFormatter, role_fields, timestamp
from graceful.core.settings import SETTINGS

#: An ASGI app that answers ``MESSAGE``.
APP = """\
MESSAGE = {message!r}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": MESSAGE.encode()}})
"""

#: What the next generation imports, when a reload must fail.
BROKEN_APP = "raise ImportError('the new code is broken')\n"

#: A uvicorn-style logging configuration, without ``disable_existing_loggers: false``:
#: applied as it is, it disables every logger it does not name (graceful's among them).
DISABLING_LOG_CONFIG = {
    "version": 1,
    "formatters": {"plain": {"format": "custom %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}

TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
JSON_FIELDS = {"time", "level", "logger", "role", "pid", "generation", "worker", "message"}


def serve(tmp_path: Path, *options: str) -> ServiceProcess:
    """``graceful serve app:app`` in ``tmp_path``, on a free port, with ``options``."""
    args = ["serve", "app:app", "--listen", "127.0.0.1:0", "--probation", "0", *options]
    return ServiceProcess(tmp_path / "app.py", module="graceful", args=args)


def get(address: str, path: str = "/") -> bytes:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
        body: bytes = response.read()
        return body


def test_a_log_config_that_disables_existing_loggers_never_silences_the_supervisor(
    tmp_path: Path,
) -> None:
    (tmp_path / "app.py").write_text(APP.format(message="v1"))
    (tmp_path / "log.json").write_text(json.dumps(DISABLING_LOG_CONFIG))
    with serve(tmp_path, "--log-config", "log.json") as svc:
        svc.wait_serving(1)
        address = svc.address()
        assert get(address) == b"v1"
        svc.wait_for(r"^custom INFO uvicorn\.error Application startup complete")  # theirs
        (tmp_path / "app.py").write_text(BROKEN_APP)
        mark = hup(svc)
        failed = svc.wait_for(r"ERROR reload failed: generation 2: (.*)", after=mark)
        assert "the new code is broken" in failed.group(1)
        assert get(address) == b"v1"
        (tmp_path / "app.py").write_text(APP.format(message="v3"))
        svc.wait_serving(3, after=hup(svc))
        poll_until(lambda: get(address) == b"v3", 10, "generation 3 answering")


def test_a_log_config_that_disables_existing_loggers_leaves_the_workers_loggers_on(
    tmp_path: Path,
) -> None:
    """In a worker, after uvicorn applies the user's configuration, graceful's
    loggers are on, and their errors still reach stderr through graceful's handler."""
    (tmp_path / "log.json").write_text(json.dumps(DISABLING_LOG_CONFIG))
    script = textwrap.dedent(f"""\
        import logging
        from graceful.base.log import ensure_visible
        from graceful.servers.uvicorn import uvicorn_config
        ensure_visible("gen 4 worker 1")
        uvicorn_config("app:app", 5.0, {{"log_config": {str(tmp_path / "log.json")!r}}})
        assert not logging.getLogger("graceful").disabled
        assert not logging.getLogger("graceful.worker").disabled
        logging.getLogger("graceful.worker").error("still heard")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(
        rf"^{TIMESTAMP} graceful\[\d+\] gen 4 worker 1: ERROR still heard$", result.stderr, re.M
    ), result.stderr


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("log.json", "{not json", "log_config 'log.json' cannot be read: JSONDecodeError"),
        ("log.json", "[1, 2]", "must hold a mapping"),
        ("log.yaml", "a: [", "log_config 'log.yaml' cannot be read"),
        ("log.ini", "[loggers]\nkeys=root\n", "has no [formatters] section"),
        ("log.ini", "\x00\x01garbage", "cannot be read"),
        ("missing.json", None, "No such file or directory"),
    ],
)
def test_a_log_config_uvicorn_could_not_read_is_refused_in_one_line(
    tmp_path: Path, name: str, text: str | None, said: str
) -> None:
    (tmp_path / "app.py").write_text(APP.format(message="v1"))
    if text is not None:
        (tmp_path / name).write_text(text)
    result = graceful_cli("serve", "app:app", "--log-config", name, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert said in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_json_lines_from_the_supervisor_the_workers_and_uvicorn(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP.format(message="v1"))
    with serve(tmp_path, "--workers", "2", "--log-format", "json") as svc:
        svc.wait_serving(1)
        address = svc.address()
        for _ in range(4):
            assert get(address, '/a?q="x"') == b"v1"
        (tmp_path / "app.py").write_text(APP.format(message="v2"))
        svc.wait_serving(2, after=hup(svc))
        poll_until(lambda: get(address, "/b") == b"v2", 10, "generation 2 answering")
        svc.send(15)
        assert svc.wait_exit() == 0, svc.output
    lines = [json.loads(line) for line in svc.lines]  # each line one object
    for line in lines:
        assert line.keys() >= JSON_FIELDS, line
        assert re.fullmatch(TIMESTAMP, line["time"]), line
    supervisor = [line for line in lines if line["role"] == "supervisor"]
    assert {line["logger"] for line in supervisor} == {"graceful"}
    assert all(line["generation"] is None and line["worker"] is None for line in supervisor)
    assert any("generation 2 is serving" in line["message"] for line in supervisor)
    workers = [line for line in lines if line["role"] == "worker"]
    assert {(line["generation"], line["worker"]) for line in workers} >= {
        (1, 0), (1, 1), (2, 0), (2, 1)
    }  # fmt: skip
    assert all(line["pid"] != supervisor[0]["pid"] for line in workers)
    assert any(line["logger"] == "uvicorn.error" for line in workers)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert {line["path"] for line in access} == {'/a?q="x"', "/b"}
    for line in access:
        assert (line["method"], line["status"], line["http_version"]) == ("GET", 200, "1.1")
        assert line["client"].startswith("127.0.0.1:"), line


def test_log_level_warning_hides_graceful_info_lines_not_its_errors(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP.format(message="v1"))
    pid_file = tmp_path / "graceful.pid"
    socket_path = tmp_path / "app.sock"
    args = ["--listen", f"unix:{socket_path}", "--pid-file", str(pid_file)]
    with serve(tmp_path, "--log-level", "warning", *args) as svc:
        poll_until(pid_file.exists, 30, "the first generation serving (its PID file)")
        (tmp_path / "app.py").write_text(BROKEN_APP)
        reloaded = graceful_cli("reload", "--pid-file", str(pid_file), "--wait", cwd=tmp_path)
        assert reloaded.returncode == 1, reloaded.stdout + reloaded.stderr
        svc.wait_for(r"supervisor: ERROR reload failed: generation 2: .*the new code is broken")
        svc.send(15)
        assert svc.wait_exit() == 0, svc.output
    assert not [line for line in svc.lines if "INFO" in line], svc.output


def test_text_lines_start_with_the_time_graceful_and_uvicorn_alike(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP.format(message="v1"))
    with serve(tmp_path) as svc:
        svc.wait_serving(1)
        get(svc.address(), "/here")
        svc.wait_for(r'"GET /here HTTP/1.1" 200')
        svc.send(15)
        assert svc.wait_exit() == 0, svc.output
    for line in svc.lines:
        assert re.match(rf"{TIMESTAMP} ", line), line
    output = svc.output
    assert re.search(
        rf"^{TIMESTAMP} graceful\[\d+\] supervisor: INFO generation 1 is", output, re.M
    )
    assert re.search(rf"^{TIMESTAMP} INFO: +Started server process", output, re.M)  # uvicorn's
    assert re.search(rf'^{TIMESTAMP} INFO: +127\.0\.0\.1:\d+ - "GET /here', output, re.M)


def test_a_json_line_is_one_line_whatever_the_message_holds() -> None:
    formatter = JsonFormatter(fmt="ignored", use_colors=True)  # as a dictConfig gives it
    try:
        raise ValueError('a "quoted"\nsecond line')
    except ValueError:
        record = logging.LogRecord(
            "graceful",
            logging.ERROR,
            __file__,
            1,
            "bad: %s",
            ("caf\xe9 \udcff\n\x00",),
            sys.exc_info(),
        )
    line = formatter.format(record)
    assert "\n" not in line
    assert line.isascii()
    parsed = json.loads(line)
    assert parsed["message"] == "bad: caf\xe9 \udcff\n\x00"
    assert parsed["exc"].startswith("Traceback")
    assert 'ValueError: a "quoted"' in parsed["exc"]
    assert (parsed["level"], parsed["logger"]) == ("ERROR", "graceful")
    # arguments that do not fit the message still give a line
    record = logging.LogRecord("graceful", logging.INFO, __file__, 1, "%d", ("x",), None)
    assert "'%d'" in json.loads(formatter.format(record))["message"]


def test_the_time_and_the_roles_as_the_lines_show_them() -> None:
    assert timestamp(0.9999) == "1970-01-01T00:00:00.999Z"
    assert timestamp(1_796_622_147.123) == "2026-12-07T05:42:27.123Z"
    assert role_fields("gen 3 worker 0") == {"role": "worker", "generation": 3, "worker": 0}
    assert role_fields("gen 3 template") == {"role": "template", "generation": 3, "worker": None}
    assert role_fields("standby") == {"role": "standby", "generation": None, "worker": None}
    [declared] = [setting for setting in SETTINGS if setting.name == "log_format"]
    assert declared.env == FORMAT_VARIABLE
