"""What runs in the processes graceful starts, on their side: a worker
(:mod:`~graceful.child.worker`, with the :class:`~graceful.child.context.Context` the
user's code is given), a warm standby (:mod:`~graceful.child.standby`), a template
(:mod:`~graceful.child.template`) and the orphan guard's program
(:mod:`~graceful.child.guard`). Each is entered through :mod:`graceful._boot`.
"""
