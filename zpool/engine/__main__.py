"""``python -m zpool.engine``: connect to a controller and run tasks until told to stop."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys

from zpool._output import OUTPUT_LIMIT
from zpool._preload import read_list
from zpool._process import LOG_FORMAT
from zpool._stream import SCHEME
from zpool._wire import run_slot_path
from zpool.engine.output import install
from zpool.engine.worker import Engine
from zpool.protocol import ConnectionInfo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zpool.engine", description=__doc__.splitlines()[0])
    p.add_argument("--connection-file", required=True, help="JSON file with addresses and key")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process ends")
    p.add_argument("--log-file", default=None)
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--preload", default=None, help="file naming modules to import while idle, one per line")
    p.add_argument("--output-fd", type=int, default=None, help="pipe to send what tasks print to, task by task")
    p.add_argument("--output-limit", type=int, default=OUTPUT_LIMIT, help="bytes of output one task may send")
    p.add_argument(
        "--reconnect-timeout",
        type=float,
        default=0.0,
        help="seconds to wait for a controller that stopped answering to come back (0: exit at once)",
    )
    args = p.parse_args(argv)
    # A crash (SIGSEGV, SIGABRT...) leaves the Python stack on the real stderr, where the controller reads it.
    faulthandler.enable(file=sys.__stderr__ or sys.stderr)
    output = None
    if args.output_fd is not None:
        output = install(args.output_fd, args.output_limit, logging.getLevelName(args.log_level.upper()))
    # (the real stderr: the engine's own messages are no task's output)
    handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("zpool")
    root.addHandler(handler)
    root.setLevel(args.log_level.upper())
    try:
        run_slot = run_slot_path(args.connection_file, os.getpid()) if args.parent_pid else None
        preload = read_list(args.preload) if args.preload else []
        info = ConnectionInfo.read(args.connection_file)
        # Clients of a cluster on this host may push tasks to a socket of the engine's own (the direct path),
        # beside the cluster's own sockets (a short private directory: see zpool.cluster.make_runtime_dir).
        direct = None
        if info.engine.startswith("ipc://"):
            here = os.path.dirname(info.engine[len("ipc://") :])
            direct = f"{SCHEME}{here}/d{os.getpid()}"
        Engine(
            info,
            parent_pid=args.parent_pid,
            run_slot=run_slot,
            preload=preload,
            direct=direct,
            output=output,
            reconnect_s=args.reconnect_timeout if args.parent_pid is None else 0.0,
        ).run()
    except KeyboardInterrupt:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
