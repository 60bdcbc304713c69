"""The controller: hub (sockets, engine registry, heartbeats, routing) and task scheduler.

Started as its own process with ``python -m zpool.controller``; it never
imports :mod:`zpool.serialize`, since payloads pass through it untouched.

``hub`` (the loop and its sockets) drives ``scheduler`` (queues, recall,
direct and pushed tasks), which places by ``placement``'s rules, keeps
waiting tasks in ``graph`` and finished ones in ``records``; ``tasks`` holds
the records both move around, ``flags`` checks a client's flags once.
``engines`` follows each engine from registration to departure (heartbeats,
processes, death), with ``registry`` holding one record per engine,
``heartbeat`` counting missed beats and ``launcher`` running local engine
processes; ``segments`` counts shared-memory segments. All but the hub and
the launcher are pure bookkeeping, with no sockets or processes.
"""
