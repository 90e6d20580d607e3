"""Listeners: parsing listen specs, binding them once, and describing them to workers.

The supervisor binds every listener exactly once. All generations of workers share
the same kernel sockets (and so the same accept queues), which is what lets a
connection that waits in the backlog during a reload be accepted by whichever
generation calls ``accept()`` next.

Spec grammar (see :func:`parse_listen_spec`):

* ``":8080"``: every interface (dual-stack IPv6 where the host has it);
* ``"HOST:PORT"`` and ``"[IPv6]:PORT"``; port ``0`` asks for an ephemeral port;
* ``"unix:/path/to.sock"`` (``"unix:@name"`` for the Linux abstract namespace);
* ``"fd:N"``: a listening socket this process inherited as file descriptor ``N``;
* ``"systemd"`` / ``"systemd:NAME"``: sockets passed by systemd socket activation.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
import stat
from dataclasses import dataclass
from typing import Any, TypeAlias

from graceful.base.errors import ConfigError
from graceful.sockets.activation import sockets_named

#: The backlog of every listener graceful binds. A deep queue is what absorbs the
#: connections that arrive while one generation hands over to the next.
BACKLOG = socket.SOMAXCONN

#: The largest descriptor number a listen spec may name (file descriptors are C ints).
MAX_FD = 2**31 - 1

#: Descriptors the supervisor keeps per live worker (its control channel, its fd
#: channel, its exit sentinel, its pidfd and its vitals page), and the most one start
#: uses on top while it runs.
_FDS_PER_WORKER = 5
_FDS_PER_START = 8
#: What the supervisor and a worker need beyond that: the interpreter, the event
#: loop, the resource tracker, systemd's socket, a worker's own imports.
_FDS_SPARE = 24


@dataclass(frozen=True)
class TCPSpec:
    """``HOST:PORT``; ``host == ""`` means every interface."""

    host: str
    port: int


@dataclass(frozen=True)
class UnixSpec:
    """``unix:PATH``; a leading ``@`` names a Linux abstract-namespace socket."""

    path: str

    @property
    def is_abstract(self) -> bool:
        return self.path.startswith("@")


@dataclass(frozen=True)
class FdSpec:
    """``fd:N``: an already-open listening socket inherited by this process."""

    fd: int


@dataclass(frozen=True)
class SystemdSpec:
    """``systemd`` (every socket systemd passed) or ``systemd:NAME`` (by
    ``FileDescriptorName=``)."""

    name: str | None


ParsedSpec: TypeAlias = TCPSpec | UnixSpec | FdSpec | SystemdSpec
Address: TypeAlias = "tuple[str, int] | tuple[str, int, int, int] | str"


@dataclass(frozen=True)
class Listener:
    """One listening socket as a worker sees it.

    Attributes:
        socket: the worker's own copy of the listening socket, non-blocking.
            Closing it stops *this* process from accepting; other generations keep
            their copies.
        spec: the listen spec it came from, as the user wrote it (for a socket
            object passed in ``listen=``, a description such as ``"socket:3"``).
        address: the bound address, as ``socket.getsockname()`` returns it; with
            port 0 it holds the real port.
    """

    socket: socket.socket
    spec: str
    address: Address


def parse_listen_spec(spec: str) -> ParsedSpec:
    """Parse one listen spec string, without touching the network.

    Raises:
        ConfigError: naming ``spec`` and what is wrong with it.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"invalid listen spec {spec!r}: expected a string or a socket")
    if spec == "systemd":
        return SystemdSpec(None)
    if spec.startswith("systemd:"):
        name = spec[len("systemd:") :]
        if not name or ":" in name or not name.isprintable():
            raise ConfigError(f"invalid listen spec {spec!r}: expected systemd:NAME")
        return SystemdSpec(name)
    if spec.startswith("unix:"):
        path = spec[len("unix:") :]
        if not path or path == "@":
            raise ConfigError(f"invalid listen spec {spec!r}: the unix socket path is empty")
        if "\0" in path:
            raise ConfigError(f"invalid listen spec {spec!r}: the path contains a NUL byte")
        return UnixSpec(path)
    if spec.startswith("fd:"):
        text = spec[len("fd:") :]
        if not _is_number(text):
            raise ConfigError(f"invalid listen spec {spec!r}: expected fd:N with N a number")
        if len(text.lstrip("0")) > 10 or int(text) > MAX_FD:
            raise ConfigError(
                f"invalid listen spec {spec!r}: file descriptor {text} is out of range"
            )
        return FdSpec(int(text))
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"invalid listen spec {spec!r}: expected [IPv6]:PORT")
        if not host:
            raise ConfigError(f"invalid listen spec {spec!r}: the IPv6 address is empty")
        return TCPSpec(host, _parse_port(spec, rest[1:]))
    host, sep, port_text = spec.rpartition(":")
    if not sep:
        raise ConfigError(
            f"invalid listen spec {spec!r}: expected HOST:PORT, :PORT, [IPv6]:PORT, "
            "unix:PATH or fd:N"
        )
    if ":" in host:
        raise ConfigError(
            f"invalid listen spec {spec!r}: an IPv6 address needs brackets, as in [::1]:8080"
        )
    return TCPSpec(host, _parse_port(spec, port_text))


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _parse_port(spec: str, text: str) -> int:
    if not _is_number(text):
        raise ConfigError(f"invalid listen spec {spec!r}: port {text[:20]!r} is not a number")
    if len(text.lstrip("0")) > 5:
        raise ConfigError(f"invalid listen spec {spec[:40]!r}: the port is out of range")
    port = int(text)
    if port > 65535:
        raise ConfigError(f"invalid listen spec {spec!r}: port {port} is out of range")
    return port


