"""The controller: hub (registry, heartbeats, routing) and task scheduler.

Started as its own process with ``python -m zpool.controller``; it never
imports :mod:`zpool.serialize`, since payloads pass through it untouched.
"""
