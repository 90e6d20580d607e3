"""Input that cannot work: one clear line naming the value, exit 2, nothing spawned."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
from harness import (
    AS_ANOTHER_USER,
    ServiceProcess,
    cannot_act_as_another_user,
    poll_until,
    running,
    sticky_directory,
)
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
    poll_until(lambda: svc.processes() == [], 5, "nothing left running")


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


@pytest.mark.parametrize(
    ("setting", "value", "why"),
    [
        ("STRATEGY", "sideways", "strategy='sideways' must be 'all-at-once' or 'rolling'"),
        ("MAX_SURGE", "0", "max_surge=0 must be a whole number of at least 1"),
    ],
)
def test_an_unknown_strategy_or_surge_is_named_in_one_line(
    tmp_path: Path, setting: str, value: str, why: str
) -> None:
    script = write_service(tmp_path / "svc.py")
    with running(script, env={"LISTEN": "127.0.0.1:0", setting: value}) as svc:
        assert_refused(svc, why, "svc.py, line")


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

        poll_until(answered_by_new_code, 10, "an answer from the reloaded code")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("a" * 64 + ".example:80", "label"),
        ("..:8000", "cannot listen on '..:8000'"),
        ("fd:99999999999999999999", "out of range"),
        ("127.0.0.1:" + "9" * 5000, "out of range"),
    ],
)
def test_a_spec_the_resolver_or_the_kernel_cannot_take_is_one_line(
    tmp_path: Path, spec: str, why: str
) -> None:
    script = write_service(tmp_path / "svc.py")
    with running(script, env={"LISTEN": spec}) as svc:
        assert_refused(svc, "'" + spec[:30], why)


def test_the_same_inherited_descriptor_twice_is_refused(tmp_path: Path) -> None:
    with socket.socket() as inherited:
        inherited.bind(("127.0.0.1", 0))
        inherited.listen()
        fd = inherited.fileno()
        script = write_service(tmp_path / "svc.py")
        env = {"LISTEN": f"fd:{fd},fd:{fd}"}
        with running(script, env=env, pass_fds=(fd,)) as svc:
            assert_refused(svc, f"'fd:{fd}'", "more than once")


def test_the_same_address_twice_is_refused(tmp_path: Path) -> None:
    sock = tmp_path / "twice.sock"
    script = write_service(tmp_path / "svc.py")
    with running(script, env={"LISTEN": f"unix:{sock},unix:{sock}"}) as svc:
        assert_refused(svc, f"'unix:{sock}'", "more than once")
    assert not sock.exists()


def test_a_stale_socket_file_of_another_user_is_refused_and_kept(tmp_path: Path) -> None:
    """In a sticky directory (like /tmp), a socket file left by another user cannot be
    removed by us: say so in one line, and leave it alone."""
    why_not = cannot_act_as_another_user()
    if why_not:
        pytest.skip(why_not)
    shared = sticky_directory(tmp_path)
    path = shared / "app.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))
    os.chown(path, 65534, 65534)
    path.chmod(0o777)  # anyone may connect: the probe finds nobody listening
    script = write_service(tmp_path / "svc.py")
    env = {"LISTEN": f"unix:{path}"}
    with running(script, env=env, wrapper=AS_ANOTHER_USER) as svc:
        assert_refused(svc, f"'unix:{path}'", "owned by another user")
    assert path.is_socket()


SERVICE_ARGUMENTS = {
    "workers=0": ("workers=0", "workers=0 must be a whole number of at least 1"),
    "listen=None": ("listen=None", "needs listen=[...]"),
    "listen=8080": ("listen=8080", "listen=8080 must be a list of listen specs"),
    "huge timeout": ("ready_timeout=10**400", "must be a finite number of seconds above 0"),
    "backend": ("backend='tornado'", "backend='tornado' must be one of asyncio, trio"),
    "ready_timeout=inf": ("ready_timeout=float('inf')", "ready_timeout=inf must be a finite"),
    "drain_timeout=nan": ("drain_timeout=float('nan')", "drain_timeout=nan must be a finite"),
}


@pytest.mark.parametrize("case", sorted(SERVICE_ARGUMENTS))
def test_a_bad_argument_to_the_decorator_is_one_line(tmp_path: Path, case: str) -> None:
    argument, message = SERVICE_ARGUMENTS[case]
    script = tmp_path / "svc.py"
    listen = "" if argument.startswith("listen=") else "listen=['127.0.0.1:0'], "
    script.write_text(
        "import graceful\n\n"
        f"@graceful.service({listen}{argument})\n"
        "async def main(ctx):\n"
        "    await ctx.serve(lambda stream: stream.aclose())\n\n"
        "if __name__ == '__main__':\n"
        "    main.run()\n"
    )
    with running(script) as svc:
        assert_refused(svc, message)
        assert f"{script}, line 3" in svc.output


def test_the_decorator_without_arguments_is_one_line(tmp_path: Path) -> None:
    script = tmp_path / "svc.py"
    script.write_text(
        "import graceful\n\n"
        "@graceful.service\n"
        "async def main(ctx):\n"
        "    await ctx.serve(lambda stream: stream.aclose())\n\n"
        "if __name__ == '__main__':\n"
        "    main.run()\n"
    )
    with running(script) as svc:
        assert_refused(svc, "@graceful.service needs listen=[...]", f"{script}, line 3")


def test_serve_finds_an_app_module_without_running_its_package(tmp_path: Path) -> None:
    package = tmp_path / "pkgx"
    package.mkdir()
    ran = tmp_path / "ran"
    (package / "__init__.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    args = ["serve", "pkgx.missing:app", "--listen", "127.0.0.1:0"]
    with running(tmp_path / "x", module="graceful", args=args, cwd=tmp_path) as svc:
        assert svc.wait_exit() == 2, svc.output
        assert svc.lines == [
            line for line in svc.lines if "cannot find module 'pkgx.missing'" in line
        ]
    assert not ran.exists(), "the supervisor ran pkgx/__init__.py"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchmod:app"], "cannot find module 'nosuchmod'"),
        (["nosuchpkg.app:app"], "cannot find module 'nosuchpkg.app'"),
        (["app:app", "--ready-timeout", "inf"], "'inf' must be a finite number of seconds"),
        (["app:app", "--drain-timeout", "nan"], "'nan' must be a finite number of seconds"),
    ],
)
def test_graceful_serve_checks_what_it_can_before_spawning(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "app.py").write_text("async def app(scope, receive, send): ...\n")
    full = ["serve", *args, "--listen", "127.0.0.1:0"]
    with running(tmp_path / "x", module="graceful", args=full, cwd=tmp_path) as svc:
        assert svc.wait_exit() == 2, svc.output
        assert len(svc.lines) == 1, svc.output
        assert message in svc.lines[0]
        poll_until(lambda: svc.processes() == [], 5, "nothing left running")


SUPERVISION_ARGUMENTS = {
    "Service.run pid_file=1": (
        "import graceful\n\n"
        "@graceful.service(listen=['127.0.0.1:0'])\n"
        "async def main(ctx):\n"
        "    await ctx.serve(lambda stream: stream.aclose())\n\n"
        "if __name__ == '__main__':\n"
        "    main.run(pid_file=1)\n",
        "pid_file=1 must be a path",
    ),
    "Service.run release_link=b'current'": (
        "import graceful\n\n"
        "@graceful.service(listen=['127.0.0.1:0'])\n"
        "async def main(ctx):\n"
        "    await ctx.serve(lambda stream: stream.aclose())\n\n"
        "if __name__ == '__main__':\n"
        "    main.run(release_link=b'current')\n",
        "release_link=b'current' must be a path",
    ),
    "serve_asgi release_link=1": (
        "import graceful\n\n"
        "async def app(scope, receive, send): ...\n\n"
        "if __name__ == '__main__':\n"
        "    graceful.serve_asgi('svc:app', listen=['127.0.0.1:0'], release_link=1)\n",
        "release_link=1 must be a path",
    ),
    "serve_asgi pid_file=['app.pid']": (
        "import graceful\n\n"
        "async def app(scope, receive, send): ...\n\n"
        "if __name__ == '__main__':\n"
        "    graceful.serve_asgi('svc:app', listen=['127.0.0.1:0'], pid_file=['app.pid'])\n",
        "pid_file=['app.pid'] must be a path",
    ),
    "serve_asgi app=123": (
        "import graceful\n\n"
        "if __name__ == '__main__':\n"
        "    graceful.serve_asgi(123, listen=['127.0.0.1:0'])\n",
        "app 123 must look like 'package.module:attribute'",
    ),
}


@pytest.mark.parametrize("case", sorted(SUPERVISION_ARGUMENTS))
def test_a_value_of_the_wrong_type_for_a_path_or_the_app_is_one_line(
    tmp_path: Path, case: str
) -> None:
    """Not a TypeError or an AttributeError from where the value is used."""
    source, message = SUPERVISION_ARGUMENTS[case]
    script = tmp_path / "svc.py"
    script.write_text(source)
    with running(script) as svc:
        assert_refused(svc, message)
    assert list(tmp_path.iterdir()) == [script]
