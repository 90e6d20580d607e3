"""Developer sessions: ``nox -s tests lint typecheck examples``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "examples"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, in parallel: real supervisors, real signals, real load."""
    session.install("-e", ".[test]")
    session.run("pytest", "-n", "auto", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting of every Python file; the package's layers."""
    session.install("-e", ".", "ruff>=0.6", "import-linter>=2.1")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # the package's layers (pyproject.toml, [tool.importlinter])
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, tests, examples, benchmarks and the docs hooks."""
    session.install("-e", ".[test,docs]", "mypy>=1.10", "types-psutil", "nox", "matplotlib>=3.8")
    session.run("mypy")


@nox.session
def examples(session: nox.Session) -> None:
    """Each example starts, serves, reloads edited code and stops; the demo loses nothing."""
    session.install("-e", ".[test]")
    session.run("pytest", "-n", "auto", "tests/test_examples.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, built into site/ with ``mkdocs build --strict``: a broken
    link, a broken cross-reference or a docstring warning fails it."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


#: The server versions graceful supports, as pyproject.toml bounds them: the oldest
#: and the newest are tested by the ``servers`` session.
SERVER_VERSIONS = {
    "oldest": ["uvicorn==0.35.0", "hypercorn==0.16.0"],
    "newest": ["uvicorn>=0.35,<0.55", "hypercorn>=0.16,<0.19"],
}


@nox.session
@nox.parametrize("servers", list(SERVER_VERSIONS))
def servers(session: nox.Session, servers: str) -> None:
    """The server tests and the hook contract against the oldest and the newest
    uvicorn and hypercorn that pyproject.toml allows."""
    session.install("-e", ".[test]")
    session.install("--upgrade", *SERVER_VERSIONS[servers])
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    session.run(
        "pytest", "-n", "auto", "tests/test_hooks.py", "tests/test_asgi.py",
        "tests/test_examples.py", *session.posargs,
    )  # fmt: skip


@nox.session
def uvicorn_suite(session: nox.Session) -> None:
    """uvicorn's own protocol and server tests against graceful's protocol classes.

    Downloads the source release of the installed uvicorn and fails on any test
    that deviates without being listed, with its reason, in
    tests/peers/uvicorn_deviations.toml.
    """
    session.install("-e", ".[test]")
    version = session.run(
        "python", "-c", "import importlib.metadata as m; print(m.version('uvicorn'))", silent=True
    )
    assert isinstance(version, str)
    session.install(
        f"uvicorn[standard]=={version.strip()}",
        "pytest-mock",
        "trustme",
        "cryptography",
        "a2wsgi",
        "httpx2",
    )
    session.run("python", "tests/peers/run_uvicorn_suite.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """graceful against its peers, one run, about 12 minutes on 2 cores (not part of CI).

    Needs wrk (apt-get install wrk). Writes benchmarks/results/: results.json,
    results.md and PNG plots. ``nox -s bench -- --quick`` for a short smoke run.
    """
    session.install("-e", ".[test]", "gunicorn>=21", "granian>=2", "matplotlib>=3.7")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session(python=False)
def real_systemd(session: nox.Session) -> None:
    """Both unit recipes of examples/systemd/ under a real systemd 257, booted with
    systemd-nspawn (root; needs debootstrap and systemd-container; not part of CI)."""
    session.run("python3", "tests/real_systemd.py", *session.posargs, external=True)
