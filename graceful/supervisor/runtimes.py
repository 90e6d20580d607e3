"""What each generation runs: its release, its interpreter, its graceful.

Every child says ``hello`` first (``_wire.Hello``: its graceful version and
protocol, its Python), and the factory records the release directory it started
it from. :class:`GenerationRuntimes` keeps that per generation for ``graceful
status``, refuses a child whose protocol is not the supervisor's (one line naming
both versions, see ``_version.py``), and says once per generation when it runs
another graceful than the supervisor ("generation 5 runs graceful 0.2.1 under
supervisor 0.2.0").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graceful._version import PROTOCOL, VERSION, mismatch
from graceful.base.log import logger
from graceful.wire.messages import Hello


@dataclass
class GenerationRuntime:
    """What a generation's workers said they run (the first worker to say it)."""

    graceful: str | None = None
    protocol: int | None = None
    python: str | None = None
    interpreter: str | None = None
    #: every release its workers were started from, in order (more than one: the
    #: link was switched while the generation started, or before a replacement)
    releases: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            # the first one's
            "release": self.releases[0] if self.releases else None,
            "releases": self.releases,
            "graceful": self.graceful,
            "protocol": self.protocol,
            "python": self.python,
            "interpreter": self.interpreter,
        }


class GenerationRuntimes:
    """The runtimes of the generations that have started workers."""

    def __init__(self) -> None:
        self._generations: dict[int, GenerationRuntime] = {}

    def hello(self, generation: int, release: str | None, hello: Hello) -> str | None:
        """A worker of ``generation``, started from ``release``, said ``hello``: None
        if the supervisor can speak to it, else the one line why not (the worker is
        then to be failed)."""
        refused = mismatch(hello.graceful, hello.protocol, "worker")
        if refused is not None:
            return refused
        known = self._generations.get(generation)
        if known is not None and release is not None and release not in known.releases:
            known.releases.append(release)
            logger.warning(
                "generation %d's workers run from %d releases (%s): the release link was "
                "switched while they started; reload to run one",
                generation,
                len(known.releases),
                ", ".join(known.releases),
            )
        if known is None:
            self._generations[generation] = GenerationRuntime(
                hello.graceful,
                hello.protocol,
                hello.python,
                hello.executable,
                [release] if release is not None else [],
            )
            if hello.graceful != VERSION:
                logger.info(
                    "generation %d runs graceful %s under supervisor %s (protocol %d)",
                    generation,
                    hello.graceful,
                    VERSION,
                    PROTOCOL,
                )
        return None

    def describe(self, generation: int) -> dict[str, Any]:
        """For ``graceful status``: what ``generation`` runs (None where unknown)."""
        return self._generations.get(generation, GenerationRuntime()).describe()

    def mixed(self, generation: int) -> bool:
        """Whether ``generation``'s workers were started from more than one release."""
        known = self._generations.get(generation)
        return known is not None and len(known.releases) > 1

    def forget(self, keep: set[int]) -> None:
        """Forget the generations not in ``keep`` (they are gone)."""
        for number in list(self._generations):
            if number not in keep:
                del self._generations[number]
