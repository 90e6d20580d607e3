"""The supervisor's side of the process seam: starting workers, standbys, templates
and the orphan guard, and following each until it is reaped. The supervisor's
loop sees only :class:`~graceful.spawn.spawner.ProcessFactory`; tests replace it.
"""
