"""What kind of application a callable is, and how graceful serves each kind.

``graceful serve --interface`` takes uvicorn's names: ``asgi3``, ``asgi2``,
``wsgi``, and ``auto`` (the default), which recognises all three from the
callable itself, in each worker, so that a reload may change the kind:

* a coroutine function, or an object whose ``__call__`` is one: ASGI 3;
* a plain callable taking two positional arguments (``environ, start_response``),
  such as a Flask app, Django's ``WSGIHandler``, a ``functools.partial`` of a WSGI
  function or a PEP 3333 class: WSGI;
* a plain callable taking one (``scope``), such as an ASGI 2 class: ASGI 2;
* anything else (a callable whose signature cannot be read): ASGI 3, as uvicorn
  assumes.

Every kind is served as ASGI 3. A WSGI app runs through ``a2wsgi`` (a well-kept
adapter, the one uvicorn's documentation recommends over its own deprecated
``WSGIMiddleware``) in a pool of ``threads`` threads, on graceful's draining
uvicorn protocols: it gets the same keep-alive-aware drain, readiness, probation
and rollback as an ASGI app. Why this path and not a threaded WSGI server is
measured in docs/guides/asgi-wsgi.md.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from graceful._version import pip_install
from graceful.base.errors import ConfigError
from graceful.core.settings import Interface


def need_adapter(interface: Interface) -> None:
    """Refuse WSGI without its adapter installed.

    Raises:
        ConfigError: saying what to install.
    """
    if interface == "wsgi" and importlib.util.find_spec("a2wsgi") is None:
        raise ConfigError(f"interface='wsgi' needs a2wsgi: {pip_install('wsgi')}")


def detect(app: Any) -> Literal["asgi3", "asgi2", "wsgi"]:
    """The kind of ``app`` (see the module docstring)."""
    if inspect.isclass(app):
        # A class is called with the scope (ASGI 2) or with environ and
        # start_response (a PEP 3333 class, whose instances are the response); one
        # whose instances are awaitable is ASGI 3 (uvicorn's rule).
        if hasattr(app, "__await__"):
            return "asgi3"
        return "wsgi" if _required_positional(app) == 2 else "asgi2"
    call = getattr(app, "__call__", None)  # noqa: B004 - the method, not callability
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call):
        return "asgi3"
    required = _required_positional(app)
    if required == 2:
        return "wsgi"
    if required == 1:
        return "asgi2"
    return "asgi3"


def _required_positional(callable_: Any) -> int | None:
    """How many positional arguments calling ``callable_`` requires (``functools.partial``
    and bound methods included), or None if its signature cannot be read."""
    try:
        parameters = inspect.signature(callable_).parameters.values()
    except (TypeError, ValueError):
        return None
    return sum(
        1
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )


ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def as_asgi3(app: Any, interface: Interface, threads: int) -> tuple[ASGIApp, str]:
    """``app`` as an ASGI 3 application, and the kind it was found to be.

    Raises:
        ConfigError: for a WSGI app without a2wsgi installed.
    """
    kind = detect(app) if interface == "auto" else interface
    if kind == "wsgi":
        if importlib.util.find_spec("a2wsgi") is None:
            raise ConfigError(f"the app is a WSGI app, which needs a2wsgi: {pip_install('wsgi')}")
        from a2wsgi import WSGIMiddleware  # noqa: PLC0415 - optional

        return WSGIMiddleware(app, workers=threads), kind
    if kind == "asgi2":

        async def asgi2_as_asgi3(scope: Any, receive: Any, send: Any) -> None:
            instance = app(scope)
            await instance(receive, send)

        return asgi2_as_asgi3, kind
    return app, kind
