"""uvicorn's command line under ``graceful serve``: a uvicorn user switches by changing
the first word; options that cannot apply are refused in one line."""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path

import pytest
import trustme
from harness import ServiceProcess, graceful_cli, hup, poll_until

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
    # uvicorn app:app --host 127.0.0.1 --port 0 --workers 2 --proxy-headers ...
    command = [
        "serve", "app:app", "--host", "127.0.0.1", "--port", "0", "--workers", "2",
        "--proxy-headers", "--forwarded-allow-ips", "*", "--ssl-keyfile", "k.pem",
        "--ssl-certfile", "c.pem", "--log-level", "info", "--root-path", "/api",
        "--header", "X-Served-By: graceful", "--timeout-keep-alive", "5",
        "--limit-concurrency", "100", "--http", "h11", "--lifespan", "off",
    ]  # fmt: skip
    with ServiceProcess(tmp_path / "app.py", module="graceful", args=command) as svc:
        svc.wait_serving(1)
        address = svc.address()
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
        svc.wait_serving(2, after=hup(svc))
        poll_until(lambda: trusted(address, second), 15, "the new certificate served")
        assert not trusted(address, first)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--limit-max-requests", "1000"], "--limit-max-requests is not supported: a worker"),
        (["--reload-delay", "0.5"], "--reload-delay is not supported"),
        (["--host", "127.0.0.1", "--listen", "127.0.0.1:0"], "not both"),
        (["--uds", "/tmp/x.sock", "--port", "8000"], "one of them"),
        (["--port", "70000"], "must be a port number"),
        (["--server", "hypercorn", "--root-path", "/api"], "--root-path is uvicorn's"),
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
