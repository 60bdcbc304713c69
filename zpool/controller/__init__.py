"""The controller: hub (sockets, engine registry, heartbeats, routing) and task scheduler.

Started as its own process with ``python -m zpool.controller``; it never
imports :mod:`zpool.serialize`, since payloads pass through it untouched.

``hub`` (the loop and its sockets) drives ``scheduler`` (queues, placement,
recall, direct tasks), which keeps waiting tasks in ``graph`` and finished
ones in ``records``; ``tasks`` holds the records both move around, ``flags``
checks a client's flags once, ``registry`` holds one record per engine,
``segments`` counts shared-memory segments, ``heartbeat`` counts missed
beats and ``launcher`` runs local engine processes. All but the hub and
the launcher are pure bookkeeping, with no sockets or processes.
"""
