"""Everything that crosses a process boundary: the bootstrap each spawned process is
given (:mod:`~graceful.wire.bootstrap`), the messages on a worker's channels
(:mod:`~graceful.wire.messages`), and the descriptors passed over sockets.

Both sides import this package: what is here is the contract between a running
supervisor and the (possibly newer) graceful its children import from disk.
"""
