"""Steering a running supervisor: its control socket (the protocol in
:mod:`~graceful.control.protocol`, the supervisor's side in
:mod:`~graceful.control.server`, the client in :mod:`~graceful.control.client`) and
the PID file that finds it (:mod:`~graceful.control.pidfile`).
"""
