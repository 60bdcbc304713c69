"""How a cluster's sockets reach each other: local ``ipc://`` or TCP, CURVE encryption, which host is which.

A cluster on one machine (the hidden cluster, ``zpool cluster start``)
listens on Unix sockets in a private folder. A cluster whose engines run
on other machines listens on TCP (``zpool cluster start --ip ADDRESS``):
its connection file names the addresses others must use (``--location``),
and, unless the addresses are loopback or the user opted out loudly
(``--insecure``), ZeroMQ CURVE encrypts and authenticates every
connection. The cluster's HMAC signatures stay in either case.

CURVE keys (Z85 text, :func:`zmq.curve_keypair`): the controller's
*server* pair, whose secret half only the controller holds (a file of its
own, mode 0600), and one *member* pair that every client and engine of
the cluster presents, in the connection file (mode 0600) with the
server's public key. The controller's ZAP handler admits only the member
key (:class:`zmq.auth.thread.ThreadAuthenticator`): without a handler,
libzmq would admit any client key.

TCP sockets also send ZeroMQ heartbeats (``ZMQ_HEARTBEAT_IVL``,
``_TIMEOUT``, ``_TTL``), so that a connection to a host that vanished is
dropped and reconnected rather than kept half-open for the kernel's
quarter of an hour.

:func:`host_id` tells whether two processes really share a machine's
memory (a ``/dev/shm``), which a host name does not: containers and network
namespaces may share one name and not their memory, or differ in name and
share it.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
from typing import Any, Mapping

import zmq

__all__ = [
    "HEARTBEAT_IVL_MS",
    "HEARTBEAT_TIMEOUT_MS",
    "MEMBER",
    "ZAP_DOMAIN",
    "CurveKeys",
    "free_ports",
    "host_id",
    "is_loopback",
    "is_tcp",
    "launcher_rank",
    "member_socket",
    "new_curve_keys",
    "server_socket",
    "tcp_address",
]

# ZeroMQ heartbeats on TCP connections: a ping this often, the peer dropped without an answer within the timeout.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 5000
# The ZAP domain of a cluster's sockets.
ZAP_DOMAIN = "zpool"
# (what the member key is called in the controller's log)
MEMBER = "the cluster's member key"


class CurveKeys:
    """A cluster's CURVE keys as a process holds them: the server's public key, and its own pair.

    The controller holds the server pair (`public`, `secret` are the
    server's); clients and engines the member pair and the server's public
    key. Keys are Z85 text (40 characters).
    """

    __slots__ = ("public", "secret", "server_public")

    def __init__(self, server_public: str, public: str, secret: str) -> None:
        for name, key in (("server", server_public), ("public", public), ("secret", secret)):
            if not isinstance(key, str) or len(key) != 40:
                raise ValueError(f"a CURVE {name} key is 40 characters of Z85, not {key!r}")
        self.server_public = server_public
        self.public = public
        self.secret = secret


def new_curve_keys() -> tuple[CurveKeys, CurveKeys]:
    """New keys for a cluster: (the controller's, the members')."""
    server_public, server_secret = (k.decode("ascii") for k in zmq.curve_keypair())
    member_public, member_secret = (k.decode("ascii") for k in zmq.curve_keypair())
    return CurveKeys(server_public, server_public, server_secret), CurveKeys(
        server_public, member_public, member_secret
    )


def tcp_address(host: str, port: int | str) -> str:
    """``tcp://host:port``, an IPv6 address in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def free_ports(ip: str, n: int) -> list[int]:
    """`n` TCP ports free on `ip` now (the kernel's choice; another process may take one before it is bound)."""
    import socket

    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((ip.strip("[]"), 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def is_tcp(address: str) -> bool:
    return address.startswith("tcp://")


def is_loopback(address: str) -> bool:
    """Whether a ``tcp://HOST:PORT`` address is a loopback one (127.0.0.0/8, ::1, localhost)."""
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tcp_options(sock: zmq.Socket[Any]) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)


def member_socket(sock: zmq.Socket[Any], address: str, curve: CurveKeys | None) -> None:
    """Set up a client's or an engine's socket for `address` (before it connects)."""
    if not is_tcp(address):
        return
    _tcp_options(sock)
    if curve is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server_public.encode("ascii"))
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public.encode("ascii"))
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret.encode("ascii"))


def server_socket(sock: zmq.Socket[Any], address: str, curve: CurveKeys | None) -> None:
    """Set up one of the controller's sockets for `address` (before it binds)."""
    if not is_tcp(address):
        return
    _tcp_options(sock)
    if curve is not None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public.encode("ascii"))
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret.encode("ascii"))
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode("ascii"))


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """This process's machine, as far as shared memory goes: processes with the same id share ``/dev/shm``.

    The kernel's boot id (one per running kernel: a machine, or a VM)
    with the device and inode of ``/dev/shm`` (one per mount: a container
    or a namespace that mounts a ``/dev/shm`` of its own differs).
    """
    parts = []
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    except OSError:
        parts.append(os.uname().nodename)
    try:
        st = os.stat("/dev/shm")
        parts.append(f"{st.st_dev}:{st.st_ino}")
    except OSError:
        parts.append("no-shm")
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


# Where launchers put a process's rank: Open MPI's mpiexec, PMIx (srun --mpi=pmix too), MPICH and Intel MPI, Slurm.
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")


def launcher_rank(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's rank among those its launcher started (MPI, Slurm), or None outside them."""
    environ = os.environ if environ is None else environ
    for name in RANK_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None
