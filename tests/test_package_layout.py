"""The package's layout: no import cycles, and nothing below imports what is above
it (the layers are listed in ``pyproject.toml``, ``[tool.importlinter]``, and
checked by ``lint-imports`` in the ``lint`` session)."""

from __future__ import annotations

import grimp


def test_no_module_of_graceful_imports_itself_through_others() -> None:
    graph = grimp.build_graph("graceful")  # type-checking imports included
    cycles = sorted(
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.find_shortest_chain(importer=imported, imported=importer) is not None
    )
    assert cycles == []
