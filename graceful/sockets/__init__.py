"""Listeners: listen specs parsed, bound once by the supervisor (or taken from
systemd's socket activation), described to workers, and rebuilt there.
"""
