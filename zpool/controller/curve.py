"""The controller's CURVE guard: who may connect to a cluster on TCP, and a log of those refused.

With CURVE (``zpool._transport``), libzmq encrypts each connection and
asks a ZAP handler whether the client's public key may connect; without
a handler it admits any key. :class:`CurveGuard` runs pyzmq's
:class:`~zmq.auth.thread.ThreadAuthenticator` on the controller's context,
admitting only the cluster's member key, and watches each socket's
monitor for failed handshakes, which are otherwise invisible: a peer with
a wrong key sends, its messages wait in its queue, and nothing fails on
either side. Each kind of failure is logged once a minute per socket, with
how many there were (a wrong peer retries every few hundred milliseconds).

A refused client key is logged by the ZAP handler itself, which is told
the peer's address (once a minute per address). The monitor tells the
other failures (a wrong server key, a peer without CURVE) but not who the
peer was: libzmq gives it only the local endpoint.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from zpool._transport import ZAP_DOMAIN, is_tcp

__all__ = ["CurveGuard"]

logger = logging.getLogger(__name__)

# Failed handshakes of one kind on one socket are logged at most this often, in seconds.
LOG_EVERY_S = 60.0

# (refused keys, HANDSHAKE_FAILED_AUTH, are logged by _Gate, which knows the peer's address)
_FAILURES: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the handshake failed",
}
_PROTOCOL_REASONS: dict[int, str] = {
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: (
        "its encryption did not match: it holds another cluster's keys (an old connection file?)"
    ),
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: (
        "it does not use CURVE (a connection file without keys, or one for --insecure clusters)"
    ),
}


class _Members:
    """The ZAP credentials provider: the cluster's member key, and nothing else."""

    def __init__(self, member_public: str) -> None:
        self.member = member_public.encode("ascii")

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.member


class _Gate(ThreadAuthenticator):
    """pyzmq's ZAP handler, logging each refused CURVE key with the address of the peer that offered it."""

    def __init__(self, ctx: zmq.Context[Any], member_public: str) -> None:
        super().__init__(ctx, log=logging.getLogger("zpool.controller.zap"))
        self.member = member_public.encode("ascii")
        self._refused: dict[str, tuple[float, int]] = {}  # peer address -> (last logged, refusals since)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # ZAP request: version, request id, domain, address, identity, mechanism, credentials...
        if len(msg) == 7 and msg[5] == b"CURVE" and msg[6] != self.member:
            self._log_refused(msg[3].decode("utf-8", "replace"))
        await super().handle_zap_message(msg)

    def _log_refused(self, peer: str) -> None:
        now = time.monotonic()
        last, count = self._refused.get(peer, (-LOG_EVERY_S, 0))
        if now - last < LOG_EVERY_S:
            self._refused[peer] = (last, count + 1)
            return
        if len(self._refused) > 1000:  # (bounded: many peers retrying)
            self._refused.clear()
        self._refused[peer] = (now, 0)
        logger.warning(
            "a peer at %s could not connect: a key that is not the cluster's was refused%s",
            peer or "an unknown address",
            f" ({count} more such since the last report)" if count else "",
        )


class CurveGuard:
    """The ZAP handler admitting only `member_public`, and the monitors of the sockets it guards."""

    def __init__(self, ctx: zmq.Context[Any], member_public: str) -> None:
        self.auth = _Gate(ctx, member_public)
        self.auth.start()
        self.auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_Members(member_public))
        self.monitors: dict[zmq.Socket[Any], str] = {}  # monitor socket -> the address it watches
        self._logged: dict[tuple[str, int, int], tuple[float, int]] = {}  # (address, event, value) -> (when, count)

    def watch(self, sock: zmq.Socket[Any], address: str) -> None:
        """Log the failed handshakes of `sock` (bound at `address`), if it is on TCP."""
        if is_tcp(address):
            events = 0
            for event in _FAILURES:
                events |= event
            self.monitors[sock.get_monitor_socket(events)] = address

    def read(self, monitor: zmq.Socket[Any]) -> None:
        """Log what `monitor` reports (at most once a minute per kind of failure)."""
        address = self.monitors[monitor]
        while monitor.poll(0):
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, value = int(event["event"]), int(event["value"])
            now = time.monotonic()
            last, count = self._logged.get((address, kind, value), (-LOG_EVERY_S, 0))
            if now - last < LOG_EVERY_S:
                self._logged[(address, kind, value)] = (last, count + 1)
                continue
            why = _FAILURES.get(kind, "the handshake failed")
            if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                why = _PROTOCOL_REASONS.get(value, f"the handshake failed (ZMTP error {value:#x})")
            logger.warning(
                "a peer could not connect to %s: %s%s",
                address,
                why,
                f" ({count} more such since the last report)" if count else "",
            )
            self._logged[(address, kind, value)] = (now, 0)

    def close(self) -> None:
        for monitor in self.monitors:
            monitor.close(linger=0)
        self.monitors.clear()
        self.auth.stop()