@dataclass
class BoundListener:
    """A listener the supervisor holds for the life of the service."""

    socket: socket.socket
    spec: str
    address: Address
    #: (st_dev, st_ino) of a unix socket file this process created, so that it
    #: removes that file at exit and never a file someone else put there later.
    owned_path: tuple[str, int, int] | None = None
    #: True for a socket this process did not create (``fd:N``, systemd, a socket
    #: object): its owner may hand it to a successor, so it stays open until exit.
    adopted: bool = False

    def close(self) -> None:
        """Close the supervisor's copy and remove the unix socket file it created."""
        self.socket.close()
        if self.owned_path is None:
            return
        path, dev, ino = self.owned_path
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (dev, ino):
                os.unlink(path)


def bind_listeners(
    specs: list[str | socket.socket], inherited: dict[str, list[BoundListener]] | None = None
) -> list[BoundListener]:
    """Bind (or adopt) every listener, or bind none. A spec found in ``inherited``
    (what a predecessor handed over, by spec: ``graceful upgrade``) takes those
    sockets, removed from it, instead of binding anew.

    Raises:
        ConfigError: naming the first spec that could not be used, or that names the
            same socket as an earlier one; every listener bound before it is closed
            again.
    """
    if not specs:
        raise ConfigError("no listeners: pass at least one listen spec, as in listen=[':8080']")
    _refuse_repeated_specs(specs)
    bound: list[BoundListener] = []
    try:
        for spec in specs:
            taken = _take_inherited(spec, inherited) if inherited else None
            for listener in taken or _bind_described(spec):
                _refuse_shared_descriptor(listener, bound)
                bound.append(listener)
    except BaseException:
        for listener in bound:
            listener.close()
        raise
    return bound


def _take_inherited(
    spec: str | socket.socket, inherited: dict[str, list[BoundListener]]
) -> list[BoundListener] | None:
    """What a predecessor handed over for ``spec``, removed from ``inherited``: by the
    spec's text; for ``systemd``, every socket systemd passed it (each named
    ``systemd:NAME``)."""
    if not isinstance(spec, str):
        return None
    if spec in inherited:
        return inherited.pop(spec)
    if spec == "systemd":
        names = [name for name in inherited if name.startswith("systemd:")]
        return [listener for name in names for listener in inherited.pop(name)] or None
    return None


