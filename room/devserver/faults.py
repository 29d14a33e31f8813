"""Network faults on demand, and the UDP watch the dev server's failure detection uses.

Tests of reconnecting clients need faults a real network produces, made on purpose and
undone on time. `DevServer` offers them as thin methods (``cut_signal``, ``drop_udp``,
``send_leave``, ``simulate_partition``, ``restart``); the machinery is here.

UDP is watched and cut at the lowest level aiortc has: the datagram handlers of each
ICE transport's sockets (aioice's ``StunProtocol`` objects, one per local candidate).
A `UdpGate` installed on a peer connection notes when a datagram last arrived (what
livekit-server's ICE agent watches to declare a connection dead: see `SILENCE_FAILED`)
and, while a drop is in force, discards every datagram in both directions, STUN and
DTLS alike. The client therefore sees what a blackholed network gives it: its ICE
consent checks go unanswered and nothing arrives. That reaches into private attributes
of aiortc and aioice (pinned versions, checked by the tests); a gate that cannot find
them logs a warning and watches nothing.

Everything that touches aiortc objects runs on the aiortc loop (`room.transport.aio`);
a gate's two numbers (``blocked_until``, ``last_received``) are plain floats, read from
the server's loop without a lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection
from livekit.protocol import models, rtc

if TYPE_CHECKING:
    from room.devserver.rooms import DevRoom, Session

__all__ = [
    "CLEANUP_AFTER_FAILURE",
    "SILENCE_DISCONNECTED",
    "SILENCE_FAILED",
    "UdpGate",
    "ask_to_reconnect",
    "ask_to_resume",
    "leave_request",
]

Action = rtc.LeaveRequest.Action
Reason = models.DisconnectReason

_log = logging.getLogger(__name__)

# livekit-server's ICE agent (pion) calls a connection disconnected after 10 s without a
# datagram from the other side, and failed 5 s later (pkg/rtc/transport.go:
# iceDisconnectedTimeout, iceFailedTimeout); a client's consent checks (every ~5 s)
# keep a healthy idle connection well inside that.
SILENCE_DISCONNECTED = 10.0
SILENCE_FAILED = 15.0
# After a transport failure it tells the participant to resume and waits this long for
# it to come back before removing it (pkg/rtc/participant.go: disconnectCleanupDuration).
CLEANUP_AFTER_FAILURE = 5.0

_GATE_ATTR = "_room_devserver_gate"


class UdpGate:
    """Watches, and on demand blocks, the UDP traffic of one peer connection.

    Install it on the aiortc loop (`install`) once the connection has gathered its
    candidates (it is idempotent). ``last_received`` is the `time.monotonic` of the last
    datagram that arrived (0 if none yet); `block` drops all traffic both ways until a
    deadline."""

    def __init__(self) -> None:
        self.blocked_until = 0.0
        self.last_received = 0.0
        self._protocols: list[Any] = []
        self._pcs: set[int] = set()

    @property
    def blocked(self) -> bool:
        return time.monotonic() < self.blocked_until

    def block(self, seconds: float) -> None:
        """Drop every datagram in and out for ``seconds`` from now (a later call
        replaces the deadline; 0 lifts the block)."""
        self.blocked_until = time.monotonic() + max(0.0, seconds)

    def covers(self, pc: RTCPeerConnection) -> bool:
        """Whether `install` ran on ``pc`` (after its gathering, so on all its sockets)."""
        return id(pc) in self._pcs

    def install(self, pc: RTCPeerConnection) -> int:
        """Wrap the datagram handlers of ``pc``'s ICE sockets (aiortc loop; once its
        candidates are gathered); returns how many sockets the gate now watches."""
        self._pcs.add(id(pc))
        for protocol in _stun_protocols(pc):
            if getattr(protocol, _GATE_ATTR, None) is self:
                continue
            setattr(protocol, _GATE_ATTR, self)
            self._wrap(protocol)
            self._protocols.append(protocol)
        return len(self._protocols)

    def _wrap(self, protocol: Any) -> None:
        received: Callable[[bytes, tuple[Any, ...]], None] = protocol.datagram_received
        send_stun: Callable[[Any, tuple[str, int]], None] = protocol.send_stun
        send_data: Callable[[bytes, tuple[str, int]], Any] = protocol.send_data

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            if self.blocked:
                return
            self.last_received = time.monotonic()
            received(data, addr)

        def gated_send_stun(message: Any, addr: tuple[str, int]) -> None:
            if not self.blocked:
                send_stun(message, addr)

        async def gated_send_data(data: bytes, addr: tuple[str, int]) -> None:
            if not self.blocked:
                await send_data(data, addr)

        # Instance attributes win over the class's methods: the asyncio transport calls
        # ``protocol.datagram_received`` and STUN transactions ``protocol.send_stun``.
        protocol.datagram_received = datagram_received
        protocol.send_stun = gated_send_stun
        protocol.send_data = gated_send_data


def _stun_protocols(pc: RTCPeerConnection) -> Iterable[Any]:
    """aioice's socket protocols under ``pc``'s ICE transports (private attributes)."""
    ice_transports: dict[int, Any] = {}
    try:
        dtls = [t.sender.transport for t in pc.getTransceivers()]
        if pc.sctp is not None:
            dtls.append(pc.sctp.transport)
        for d in dtls:
            ice = d.transport
            ice_transports[id(ice)] = ice
        return [p for ice in ice_transports.values() for p in list(ice._connection._protocols)]
    except AttributeError:
        _log.warning("dev server: cannot reach the ICE sockets of a peer connection "
                     "(aiortc/aioice internals changed?); UDP faults and silence "
                     "detection will not work", exc_info=True)
        return []


def leave_request(protocol: int, action: rtc.LeaveRequest.Action,
                  reason: models.DisconnectReason) -> rtc.LeaveRequest | None:
    """The `LeaveRequest` livekit-server sends a client of signal ``protocol`` to ask for
    ``action`` (pkg/rtc/participant_signal.go sendLeaveRequest): from protocol 13 on the
    action itself (regions, which it would add to RESUME and RECONNECT, are empty on a
    single node); before, the legacy ``can_reconnect`` flag for RECONNECT, and nothing at
    all for RESUME (such clients cannot be told to resume)."""
    if protocol > 12:
        return rtc.LeaveRequest(reason=reason, action=action)
    if action == rtc.LeaveRequest.Action.RESUME:
        return None
    return rtc.LeaveRequest(reason=reason,
                            can_reconnect=action == rtc.LeaveRequest.Action.RECONNECT)


def ask_to_resume(session: Session, reason: models.DisconnectReason
                  = Reason.CONNECTION_TIMEOUT) -> None:
    """What livekit-server does when a participant's peer connection fails
    (pkg/rtc/participant.go onAnyTransportFailed): ``leave`` with action RESUME (to
    clients that understand actions), close the signalling connection, and remove the
    participant `CLEANUP_AFTER_FAILURE` seconds later (CONNECTION_TIMEOUT) unless it
    resumes first. The server's watchdog carries out the removal."""
    leave = leave_request(session.protocol, Action.RESUME, reason)
    if leave is not None:
        session.send(rtc.SignalResponse(leave=leave))
    session.end_signal()
    if session.failed_until is None:
        session.failed_until = time.monotonic() + CLEANUP_AFTER_FAILURE


def ask_to_reconnect(room: DevRoom, session: Session, reason: models.DisconnectReason
                     = Reason.STATE_MISMATCH) -> None:
    """livekit-server's full reconnect (IssueFullReconnect): ``leave`` with action
    RECONNECT, then the participant is closed and removed at once (the others see
    ``reason``); the client is expected to join afresh."""
    leave = leave_request(session.protocol, Action.RECONNECT, reason)
    if leave is not None:
        session.send(rtc.SignalResponse(leave=leave))
    room.leave(session, reason)
