"""uvicorn's command line under ``graceful serve``: a uvicorn user switches by changing
the first word; options that cannot apply are refused in one line."""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path

import psutil
import pytest
import trustme
from harness import ServiceProcess, graceful_cli, hup, poll_until

from graceful.cli import REFUSED_SERVER_OPTIONS
from graceful.core.settings import ServerOptions, Setting, settings_of

#: An ASGI app that answers what it was told of the request.
ECHO_SCOPE_APP = """\
import json
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    seen = {
        "pid": os.getpid(),
        "client": scope["client"][0] if scope.get("client") else None,
        "scheme": scope["scheme"],
        "root_path": scope.get("root_path"),
    }
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode()})
"""


def issue(directory: Path) -> trustme.CA:
    """A new CA, and a certificate of it for 127.0.0.1 in ``k.pem`` and ``c.pem``."""
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certificate.private_key_pem.write_to_path(str(directory / "k.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(directory / "c.pem"))
    return authority


def get(address: str, authority: trustme.CA, **headers: str) -> dict[str, object]:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        connection.request("GET", "/", headers=headers)
        response = connection.getresponse()
        assert response.status == 200
        answer: dict[str, object] = json.loads(response.read())
        answer["x-served-by"] = response.getheader("x-served-by")
        return answer
    finally:
        connection.close()


def trusted(address: str, authority: trustme.CA) -> bool:
    try:
        get(address, authority)
    except ssl.SSLCertVerificationError:
        return False
    return True


def test_a_uvicorn_command_line_serves_with_only_its_first_word_changed(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(ECHO_SCOPE_APP)
    first = issue(tmp_path)
    # uvicorn app:app --host 127.0.0.1 --port 0 --workers 2 --proxy-headers ...; at
    # --log-level warning, graceful says nothing while all goes well: the port is read
    # from the supervisor's socket, and readiness from the answers
    command = [
        "serve", "app:app", "--host", "127.0.0.1", "--port", "0", "--workers", "2",
        "--proxy-headers", "--forwarded-allow-ips", "*", "--ssl-keyfile", "k.pem",
        "--ssl-certfile", "c.pem", "--log-level", "warning", "--root-path", "/api",
        "--header", "X-Served-By: graceful", "--timeout-keep-alive", "5",
        "--limit-concurrency", "100", "--http", "h11", "--lifespan", "off",
    ]  # fmt: skip
    with ServiceProcess(tmp_path / "app.py", module="graceful", args=command) as svc:
        poll_until(lambda: listening_address(svc.pid), 30, "the supervisor listening")
        address = str(listening_address(svc.pid))
        poll_until(lambda: answering(address, first), 30, "the service answering")
        answers = [get(address, first, **{"X-Forwarded-For": "203.0.113.9"}) for _ in range(20)]
        assert {answer["scheme"] for answer in answers} == {"https"}
        assert {answer["client"] for answer in answers} == {"203.0.113.9"}
        assert {answer["root_path"] for answer in answers} == {"/api"}
        assert {answer["x-served-by"] for answer in answers} == {"graceful"}
        pids = {answer["pid"] for answer in answers}

        def both_workers() -> bool:
            pids.add(get(address, first)["pid"])
            return len(pids) == 2

        poll_until(both_workers, 15, "both workers answering")

        # a renewed certificate is served by the next generation
        second = issue(tmp_path)
        hup(svc)
        # (both generations accept until every new worker is ready: the new one
        # serves alone once 20 connections in a row get the new certificate)
        poll_until(
            lambda: all(answering(address, second) for _ in range(20)),
            60,
            "the new certificate served, and the old one no more",
        )
        assert not [line for line in svc.output.splitlines() if " INFO " in line], svc.output


def answering(address: str, authority: trustme.CA) -> bool:
    """The service answers over TLS with a certificate of ``authority``."""
    try:
        return trusted(address, authority)
    except (OSError, http.client.HTTPException):  # not listening yet, or the old cert
        return False


def listening_address(pid: int) -> str | None:
    """The address the process ``pid`` listens on (TCP), if any yet."""
    for connection in psutil.Process(pid).net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN:
            return f"{connection.laddr.ip}:{connection.laddr.port}"
    return None


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (
            ["--timeout-worker-healthcheck", "5"],
            "--timeout-worker-healthcheck is not supported: the heartbeat comes from each",
        ),
        (["--reload-delay", "0.5"], "--reload-delay is not supported"),
        (["--host", "127.0.0.1", "--listen", "127.0.0.1:0"], "not both"),
        (["--uds", "/tmp/x.sock", "--port", "8000"], "one of them"),
        (["--port", "70000"], "must be a port number"),
        (["--server", "hypercorn", "--limit-concurrency", "9"], "--limit-concurrency is uvicorn's"),
        (["--server", "hypercorn", "--proxy-headers"], "ProxyFixMiddleware"),
        (["--server", "hypercorn", "--forwarded-allow-ips", "*"], "ProxyFixMiddleware"),
        (["--server", "hypercorn", "--header", "X-A: b"], "--header is uvicorn's: hypercorn"),
        (["--server", "hypercorn", "--log-config", "l.yaml"], "not YAML"),
        (["--server-name", "example.test"], "--server-name is hypercorn's: uvicorn has no"),
        (["--access-logfile", "-"], "--access-logfile is hypercorn's: uvicorn has no"),
        (["--debug"], "--debug is hypercorn's"),
        (["-k", "trio"], "-k is not supported: graceful runs the server itself"),
        (["--backlog", "2048"], "--backlog is not supported"),
        (["--reuse-port"], "--reuse-port is not supported"),
        (["--quic-bind", "127.0.0.1:4433"], "--quic-bind is not supported"),
        (["--user", "1000"], "--user is not supported"),
        (["--ssl-cert-reqs", "3"], "must be 0, 1 or 2"),
        (["--header", "no colon"], "must look like 'Name: value'"),
    ],
)
def test_an_option_that_cannot_apply_is_refused_in_one_line(
    tmp_path: Path, options: list[str], said: str
) -> None:
    (tmp_path / "app.py").write_text(ECHO_SCOPE_APP)
    result = graceful_cli("serve", "app:app", *options, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert said in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_uvicorns_spellings_of_graceful_settings_are_the_same_settings(tmp_path: Path) -> None:
    """--timeout-graceful-shutdown is --drain-timeout, --reload is --watch, -w is
    --workers, --bind is --listen: shown by what the supervisor says it does."""
    (tmp_path / "app.py").write_text(ECHO_SCOPE_APP)
    args = [
        "serve", "app:app", "--bind", "127.0.0.1:0", "-w", "2",
        "--timeout-graceful-shutdown", "7", "--no-access-log",
    ]  # fmt: skip
    with ServiceProcess(tmp_path / "app.py", module="graceful", args=args) as svc:
        svc.wait_serving(1)
        svc.wait_for(r"starting generation 1 \(2 workers\)")
        svc.send(15)
        svc.wait_for(r"draining 2 workers \(up to drain_timeout=7s\)")
        assert svc.wait_exit() == 0, svc.output


@pytest.mark.parametrize("flag", sorted(REFUSED_SERVER_OPTIONS))
def test_each_refused_option_says_why_in_one_line_and_starts_nothing(
    tmp_path: Path, flag: str
) -> None:
    (tmp_path / "app.py").write_text(ECHO_SCOPE_APP)
    pid_file = tmp_path / "pid"
    result = graceful_cli("serve", "app:app", "--pid-file", str(pid_file), flag, "1", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{flag} is not supported: " in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not pid_file.exists()


@pytest.mark.parametrize(("server", "other"), [("uvicorn", "hypercorn"), ("hypercorn", "uvicorn")])
def test_an_option_the_server_lacks_is_refused_in_one_line_naming_both(
    tmp_path: Path, server: str, other: str
) -> None:
    """Every declared option one server has and the other lacks is refused with the
    other, naming the option and the server, before anything starts."""
    (tmp_path / "app.py").write_text(ECHO_SCOPE_APP)
    lacking = [s for s in settings_of(ServerOptions) if server not in dict(s.servers)]
    assert lacking
    for setting in lacking:
        assert setting.flag is not None
        word = [] if setting.kind.cli in ("switch", "toggle") else [_a_value(setting)]
        result = graceful_cli(
            "serve", "app:app", "--server", server, setting.flag, *word, cwd=tmp_path
        )
        assert result.returncode == 2, result.stdout + result.stderr
        said = f"{setting.flag} is {other}'s: {server} has no such option"
        assert said in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _a_value(setting: Setting) -> str:
    """A word ``setting`` takes."""
    if setting.kind.choices:
        return setting.kind.choices[0]
    return "X-A: b" if setting.name == "headers" else "1"


def response(
    address: str, authority: trustme.CA, host: str | None = None
) -> http.client.HTTPResponse:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    name, _, port = address.rpartition(":")
    connection = http.client.HTTPSConnection(name, int(port), context=context, timeout=10)
    connection.request("GET", "/", headers={"Host": host} if host else {})
    answer = connection.getresponse()
    answer.read()
    connection.close()
    return answer


def test_a_hypercorn_command_line_serves_https_on_two_workers_through_a_reload(
    tmp_path: Path,
) -> None:
    """hypercorn's and gunicorn's spellings reach hypercorn under its own Config names:
    TLS files, keep-alive, workers, bind; the Server header off, the host names."""
    (tmp_path / "app.py").write_text(ECHO_SCOPE_APP)
    authority = issue(tmp_path)
    pid_file = tmp_path / "graceful.pid"
    # hypercorn app:app --bind 127.0.0.1:0 --certfile c.pem --keyfile k.pem ...
    command = [
        "serve", "app:app", "--server", "hypercorn", "--bind", "127.0.0.1:0",
        "--certfile", "c.pem", "--keyfile", "k.pem", "--keep-alive", "5", "-w", "2",
        "--root-path", "/api", "--no-server-header", "--server-name", "example.test",
        "--websocket-ping-interval", "10", "--read-timeout", "30",
        "--h11-max-incomplete-event-size", "32768", "--pid", str(pid_file),
    ]  # fmt: skip
    with ServiceProcess(tmp_path / "app.py", module="graceful", args=command) as svc:
        svc.wait_serving(1)
        address = svc.address()
        assert response(address, authority).status == 404  # not example.test
        pids: set[int] = set()

        def both_workers() -> bool:
            answer = get(address, authority, Host="example.test")
            assert (answer["scheme"], answer["root_path"]) == ("https", "/api")
            pids.add(int(str(answer["pid"])))
            return len(pids) == 2

        poll_until(both_workers, 15, "both workers answering over TLS")
        assert response(address, authority, "example.test").getheader("server") is None

        reloaded = graceful_cli("reload", "--pid-file", str(pid_file), "--wait")
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        assert "generation 2 serving" in reloaded.stdout
        answer = get(address, authority, Host="example.test")
        assert answer["scheme"] == "https"
        assert int(str(answer["pid"])) not in pids


APP_SERVING_ITS_DIRECTORY = """import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": os.getcwd().encode()})
"""


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_chdir_runs_the_workers_in_the_directory_and_imports_from_it(
    tmp_path: Path, server: str
) -> None:
    """gunicorn's --chdir: the app is found there (nothing else puts it on sys.path)
    and each worker, of the first generation and after a reload, runs there."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "app.py").write_text(APP_SERVING_ITS_DIRECTORY)
    command = [
        "serve", "app:app", "--server", server, "--chdir", "../site",
        "--listen", "127.0.0.1:0",
    ]  # fmt: skip
    with ServiceProcess(
        tmp_path / "site" / "app.py",
        module="graceful",
        args=command,
        cwd=tmp_path / "elsewhere",
    ) as svc:
        svc.wait_serving(1)
        host, _, port = svc.address().rpartition(":")

        def directory() -> str:
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            try:
                connection.request("GET", "/")
                return connection.getresponse().read().decode()
            finally:
                connection.close()

        assert directory() == str(tmp_path / "site")
        svc.wait_serving(2, after=hup(svc))
        assert directory() == str(tmp_path / "site")


def test_chdir_to_a_missing_directory_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(ECHO_SCOPE_APP)
    result = graceful_cli(
        "serve", "app:app", "--chdir", "missing", "--pid-file", "pid", cwd=tmp_path
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--chdir missing: No such file or directory" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "pid").exists()