def _bind_described(spec: str | socket.socket) -> list[BoundListener]:
    """:func:`_bind`, with running out of descriptors said in one line."""
    try:
        return _bind(spec)
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        raise ConfigError(
            f"cannot listen on {spec!r}: too many open files (the limit is {soft}; raise it "
            "with `ulimit -n` or LimitNOFILE=)"
        ) from None


def _refuse_repeated_specs(specs: list[str | socket.socket]) -> None:
    """Refuse two specs that name the same listener, before anything is bound (a
    second bind of the same unix path would find the first one listening)."""
    seen: dict[tuple[object, ...], str | socket.socket] = {}
    for spec in specs:
        key: tuple[object, ...] | None
        if isinstance(spec, socket.socket):
            key = ("fd", spec.fileno())
        else:
            parsed = parse_listen_spec(spec)
            if isinstance(parsed, UnixSpec):
                key = ("unix", parsed.path if parsed.is_abstract else os.path.abspath(parsed.path))
            elif isinstance(parsed, FdSpec):
                key = ("fd", parsed.fd)
            elif isinstance(parsed, SystemdSpec):
                key = ("systemd", parsed.name)
            else:
                key = ("tcp", parsed.host, parsed.port) if parsed.port else None
        if key is None:
            continue
        if key in seen:
            raise ConfigError(
                f"cannot listen on {spec!r}: the same listener is given more than once "
                f"(also as {seen[key]!r})"
            )
        seen[key] = spec


def _refuse_shared_descriptor(listener: BoundListener, earlier: list[BoundListener]) -> None:
    """Refuse a listener whose descriptor an earlier spec already adopted (``fd:3``
    beside ``systemd``, say); the duplicate is let go without closing it."""
    for other in earlier:
        if other.socket.fileno() == listener.socket.fileno():
            listener.socket.detach()
            raise ConfigError(
                f"cannot listen on {listener.spec!r}: the same listener is given more than "
                f"once (also as {other.spec!r})"
            )


