"""One reading of a service's configuration: what a command hands the supervisor
for each generation (:mod:`graceful.supervisor.reconfigure`). Pure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graceful.core.settings import ServiceSettings


@dataclass(frozen=True)
class Configured:
    """One reading of a service's configuration."""

    #: the service's settings, as read
    settings: ServiceSettings
    #: the keyword arguments of the workers' entry function
    entry_options: dict[str, Any]
    #: ``anyio.run``'s backend options in the workers
    backend_options: dict[str, Any]
    #: the variables the workers get on top of the supervisor's environment
    environment: dict[str, str]
    #: every setting given (on the command line, in the environment, in the file),
    #: by name, checked
    given: dict[str, object]


#: Reads the configuration again, from the working directory the new generation
#: starts in (a relative path is read from the release the service points to now);
#: raises :class:`ConfigError` in one line.
Reread = Callable[[str], Configured]
