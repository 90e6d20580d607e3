"""Input that cannot work: one clear line naming the value, exit 2, nothing spawned."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from harness import ServiceProcess, group_alive, running, wait_until
from services import service_source, write_service


def assert_refused(svc: ServiceProcess, *expected: str) -> None:
    """The supervisor exited 2 with one error line that contains ``expected``."""
    assert svc.wait_exit() == 2, svc.output
    errors = [line for line in svc.lines if "ERROR" in line]
    assert len(errors) == 1, svc.output
    for text in expected:
        assert text in errors[0], svc.output
    assert "Traceback" not in svc.output
    assert "starting generation" not in svc.output
    wait_until(lambda: group_alive(svc.pid) == [], 5, "nothing left running")


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("localhost", "expected HOST:PORT"),
        ("127.0.0.1:http", "port 'http' is not a number"),
        ("127.0.0.1:70000", "port 70000 is out of range"),
        ("::1:8080", "needs brackets"),
        ("unix:", "path is empty"),
        ("fd:three", "expected fd:N"),
        ("fd:987", "file descriptor 987 is not open"),
        ("no-such-host.invalid:80", "cannot listen on 'no-such-host.invalid:80'"),
    ],
)
def test_invalid_listen_spec_is_named_in_one_line(tmp_path: Path, spec: str, why: str) -> None:
    script = write_service(tmp_path / "svc.py")
    with running(script, env={"LISTEN": spec}) as svc:
        assert_refused(svc, repr(spec), why)


def test_port_in_use_is_refused_and_earlier_listeners_are_released(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sock_path = tmp_path / "first.sock"
        script = write_service(tmp_path / "svc.py")
        env = {"LISTEN": f"unix:{sock_path},127.0.0.1:{port}"}
        with running(script, env=env) as svc:
            assert_refused(svc, f"'127.0.0.1:{port}'", "address already in use")
        assert not sock_path.exists()


def test_a_file_that_is_not_a_socket_is_refused_and_kept(tmp_path: Path) -> None:
    precious = tmp_path / "data.sock"
    precious.write_text("not a socket\n")
    script = write_service(tmp_path / "svc.py")
    with running(script, env={"LISTEN": f"unix:{precious}"}) as svc:
        assert_refused(svc, str(precious), "is not a socket")
    assert precious.read_text() == "not a socket\n"


ENTRIES = {
    "lambda": (
        "import graceful\n"
        "main = graceful.service(listen=['127.0.0.1:0'])(lambda ctx: None)\n"
        "if __name__ == '__main__':\n"
        "    main.run()\n",
        "a lambda has no name",
    ),
    "nested": (
        "import graceful\n"
        "def build():\n"
        "    @graceful.service(listen=['127.0.0.1:0'])\n"
        "    def main(ctx): ...\n"
        "    return main\n"
        "if __name__ == '__main__':\n"
        "    build().run()\n",
        "__main__:build.<locals>.main",
    ),
    "no_guard": (
        "import graceful\n"
        "@graceful.service(listen=['127.0.0.1:0'])\n"
        "def main(ctx): ...\n"
        "main.run()\n",
        'line 4 starts the service at import time: put the call under `if __name__ == "__main__":`',
    ),
    "replaced": (
        "import graceful\n"
        "@graceful.service(listen=['127.0.0.1:0'])\n"
        "def main(ctx): ...\n"
        "service, main = main, None\n"
        "if __name__ == '__main__':\n"
        "    service.run()\n",
        "__main__:main: that name does not lead to the service",
    ),
}


@pytest.mark.parametrize("case", sorted(ENTRIES))
def test_entry_a_fresh_interpreter_cannot_find_is_refused(tmp_path: Path, case: str) -> None:
    source, message = ENTRIES[case]
    script = tmp_path / "svc.py"
    script.write_text(source)
    with running(script) as svc:
        assert_refused(svc, message)


def test_code_read_from_stdin_is_refused(tmp_path: Path) -> None:
    script = write_service(tmp_path / "svc.py")
    with running(script, env={"LISTEN": "127.0.0.1:0"}, stdin_script=True) as svc:
        assert_refused(svc, "typed into a REPL, read from stdin")


def test_python_dash_m_package_module_runs_and_reloads(tmp_path: Path) -> None:
    package = tmp_path / "shop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    app = write_service(package / "app.py", prefix="m1")
    with running(app, env={"LISTEN": "127.0.0.1:0"}, module="shop.app", cwd=tmp_path) as svc:
        svc.wait_serving(1)
        host, _, port = svc.address().rpartition(":")
        app.write_text(service_source(prefix="m2"))
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        svc.wait_serving(2, after=mark)

        def answered_by_new_code() -> bool:
            # generation 1 may take a last connection while it learns it must drain
            with socket.create_connection((host, int(port)), timeout=10) as client:
                client.sendall(b"hi\n")
                return client.recv(100) == b"m2: hi\n"

        wait_until(answered_by_new_code, 10, "an answer from the reloaded code")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
