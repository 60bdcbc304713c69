"""zpool: a drop-in replacement for :class:`multiprocessing.Pool` on a ZeroMQ cluster.

Layers (imports flow downward only)::

    pool ─▶ view ─▶ client · cluster · asyncresult · _partition
    client · controller · engine ─▶ protocol · serialize · _process
    protocol · serialize · _partition · _process ─▶ error ─▶ stdlib

The controller and engines are separate processes (``python -m
zpool.controller``, ``python -m zpool.engine``); neither imports the client.
Public names are re-exported lazily (PEP 562), so importing ``zpool`` in an
engine does not load the client side.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

# Imported now, not when the first Pool starts: it records the directory the
# program started in, which '' on sys.path means (zpool._process.caller_path).
from zpool import _process

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS = {
    "Pool": "zpool.pool",
    "ProcessPoolExecutor": "zpool.executor",
    "AsyncResult": "zpool.asyncresult",
    "MapResult": "zpool.asyncresult",
    "DirectResult": "zpool.asyncresult",
    "JoinedResult": "zpool.asyncresult",
    "EngineView": "zpool.view",
    "RemoteFunction": "zpool._decorators",
    "ParallelFunction": "zpool._decorators",
    "CompositeError": "zpool.error",
    "IMapIterator": "zpool._imap",
    "Metadata": "zpool.asyncresult",
    "Dependency": "zpool.dependency",
    "require": "zpool.dependency",
    "depend": "zpool.dependency",
    "dependent": "zpool.dependency",
    "ZPoolError": "zpool.error",
    "PoolClosedError": "zpool.error",
    "TimeoutError": "zpool.error",
    "BrokenPoolError": "zpool.error",
    "EngineError": "zpool.error",
    "SerializationError": "zpool.error",
    "ResultEncodingError": "zpool.error",
    "AuthenticationError": "zpool.error",
    "ProtocolError": "zpool.error",
    "RemoteError": "zpool.error",
    "RemoteTraceback": "zpool.error",
    "TaskAborted": "zpool.error",
    "UnknownTaskError": "zpool.error",
    "UnmetDependency": "zpool.error",
    "ImpossibleDependency": "zpool.error",
    "DependencyTimeout": "zpool.error",
    "InvalidDependency": "zpool.error",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from zpool._decorators import ParallelFunction, RemoteFunction
    from zpool._imap import IMapIterator
    from zpool.asyncresult import AsyncResult, DirectResult, JoinedResult, MapResult, Metadata
    from zpool.dependency import Dependency, depend, dependent, require
    from zpool.error import (
        AuthenticationError,
        BrokenPoolError,
        CompositeError,
        DependencyTimeout,
        EngineError,
        ImpossibleDependency,
        InvalidDependency,
        PoolClosedError,
        ProtocolError,
        RemoteError,
        RemoteTraceback,
        ResultEncodingError,
        SerializationError,
        TaskAborted,
        TimeoutError,
        UnknownTaskError,
        UnmetDependency,
        ZPoolError,
    )
    from zpool.executor import ProcessPoolExecutor
    from zpool.pool import Pool
    from zpool.view import EngineView


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
