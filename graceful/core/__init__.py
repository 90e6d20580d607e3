"""The decisions, with no I/O: runs in the supervisor, called by its loop.

Everything that affects what the supervisor does next lives here: events in,
actions out (:mod:`~graceful.core.machine`). Nothing here reads a clock, a socket
or a process; the decision tests drive it with plain calls.
"""
