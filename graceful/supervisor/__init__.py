"""The supervisor process: the checks before anything runs and the clean-up after
(:mod:`~graceful.supervisor.run`), the event loop that carries the core's actions out
(:mod:`~graceful.supervisor.loop`), the health endpoint and metrics
(:mod:`~graceful.supervisor.health`), systemd's notifications
(:mod:`~graceful.supervisor.systemd`) and what each generation runs
(:mod:`~graceful.supervisor.runtimes`).
"""