def most_workers() -> int | None:
    """How many workers per generation the descriptor limit leaves room for, by the
    reckoning of :func:`check_descriptor_headroom`, from the descriptors in use now;
    None without a limit. (For scaling: call it before any worker is started.)"""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
    return max(1, (soft - in_use - _FDS_PER_START - _FDS_SPARE) // (3 * _FDS_PER_WORKER))


def check_descriptor_headroom(listeners: int, workers: int) -> None:
    """Refuse to start when the descriptor limit leaves too little room beside
    ``listeners`` for ``workers`` per generation (three generations during a reload
    on probation: parked, serving, starting), in the supervisor or in a worker,
    which receives every listener too.

    Raises:
        ConfigError: naming the limit and how to raise it.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = listeners + 3
    needed = in_use + 3 * workers * _FDS_PER_WORKER + _FDS_PER_START + _FDS_SPARE
    if needed > soft:
        raise ConfigError(
            f"{listeners} listeners leave too few file descriptors for {workers} "
            f"worker{'s' if workers != 1 else ''} (about {needed} are needed; the limit is "
            f"{soft}; raise it with `ulimit -n` or LimitNOFILE=)"
        )


def _bind(spec: str | socket.socket) -> list[BoundListener]:
    if isinstance(spec, socket.socket):
        return [_adopt_socket(spec, f"socket:{spec.fileno()}")]
    parsed = parse_listen_spec(spec)
    if isinstance(parsed, SystemdSpec):
        return [
            _adopt_fd(f"systemd:{activated.name}", activated.fd)
            for activated in sockets_named(parsed.name)
        ]
    if isinstance(parsed, FdSpec):
        return [_adopt_fd(spec, parsed.fd)]
    if isinstance(parsed, UnixSpec):
        return [_bind_unix(spec, parsed)]
    return [_bind_tcp(spec, parsed)]


def _bind_tcp(spec: str, parsed: TCPSpec) -> BoundListener:
    sockaddr: tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]
    if parsed.host == "":
        if socket.has_dualstack_ipv6():
            family, sockaddr = socket.AF_INET6, ("::", parsed.port)
        else:
            family, sockaddr = socket.AF_INET, ("0.0.0.0", parsed.port)
    else:
        try:
            infos = socket.getaddrinfo(
                parsed.host, parsed.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as exc:
            raise ConfigError(f"cannot listen on {spec!r}: {exc.strerror}") from None
        except UnicodeError as exc:
            # the IDNA codec: an empty label, or one longer than 63 characters
            reason = str(exc.__cause__ or exc.__context__ or exc)
            raise ConfigError(
                f"cannot listen on {spec!r}: {parsed.host!r} is not a valid host name ({reason})"
            ) from None
        family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # ":PORT" means both stacks; an explicit IPv6 address means only IPv6.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(parsed.host != ""))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {spec!r}: {_describe(exc)}") from None
    _listen(sock, sockaddr, spec)
    return BoundListener(sock, spec, sock.getsockname())


def _listen(sock: socket.socket, address: Any, spec: str) -> None:
    """Bind ``sock`` to ``address`` and listen, non-blocking; on failure close it and
    raise :class:`ConfigError` naming ``spec``."""
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {spec!r}: {_describe(exc)}") from None
    sock.setblocking(False)


def _bind_unix(spec: str, parsed: UnixSpec) -> BoundListener:
    if parsed.is_abstract:
        address: str = "\0" + parsed.path[1:]
    else:
        address = os.path.abspath(parsed.path)
        _clear_stale_unix_socket(spec, address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    _listen(sock, address, spec)
    owned = None
    if not parsed.is_abstract:
        st = os.lstat(address)
        owned = (address, st.st_dev, st.st_ino)
    return BoundListener(sock, spec, address, owned_path=owned)


def _clear_stale_unix_socket(spec: str, path: str) -> None:
    """Remove a socket file nobody listens on; refuse anything else at ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(
            f"cannot listen on {spec!r}: {path} exists and is not a socket; "
            "graceful never removes it"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)  # a stale socket file: nobody accepts on it
        except PermissionError:
            raise ConfigError(
                f"cannot listen on {spec!r}: {path} is a stale socket owned by another user "
                f"(uid {st.st_uid}) that this user may not remove; remove it, or listen "
                "elsewhere"
            ) from None
        return
    except OSError as exc:
        raise ConfigError(f"cannot listen on {spec!r}: {_describe(exc)}") from None
    finally:
        probe.close()
    raise ConfigError(f"cannot listen on {spec!r}: another process is listening on {path}")


def _adopt_fd(spec: str, fd: int) -> BoundListener:
    try:
        st = os.fstat(fd)
    except OSError:
        raise ConfigError(f"cannot listen on {spec!r}: file descriptor {fd} is not open") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"cannot listen on {spec!r}: file descriptor {fd} is not a socket")
    sock = socket.socket(fileno=fd)
    try:
        return _adopt_socket(sock, spec)
    except ConfigError:
        sock.detach()  # refusing the fd must not close it
        raise


def _adopt_socket(sock: socket.socket, spec: str) -> BoundListener:
    """Use an already-open socket; see :attr:`BoundListener.adopted`."""
    if sock.type != socket.SOCK_STREAM:
        raise ConfigError(f"cannot listen on {spec!r}: the socket is not a stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        try:
            sock.listen(BACKLOG)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {spec!r}: {_describe(exc)}") from None
    sock.setblocking(False)
    return BoundListener(sock, spec, sock.getsockname(), adopted=True)


def _describe(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this host"
    return exc.strerror or str(exc)


def format_address(address: Address) -> str:
    """Render a bound address the way a user would type it back as a spec."""
    if isinstance(address, str):
        if address.startswith("\0"):
            return "unix:@" + address[1:]
        return "unix:" + address
    host, port = address[0], address[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
