"""Development mode: watching the sources (:mod:`~graceful.dev.watch`) and one
status line per reload on the terminal (:mod:`~graceful.dev.terminal`). Runs in the
supervisor.
"""
