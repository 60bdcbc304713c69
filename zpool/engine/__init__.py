"""The engine: a process that runs tasks in a persistent namespace.

Started with ``python -m zpool.engine``. It imports neither the client nor
the controller, so a worker process stays small.
"""
