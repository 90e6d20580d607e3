"""graceful's version, and the version of the contract between its processes.

A running supervisor spawns children that import graceful from disk, which may be
another install by then (a ``pip install -U``, a new release directory). What
crosses between them is a contract between versions (see the design notes, "The
version contract"):

* the boot entries, ``graceful._boot.start_worker``, ``start_standby`` and
  ``start_template``, with their arguments;
* the bootstrap each is given: :data:`BOOTSTRAP_HEADER`, then the pickled
  bootstrap of that protocol (the types of :mod:`graceful.wire.bootstrap`, named in
  the pickle by module and name);
* the wire messages (:mod:`graceful.wire.messages`), the first of which, ``hello``, is the same in
  every protocol: it says which graceful and which protocol the child runs.

:data:`PROTOCOL` changes whenever any of these does (a bootstrap's fields
included: ``tests/test_version_contract.py`` pins them), and a supervisor
refuses, with one line, a child whose protocol is not its own. This module imports
nothing but ``sys`` and ``json``: the boot entries read it before anything else.
"""

import json
import sys

#: graceful's version (the package's metadata is read from here).
VERSION = "0.1.0"

#: The name graceful is installed by (``pip install graceful-restarts``): ``graceful``
#: on PyPI is another project. The import name and the command stay ``graceful``.
DISTRIBUTION = "graceful-restarts"


def pip_install(extra: str) -> str:
    """The command that installs graceful with ``extra``, for a one-line error."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


#: The version of the contract between a supervisor and the processes it starts.
#: 1 was graceful before the contract was written down (no hello); 3 moved the
#: bootstrap types into one module, :mod:`graceful.wire.bootstrap` (a pickle names
#: each type by its module); 4 sends each worker its vitals page after the listeners
#: (:mod:`graceful.wire.vitals`) and tells it its heartbeat (``WorkerOptions``).
PROTOCOL = 4

#: The version of the *succession contract*: what a supervisor hands the successor it
#: starts (``graceful upgrade``): the boot entry ``graceful._boot.start_supervisor``,
#: its JSON bootstrap and the JSON datagrams between the two supervisors (see
#: :mod:`graceful.spawn.successor`). Unlike :data:`PROTOCOL`, it is kept compatible
#: between every pair of versions, since upgrading across versions is what it is
#: for: fields are only ever added, and each side ignores what it does not know.
SUCCESSION = 1

#: What every bootstrap starts with, before its pickle.
BOOTSTRAP_HEADER = b"graceful-bootstrap/%d\n" % PROTOCOL


def python_version() -> str:
    """This interpreter's version, as ``3.11.7``."""
    return ".".join(str(part) for part in sys.version_info[:3])


def mismatch(graceful: str, protocol: int, role: str) -> str | None:
    """None if a child (a ``role``: "worker", "standby", "template") that runs
    ``graceful`` with ``protocol`` can be spoken to; else the one line that says
    why not and what to do."""
    if protocol == PROTOCOL:
        return None
    return (
        f"the {role} runs graceful {graceful} (protocol {protocol}), which this "
        f"supervisor (graceful {VERSION}, protocol {PROTOCOL}) cannot speak to: restart "
        f"the service to run graceful {graceful}"
    )


def _hello_json() -> bytes:
    fields = {
        "graceful": VERSION,
        "protocol": PROTOCOL,
        "python": python_version(),
        "executable": sys.executable[:300],
    }
    return json.dumps(fields, ensure_ascii=True).encode("ascii")


def hello_line() -> bytes:
    """The ``hello`` message of this process as a line of the control protocol
    (:class:`graceful.wire.messages.Hello`), written by hand: the boot entries say it
    before anything else is imported."""
    return b'["hello",' + _hello_json() + b"]\n"


def hello_datagram() -> bytes:
    """The same, as the first JSON datagram on a standby's or a template's link:
    ``{"hello": {...}}``."""
    return b'{"hello":' + _hello_json() + b"}"
