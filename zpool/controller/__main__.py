"""``python -m zpool.controller``: run a controller (and, optionally, local engines).

The hidden cluster of :class:`zpool.Pool` starts this with ``--engines N``
and ``--parent-pid``: the controller then launches the engines itself,
replaces any that die, and exits (ending them) when its parent goes away.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
from typing import TYPE_CHECKING

from zpool._output import OUTPUT_LIMIT, OUTPUT_MODES

# Only what launching the engines needs is imported up front: the engines
# start importing while this process loads the rest (hub, zmq).
from zpool._process import LOG_FORMAT, kill_process_group, python_command
from zpool._settings import ControllerSettings
from zpool.controller.launcher import LocalEngines
from zpool.controller.output import EngineOutput

if TYPE_CHECKING:
    from zpool._transport import CurveKeys
    from zpool.controller.remote import RemoteEngines
    from zpool.controller.taskdb import TaskDB


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, ControllerSettings]:
    p = argparse.ArgumentParser(prog="python -m zpool.controller", description=__doc__.splitlines()[0])
    p.add_argument("--connection-file", required=True, help="JSON file with addresses and key (mode 0600)")
    p.add_argument("--engines", type=int, default=0, help="local engines to start and supervise")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process ends")
    ControllerSettings.add_arguments(p)
    p.add_argument("--engine-setup", default=None, help="file of a serialized call each engine runs first")
    p.add_argument("--engine-preload", default=None, help="file naming modules the engines import while idle")
    p.add_argument(
        "--engine-output",
        choices=OUTPUT_MODES,
        default="inherit",
        help="what the local engines print: sent to the clients (forward), to them per task only (capture),"
        " or written to this process's stdout and stderr (inherit)",
    )
    p.add_argument("--output-limit", type=int, default=OUTPUT_LIMIT, help="bytes of output one task may send")
    p.add_argument("--db", default=None, help="the task database (SQLite file) of a standalone cluster")
    p.add_argument(
        "--ip", default=None, help="bind TCP endpoints to this address (default: the one the connection file names)"
    )
    p.add_argument(
        "--curve-secret-file", default=None, help="JSON file (mode 0600) of the controller's CURVE keys (TCP)"
    )
    p.add_argument(
        "--launcher",
        default=None,
        help="JSON of a zpool.launchers launcher (Launcher.to_spec()): engines to start elsewhere",
    )
    p.add_argument(
        "--db-max-mb", type=int, default=None, help="payload megabytes the task database keeps (oldest removed first)"
    )
    p.add_argument("--log-file", default=None)
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--remove-dir", default=None, help="directory to delete on exit (the cluster's sockets)")
    p.add_argument(
        "--remove-file",
        action="append",
        default=[],
        help="file to delete on exit (a standalone cluster's connection file); may be repeated",
    )
    args = p.parse_args(argv)
    if args.db_max_mb is not None and args.db_max_mb < 1:
        p.error(f"--db-max-mb must be at least 1, not {args.db_max_mb}")
    try:
        settings = ControllerSettings.from_args(args).validate()
    except (TypeError, ValueError) as exc:
        p.error(str(exc))
    return args, settings


def _open_db(path: str, max_mb: int | None) -> TaskDB:
    """Open the task database, or exit saying why it cannot be."""
    import sqlite3

    from zpool.controller.taskdb import DEFAULT_MAX_BYTES, TaskDB

    try:
        db = TaskDB(path, DEFAULT_MAX_BYTES if max_mb is None else max_mb << 20)
    except (OSError, ValueError, sqlite3.Error) as exc:
        logging.getLogger("zpool.controller").critical("cannot open the task database %s: %s", path, exc)
        raise SystemExit(f"zpool controller: cannot open the task database {path}: {exc}") from None
    if db.lost:
        logging.getLogger("zpool.controller").warning(
            "task database %s: %d task(s) were pending when the last controller stopped: marked lost", path, db.lost
        )
    return db


def _start_remote(args: argparse.Namespace, key: bytes) -> RemoteEngines:
    """Start the engines of --launcher (see zpool.controller.remote), watched by a thread of their own."""
    import hashlib
    import json

    from zpool.controller.remote import start_remote
    from zpool.launchers import from_spec

    return start_remote(
        from_spec(json.loads(args.launcher)),
        args.connection_file,
        hashlib.sha256(key).hexdigest()[:16],
        os.path.dirname(os.path.abspath(args.connection_file)),
        log_level=args.log_level,
    )


def _server_keys(path: str) -> CurveKeys:
    """The controller's CURVE keys, from the file the cluster's starter wrote."""
    import json

    from zpool._transport import CurveKeys

    with open(path) as f:
        data = json.load(f)
    return CurveKeys(data["public"], data["public"], data["secret"])


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # (the same clean exit as a Ctrl-C: engines stopped, files removed)


def main(argv: list[str] | None = None) -> int:
    args, settings = _parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    engines = None
    remote: RemoteEngines | None = None
    if args.engines:
        # Start the engines first: they import while the controller sets up.
        engine_args = [
            "--connection-file",
            args.connection_file,
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            args.log_level,
        ]
        if args.log_file:
            engine_args += ["--log-file", args.log_file]
        if args.engine_preload:
            engine_args += ["--preload", args.engine_preload]
        output = None
        if args.engine_output != "inherit":
            output = EngineOutput(forward=args.engine_output == "forward")
            engine_args += ["--output-limit", str(args.output_limit)]
        # The engines import from exactly this process's path (the caller's, see zpool.cluster).
        engines = LocalEngines(
            python_command("zpool.engine", engine_args, sys.path), log_file=args.log_file, output=output
        )
        engines.start(args.engines)
    handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("zpool")
    root.addHandler(handler)
    root.setLevel(args.log_level.upper())
    try:
        from zpool.controller.hub import Hub
        from zpool.protocol import ConnectionInfo, read_frames

        info = ConnectionInfo.read(args.connection_file)
        setup = tuple(read_frames(args.engine_setup)) if args.engine_setup else ()
        db = _open_db(args.db, args.db_max_mb) if args.db else None
        server_curve = _server_keys(args.curve_secret_file) if args.curve_secret_file else None
        if args.launcher:
            remote = _start_remote(args, info.key)
        Hub(
            info,
            settings,
            engines,
            parent_pid=args.parent_pid,
            engine_setup=setup,
            connection_file=args.connection_file,
            db=db,
            server_curve=server_curve,
            bind_ip=args.ip,
            remote=remote,
        ).run()
    except KeyboardInterrupt:
        pass
    finally:
        if remote is not None:
            remote.stop()
        if engines is not None:
            engines.stop(timeout=2.0)
            if os.getpgid(0) == os.getpid():
                # We lead the hidden cluster's process group: take along whatever
                # tasks started and left behind.
                kill_process_group(os.getpid(), spare_self=True)
        for path in args.remove_file:
            try:
                os.unlink(path)
            except OSError:
                pass
        if args.remove_dir:
            shutil.rmtree(args.remove_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
