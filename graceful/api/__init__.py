"""The public entry points, in the process the user starts: the decorator
(:mod:`~graceful.api.service`) and ``serve_asgi`` (:mod:`~graceful.api.asgi`).
"""
