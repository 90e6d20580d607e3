"""What every process of graceful uses, whatever its role: the errors it raises
(:mod:`~graceful.base.errors`), where its log lines go (:mod:`~graceful.base.log`),
task helpers (:mod:`~graceful.base.tasks`), processes as the kernel sees them
(:mod:`~graceful.base.processes`), and the fenced list of other libraries' internals
it relies on (:mod:`~graceful.base.hooks`). Imports nothing else of graceful.
"""
