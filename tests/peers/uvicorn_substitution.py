"""A pytest plugin: run uvicorn's own protocol and server tests against graceful's
draining protocol classes.

uvicorn's ``tests/conftest.py`` parametrizes the fixtures ``http_protocol_cls`` and
``ws_protocol_cls`` over its protocol classes, each loaded with
``import_from_string``. This plugin swaps that name in the conftest for a version
that returns graceful's subclass of each class, so every test that uses those
fixtures runs against what ``graceful serve`` runs.

Used by ``nox -s uvicorn_suite`` (see ``noxfile.py``) as ``-p uvicorn_substitution``.
"""

from __future__ import annotations

import types
from typing import Any

from graceful.servers.uvicorn import draining_protocol, draining_websocket_protocol

#: uvicorn's class names, and the option graceful builds its subclass from
HTTP = {"H11Protocol": "h11", "HttpToolsProtocol": "httptools"}
WEBSOCKETS = {
    "WSProtocol": "wsproto",
    "WebSocketsSansIOProtocol": "websockets-sansio",
    "WebSocketProtocol": "websockets",
}


def graceful_class(cls: Any) -> Any:
    """graceful's subclass of uvicorn protocol class ``cls`` (``cls`` itself for one
    graceful does not support).

    Some of uvicorn's tests pick their expectations by the class's ``__name__``
    (each implementation answers a bad handshake its own way), so the class handed
    to them carries the name of the class it stands in for.
    """
    name = getattr(cls, "__name__", "")
    ours: Any
    if name in HTTP:
        ours = draining_protocol(HTTP[name])
    elif name in WEBSOCKETS:
        ours = draining_websocket_protocol(WEBSOCKETS[name])
    else:
        return cls
    return type(name, (ours,), {"__module__": ours.__module__})


def pytest_plugin_registered(plugin: object, manager: object) -> None:
    """Swap ``import_from_string`` in uvicorn's ``tests/conftest.py`` as it loads."""
    if not isinstance(plugin, types.ModuleType):
        return
    if not (getattr(plugin, "__file__", "") or "").endswith("conftest.py"):
        return
    original = getattr(plugin, "import_from_string", None)
    if original is None:
        return

    def import_graceful_class(import_str: str) -> Any:
        return graceful_class(original(import_str))

    plugin.import_from_string = import_graceful_class  # type: ignore[attr-defined]
