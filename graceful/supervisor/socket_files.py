"""Who removes the files of the listening sockets during an upgrade.

A unix listener's file and the control socket's file are removed at exit by the
supervisor that owns them, and only if they are still the files it knows (see
:meth:`graceful.sockets.listeners.BoundListener.close` and
:meth:`graceful.control.server.ControlSocket.close`). During ``graceful upgrade`` two
supervisors hold the same sockets, and exactly one of them owns the files at any
moment (:mod:`graceful.supervisor.upgrade`):

* the running supervisor owns them all until it hands over (:meth:`hand_over`), and
  again if the service comes back to it (:meth:`take_back`);
* the successor owns the files it created itself from the start (listen specs new in
  its configuration), and those handed over to it once it takes over
  (:meth:`take_over`), until it gives the service back (:meth:`give_back`). The
  files of handed-over listeners its configuration no longer has are removed once
  the predecessor will not take the service back (:meth:`drop_unused`): their
  sockets close when the predecessor exits.
"""

from __future__ import annotations

from graceful.child.successor import Inheritance
from graceful.control.server import DISOWNED, ControlSocket
from graceful.sockets.listeners import BoundListener

#: A listener, and the file (path, device, inode) it removes at exit when owned.
Entry = tuple[BoundListener, tuple[str, int, int] | None]


class SocketFiles:
    """The files of this supervisor's listening sockets (see the module docstring)."""

    def __init__(
        self,
        handed: list[Entry],
        own: list[Entry],
        control: ControlSocket | None,
        control_identity: tuple[int, int],
        unused: list[Entry] | None = None,
    ) -> None:
        #: shared with the other supervisor of an upgrade
        self._handed = handed
        #: created by this successor itself
        self._own = own
        self._control = control
        #: the control socket file's (device, inode)
        self.control_identity = control_identity
        self._unused = unused or []

    @classmethod
    def of(
        cls,
        listeners: list[BoundListener],
        control: ControlSocket | None,
        inheritance: Inheritance | None,
    ) -> SocketFiles:
        """The files of ``listeners`` and ``control``, as owned now: all of them by a
        supervisor started by hand; by a successor, only those it created itself.
        A successor's handed-over listeners that its configuration does not use are
        closed now."""
        if inheritance is None:
            entries = [(listener, listener.owned_path) for listener in listeners]
            identity = control.identity if control is not None else DISOWNED
            return cls(entries, [], control, identity)
        handed_ids = {id(listener) for listener, _ in inheritance.files}
        used = {id(listener) for listener in listeners}
        handed = [entry for entry in inheritance.files if id(entry[0]) in used]
        unused = [entry for entry in inheritance.files if id(entry[0]) not in used]
        for listener, _ in unused:
            listener.socket.close()  # the predecessor's copy serves until it exits
        own = [
            (listener, listener.owned_path)
            for listener in listeners
            if id(listener) not in handed_ids
        ]
        owned_control = inheritance.control_owned
        identity = (owned_control[1], owned_control[2]) if owned_control else DISOWNED
        return cls(handed, own, control, identity, unused)

    def _set(self, entries: list[Entry], owned: bool) -> None:
        for listener, path in entries:
            listener.owned_path = path if owned else None

    def hand_over(self) -> None:
        """Leave every file to the successor."""
        self._set(self._handed + self._own, False)
        if self._control is not None:
            self._control.identity = DISOWNED

    def take_back(self) -> None:
        """Own every file again (the successor gave the service back)."""
        self._set(self._handed + self._own, True)
        if self._control is not None:
            self._control.identity = self.control_identity

    def take_over(self) -> None:
        """A successor owns the handed-over files too."""
        self.take_back()

    def give_back(self) -> None:
        """A successor leaves the handed-over files to its predecessor again, and
        keeps its own."""
        self._set(self._handed, False)
        if self._control is not None:
            self._control.identity = DISOWNED

    def drop_unused(self) -> None:
        """Remove the files of the handed-over listeners no longer configured (the
        predecessor will not take the service back)."""
        unused, self._unused = self._unused, []
        for listener, path in unused:
            listener.owned_path = path
            listener.close()
