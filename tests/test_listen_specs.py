"""Listen specs: parsing them, and binding (or adopting) them once in the supervisor.

Only loopback ports, unix sockets under ``tmp_path`` and the Linux abstract
namespace are touched.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import socket
import stat
import sys
import uuid
from typing import TYPE_CHECKING, Any, cast

import pytest

from graceful.base.errors import ConfigError
from graceful.sockets.listeners import (
    BoundListener,
    FdSpec,
    ParsedSpec,
    TCPSpec,
    UnixSpec,
    bind_listeners,
    parse_listen_spec,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# --- helpers ----------------------------------------------------------------------


@contextlib.contextmanager
def bound(specs: list[str | socket.socket]) -> Iterator[list[BoundListener]]:
    """Bind ``specs`` and close every listener afterwards."""
    listeners = bind_listeners(specs)
    try:
        yield listeners
    finally:
        for listener in listeners:
            listener.close()


def free_loopback_port() -> int:
    """A port nothing listens on right now (no connection ever used it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def accepts_a_connection(listener: socket.socket, family: int, address: Any) -> bool:
    """Connect to ``address`` and accept the connection on ``listener``."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(address)
        readable, _, _ = select.select([listener], [], [], 5)
        if not readable:
            return False
        conn, _ = listener.accept()
        conn.close()
    return True


def unix_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


def is_listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


# --- parse_listen_spec: what it accepts --------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (":8080", TCPSpec("", 8080)),
        (":0", TCPSpec("", 0)),
        ("127.0.0.1:8080", TCPSpec("127.0.0.1", 8080)),
        ("127.0.0.1:0", TCPSpec("127.0.0.1", 0)),
        ("localhost:65535", TCPSpec("localhost", 65535)),
        ("0.0.0.0:1", TCPSpec("0.0.0.0", 1)),
        ("[::1]:8080", TCPSpec("::1", 8080)),
        ("[::]:0", TCPSpec("::", 0)),
        ("[fe80::1%eth0]:443", TCPSpec("fe80::1%eth0", 443)),
        ("unix:/run/app.sock", UnixSpec("/run/app.sock")),
        ("unix:relative/app.sock", UnixSpec("relative/app.sock")),
        ("unix:@abstract", UnixSpec("@abstract")),
        ("fd:3", FdSpec(3)),
        ("fd:0", FdSpec(0)),
    ],
)
def test_parse_listen_spec_accepts_every_documented_form(spec: str, expected: ParsedSpec) -> None:
    assert parse_listen_spec(spec) == expected


def test_unix_spec_with_at_sign_names_the_abstract_namespace() -> None:
    assert UnixSpec("@abstract").is_abstract
    assert not UnixSpec("/run/app.sock").is_abstract


# --- parse_listen_spec: what it refuses, and how it says so ------------------------


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("", "expected HOST:PORT"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("localhost", "expected HOST:PORT"),
        ("localhost:", "port '' is not a number"),
        (":", "port '' is not a number"),
        ("127.0.0.1:http", "port 'http' is not a number"),
        ("127.0.0.1:-1", "port '-1' is not a number"),
        ("127.0.0.1: 80", "is not a number"),
        ("127.0.0.1:65536", "port 65536 is out of range"),
        (":99999", "port 99999 is out of range"),
        ("::1", "an IPv6 address needs brackets"),
        ("::1:8080", "an IPv6 address needs brackets"),
        ("fe80::1:443", "an IPv6 address needs brackets"),
        ("[::1]", "expected [IPv6]:PORT"),
        ("[::1]8080", "expected [IPv6]:PORT"),
        ("[::1:8080", "expected [IPv6]:PORT"),
        ("[]:8080", "the IPv6 address is empty"),
        ("[::1]:", "port '' is not a number"),
        ("[::1]:x", "port 'x' is not a number"),
        ("[::1]:70000", "port 70000 is out of range"),
        ("unix:", "the unix socket path is empty"),
        ("unix:@", "the unix socket path is empty"),
        ("fd:x", "expected fd:N with N a number"),
        ("fd:", "expected fd:N with N a number"),
        ("fd:-1", "expected fd:N with N a number"),
        ("fd:3.0", "expected fd:N with N a number"),
    ],
)
def test_parse_listen_spec_refuses_bad_specs_with_a_message_naming_the_spec(
    spec: str, complaint: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_listen_spec(spec)
    message = str(caught.value)
    assert spec in message
    assert repr(spec) in message
    assert complaint in message


def test_parse_listen_spec_refuses_a_nul_byte_in_a_unix_path() -> None:
    spec = "unix:/tmp/a\0b"
    with pytest.raises(ConfigError, match="NUL byte") as caught:
        parse_listen_spec(spec)
    assert repr(spec) in str(caught.value)


def test_parse_listen_spec_refuses_something_that_is_not_a_string() -> None:
    with pytest.raises(ConfigError, match="invalid listen spec 8080: expected a string"):
        parse_listen_spec(cast("Any", 8080))


@pytest.mark.parametrize("spec", ["127.0.0.1:\u00b2", "fd:\u00b2", "[::1]:8\u00b9"])
def test_parse_listen_spec_refuses_non_ascii_digits_with_config_error(spec: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_listen_spec(spec)
    assert spec in str(caught.value)


# --- bind_listeners: TCP -----------------------------------------------------------


def test_bind_listeners_needs_at_least_one_spec() -> None:
    with pytest.raises(ConfigError, match="no listeners"):
        bind_listeners([])


def test_bind_listeners_binds_loopback_port_zero_to_a_real_port() -> None:
    with bound(["127.0.0.1:0"]) as (listener,):
        host, port = cast("tuple[str, int]", listener.address)
        assert host == "127.0.0.1"
        assert port > 0
        assert listener.spec == "127.0.0.1:0"
        assert listener.socket.getsockname() == ("127.0.0.1", port)
        assert listener.owned_path is None
        assert is_listening(listener.socket)
        assert listener.socket.getblocking() is False
        assert accepts_a_connection(listener.socket, socket.AF_INET, ("127.0.0.1", port))


def test_bind_listeners_binds_every_spec_in_order() -> None:
    with bound(["127.0.0.1:0", "127.0.0.1:0"]) as listeners:
        assert [listener.spec for listener in listeners] == ["127.0.0.1:0", "127.0.0.1:0"]
        assert listeners[0].address != listeners[1].address


def test_bind_listeners_refuses_a_port_in_use_naming_the_spec() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        spec = f"127.0.0.1:{blocker.getsockname()[1]}"

        with pytest.raises(ConfigError) as caught:
            bind_listeners([spec])

    message = str(caught.value)
    assert "address already in use" in message
    assert repr(spec) in message


def test_bind_listeners_failure_closes_the_listeners_it_bound_before() -> None:
    earlier_port = free_loopback_port()
    earlier = f"127.0.0.1:{earlier_port}"
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = f"127.0.0.1:{blocker.getsockname()[1]}"

        with pytest.raises(ConfigError) as caught:
            bind_listeners([earlier, busy])

    assert repr(busy) in str(caught.value)
    assert repr(earlier) not in str(caught.value)
    assert port_is_free(earlier_port)


def test_bind_listeners_failure_removes_the_unix_socket_file_it_created_before(
    tmp_path: Path,
) -> None:
    path = tmp_path / "earlier.sock"
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = f"127.0.0.1:{blocker.getsockname()[1]}"

        with pytest.raises(ConfigError, match="address already in use"):
            bind_listeners([f"unix:{path}", busy])

    assert not path.exists()


# --- bind_listeners: unix sockets --------------------------------------------------


def test_bind_listeners_binds_a_unix_socket_and_owns_its_file(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    spec = f"unix:{path}"
    with bound([spec]) as (listener,):
        assert listener.spec == spec
        assert listener.address == str(path)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert listener.owned_path is not None
        assert listener.owned_path[0] == str(path)
        assert listener.socket.getblocking() is False
        assert accepts_a_connection(listener.socket, socket.AF_UNIX, str(path))


def test_bind_listeners_resolves_a_relative_unix_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with bound(["unix:rel.sock"]) as (listener,):
        assert listener.address == str(tmp_path / "rel.sock")
    assert not (tmp_path / "rel.sock").exists()


def test_bind_listeners_refuses_a_unix_path_that_is_a_regular_file_and_keeps_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("do not delete me")
    spec = f"unix:{path}"

    with pytest.raises(ConfigError) as caught:
        bind_listeners([spec])

    message = str(caught.value)
    assert repr(spec) in message
    assert "is not a socket" in message
    assert path.read_text() == "do not delete me"


def test_bind_listeners_refuses_a_unix_path_that_is_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "dir"
    path.mkdir()
    spec = f"unix:{path}"

    with pytest.raises(ConfigError, match="is not a socket") as caught:
        bind_listeners([spec])

    assert repr(spec) in str(caught.value)
    assert path.is_dir()


def test_bind_listeners_replaces_a_stale_unix_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays behind, nobody listens on it
    assert stat.S_ISSOCK(os.lstat(path).st_mode)

    with bound([f"unix:{path}"]) as (listener,):
        st = os.lstat(path)
        assert listener.owned_path == (str(path), st.st_dev, st.st_ino)
        assert accepts_a_connection(listener.socket, socket.AF_UNIX, str(path))
    assert not path.exists()


def test_bind_listeners_refuses_a_unix_path_with_a_live_listener(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    spec = f"unix:{path}"
    with unix_listener(path) as live:
        with pytest.raises(ConfigError) as caught:
            bind_listeners([spec])

        message = str(caught.value)
        assert repr(spec) in message
        assert "another process is listening" in message
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert accepts_a_connection(live, socket.AF_UNIX, str(path))


def test_bound_listener_close_removes_the_socket_file_it_created(tmp_path: Path) -> None:
    path = tmp_path / "own.sock"
    (listener,) = bind_listeners([f"unix:{path}"])

    listener.close()

    assert not path.exists()
    assert listener.socket.fileno() == -1


def test_bound_listener_close_keeps_a_file_that_replaced_its_socket(tmp_path: Path) -> None:
    path = tmp_path / "own.sock"
    (listener,) = bind_listeners([f"unix:{path}"])
    path.unlink()
    path.write_text("someone else's")

    listener.close()

    assert path.read_text() == "someone else's"


def test_bound_listener_close_keeps_a_socket_that_replaced_its_socket(tmp_path: Path) -> None:
    path = tmp_path / "own.sock"
    (listener,) = bind_listeners([f"unix:{path}"])
    path.unlink()
    with unix_listener(path) as newcomer:
        listener.close()

        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert accepts_a_connection(newcomer, socket.AF_UNIX, str(path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux abstract namespace")
def test_bind_listeners_binds_an_abstract_unix_socket_without_a_file() -> None:
    name = f"graceful-test-{uuid.uuid4().hex}"
    with bound([f"unix:@{name}"]) as (listener,):
        assert listener.address == "\0" + name
        assert listener.owned_path is None
        assert listener.socket.getblocking() is False
        assert accepts_a_connection(listener.socket, socket.AF_UNIX, "\0" + name)


# --- bind_listeners: inherited fds and socket objects ------------------------------


def test_bind_listeners_refuses_fd_of_a_pipe_and_leaves_it_open() -> None:
    read_end, write_end = os.pipe()
    try:
        spec = f"fd:{read_end}"
        with pytest.raises(ConfigError) as caught:
            bind_listeners([spec])
        message = str(caught.value)
        assert repr(spec) in message
        assert "is not a socket" in message
        assert fd_is_open(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_bind_listeners_refuses_fd_that_is_not_open() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    spec = f"fd:{read_end}"

    with pytest.raises(ConfigError) as caught:
        bind_listeners([spec])

    assert repr(spec) in str(caught.value)
    assert "is not open" in str(caught.value)


def test_bind_listeners_adopts_fd_of_a_listening_socket() -> None:
    original = socket.socket()
    original.bind(("127.0.0.1", 0))
    original.listen()
    address = original.getsockname()
    fd = original.detach()  # the listener owns the fd from now on
    spec = f"fd:{fd}"

    with bound([spec]) as (listener,):
        assert listener.spec == spec
        assert listener.socket.fileno() == fd
        assert listener.address == address
        assert listener.owned_path is None
        assert listener.socket.getblocking() is False
        assert accepts_a_connection(listener.socket, socket.AF_INET, address)
    assert not fd_is_open(fd)


def test_bind_listeners_makes_an_inherited_bound_socket_listen() -> None:
    original = socket.socket()
    original.bind(("127.0.0.1", 0))
    fd = original.detach()

    with bound([f"fd:{fd}"]) as (listener,):
        assert is_listening(listener.socket)
        assert listener.socket.getblocking() is False


def test_bind_listeners_refuses_fd_of_a_datagram_socket_and_leaves_it_open() -> None:
    fd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()
    try:
        spec = f"fd:{fd}"
        with pytest.raises(ConfigError, match="not a stream socket") as caught:
            bind_listeners([spec])
        assert repr(spec) in str(caught.value)
        del caught
        gc.collect()
        assert fd_is_open(fd)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def test_bind_listeners_makes_a_bound_socket_object_listen() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    assert not is_listening(sock)

    with bound([sock]) as (listener,):
        assert listener.socket is sock
        assert listener.spec == f"socket:{sock.fileno()}"
        assert listener.address == sock.getsockname()
        assert is_listening(sock)
        assert sock.getblocking() is False
        assert accepts_a_connection(sock, socket.AF_INET, sock.getsockname())


def test_bind_listeners_makes_a_listening_blocking_socket_object_non_blocking() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    assert sock.getblocking() is True

    with bound([sock]) as (listener,):
        assert listener.socket.getblocking() is False


def test_bind_listeners_refuses_a_datagram_socket_object() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(ConfigError, match="not a stream socket") as caught:
            bind_listeners([sock])
        assert f"socket:{sock.fileno()}" in str(caught.value)


def test_every_kind_of_listener_is_non_blocking(tmp_path: Path) -> None:
    inherited = socket.socket()
    inherited.bind(("127.0.0.1", 0))
    inherited.listen()
    passed = socket.socket()
    passed.bind(("127.0.0.1", 0))
    specs: list[str | socket.socket] = [
        "127.0.0.1:0",
        f"unix:{tmp_path / 'a.sock'}",
        f"fd:{inherited.detach()}",
        passed,
    ]

    with bound(specs) as listeners:
        assert [listener.socket.getblocking() for listener in listeners] == [False] * 4
