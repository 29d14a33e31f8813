"""The dev server's WebRTC side: each participant's two peer connections, and data relay.

Mirror image of the client (`room.transport.rtc`): the server *offers* the subscriber
connection (with its own ``_reliable``/``_lossy`` channels, on which it delivers others'
packets) and *answers* the publisher connection the client offers. Negotiation messages of
one participant are handled strictly in order by one worker task, so a trickled candidate
never overtakes the description it belongs to. Packets arriving from a participant are
handed to ``on_packet`` *on the aiortc loop*, which stamps and routes them there
(`room.devserver.server`): relaying without a hop to the server's own loop halves the
latency a packet sees, which is what bounds SCTP throughput here.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from livekit.protocol import rtc

from room.transport.aio import aiortc_loop, call_soon_in_caller
from room.transport.ice import candidate_to_json, sdp_candidates
from room.transport.peer import Peer

__all__ = ["SessionRtc"]

_log = logging.getLogger(__name__)


class SessionRtc:
    """One participant's peer connections on the server."""

    def __init__(
        self, *, identity: str, host_addresses: Sequence[str] | None,
        send: Callable[[rtc.SignalResponse], None],
        on_packet: Callable[[str, bytes], None], subscriber_primary: bool = True,
    ) -> None:
        self._subscriber_primary = subscriber_primary
        self._identity = identity
        self._hosts = host_addresses
        self._send = send
        self._on_packet = on_packet
        self._loop = aiortc_loop()
        self.publisher: Peer | None = None
        self.subscriber: Peer | None = None
        self._inbox: MemoryObjectSendStream[rtc.SignalRequest]
        self._requests: MemoryObjectReceiveStream[rtc.SignalRequest]
        self._inbox, self._requests = anyio.create_memory_object_stream[rtc.SignalRequest](
            math.inf)
        self._sdp_id = 0
        self._early: list[tuple[str, bytes]] = []  # relayed before our subscriber existed
        self.connected = anyio.Event()  # set once either connection has connected
        self._delivery: Peer | None = None  # where packets for the client go (aiortc loop)

    def post(self, req: rtc.SignalRequest) -> None:
        """Queue an ``offer``, ``answer`` or ``trickle`` from the client (never blocks)."""
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._inbox.send_nowait(req)

    async def run(self) -> None:
        """Offer the subscriber connection, then handle negotiation messages in order."""
        soon = call_soon_in_caller()

        def on_state(state: str) -> None:  # on the aiortc loop
            if state == "connected":
                soon(self.connected.set)

        async def make(name: str) -> Peer:
            return Peer(name=f"{self._identity}/{name}", host_addresses=self._hosts,
                        on_data=self._on_packet, on_state=on_state)

        if self._subscriber_primary:
            subscriber = self.subscriber = await self._loop.run(make, "subscriber")
            self._loop.call_soon(self._deliver_on, subscriber)
            sdp = await self._loop.run(subscriber.offer_with_channels)
            self._describe("offer", sdp, rtc.SignalTarget.SUBSCRIBER)
        async for req in self._requests:
            try:
                await self._handle(req, make)
            except Exception:
                _log.exception("dev server: WebRTC negotiation with %s failed", self._identity)

    async def _handle(self, req: rtc.SignalRequest,
                      make: Callable[[str], object]) -> None:
        which = req.WhichOneof("message")
        if which == "offer":
            if self.publisher is None:
                self.publisher = await self._loop.run(make, "publisher")  # type: ignore[arg-type]
                assert self.publisher is not None
                if not self._subscriber_primary:
                    # No subscriber connection: others' data goes out on the client's own
                    # channels of this one.
                    self._loop.call_soon(self._deliver_on, self.publisher)
            assert self.publisher is not None
            sdp = await self._loop.run(self.publisher.answer, req.offer.sdp)
            self._describe("answer", sdp, rtc.SignalTarget.PUBLISHER, req.offer.id)
        elif which == "answer" and self.subscriber is not None:
            await self._loop.run(self.subscriber.accept_answer, req.answer.sdp)
        elif which == "trickle":
            peer = (self.subscriber if req.trickle.target == rtc.SignalTarget.SUBSCRIBER
                    else self.publisher)
            if peer is not None:
                await self._loop.run(peer.add_candidate, req.trickle.candidateInit)

    def _deliver_on(self, peer: Peer) -> None:
        """From now on, deliver packets to the client on ``peer`` (aiortc loop)."""
        self._delivery = peer
        for label, data in self._early:
            peer.send_nowait(label, data)
        self._early.clear()

    def forward(self, label: str, data: bytes) -> bool:
        """Deliver a packet to the client on channel ``label`` of its primary connection
        (the subscriber one, else the publisher one); call on the aiortc loop. Packets
        that come before that connection exists wait for it."""
        if self._delivery is None:
            if len(self._early) >= 4096:
                return False
            self._early.append((label, data))
            return True
        return self._delivery.send_nowait(label, data)


    async def close(self) -> None:
        self._inbox.close()
        self._requests.close()
        for peer in (self.publisher, self.subscriber):
            if peer is not None:
                await self._loop.run(peer.close)

    def _describe(self, kind: str, sdp: str, target: rtc.SignalTarget,
                  sdp_id: int | None = None) -> None:
        self._sdp_id += 1
        desc = rtc.SessionDescription(type=kind, sdp=sdp,
                                      id=sdp_id if sdp_id is not None else self._sdp_id)
        self._send(rtc.SignalResponse(offer=desc) if kind == "offer"
                   else rtc.SignalResponse(answer=desc))
        for candidate in sdp_candidates(sdp):
            self._send(rtc.SignalResponse(trickle=rtc.TrickleRequest(
                candidateInit=candidate_to_json(candidate), target=target)))

