"""The package's layout: no import cycles, and nothing below imports what is above
it (the layers are listed in ``pyproject.toml``, ``[tool.importlinter]``, and
checked by ``lint-imports`` in the ``lint`` session)."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

from graceful.child import standby


def test_no_module_of_graceful_imports_itself_through_others() -> None:
    graph = grimp.build_graph("graceful")  # type-checking imports included
    cycles = sorted(
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.find_shortest_chain(importer=imported, imported=importer) is not None
    )
    assert cycles == []


def test_no_text_names_a_module_of_graceful_that_is_not_there() -> None:
    """The modules moved into packages by process role: a comment, a docstring or a
    page that still names one by its old place (the private ``_hypercorn.py`` or
    ``_timeline`` at the package's top) sends its reader nowhere."""
    import re  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    root = Path(__file__).resolve().parent.parent
    named = re.compile(r"\bgraceful[./](_?[a-z][a-z_]*)(?:[./]([a-z_]+))?")
    missing = []
    for folder in ("graceful", "tests", "docs", "examples", "benchmarks"):
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in (".py", ".md", ".toml", ".yml") or not path.is_file():
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                for match in named.finditer(line):
                    module = match.group(1)
                    if not module.startswith("_") or module in ("__init__", "__main__"):
                        continue
                    if not (root / "graceful" / f"{module}.py").exists():
                        missing.append(f"{path.relative_to(root)}:{number}: {match.group(0)}")
    assert missing == []


def test_a_standby_warms_up_nothing_of_the_supervisors_side() -> None:
    """A standby imports ahead what the worker or the template it becomes will run
    (by name, which no import graph sees): never a module of the supervisor's side."""
    tree = ast.parse(Path(standby.__file__).read_text())
    named = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("graceful.")
    ]
    assert named, "the standby names no module to warm up any more: update this test"
    supervisor_side = ("graceful.spawn", "graceful.supervisor", "graceful.control", "graceful.cli")
    assert [name for name in named if name.startswith(supervisor_side)] == []
