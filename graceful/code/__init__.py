"""The user's code: naming the entry point so that a fresh interpreter finds it
(:mod:`~graceful.code.entry`), the script the user ran
(:mod:`~graceful.code.main_script`), what kind of application it is
(:mod:`~graceful.code.interfaces`), the release directory it runs from
(:mod:`~graceful.code.release`), and whether what is on disk is what was imported
(:mod:`~graceful.code.bytecode`, :mod:`~graceful.code.stale_imports`).
"""
