"""The servers a worker hosts for ``graceful serve``: uvicorn, hypercorn, and the
ASGI/WSGI app loading they share. Runs in workers (and warms up in standbys).
"""
