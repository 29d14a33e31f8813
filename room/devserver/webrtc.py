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

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from livekit.protocol import rtc

from room.devserver.faults import UdpGate
from room.devserver.sfu import RelayTrack
from room.transport.aio import aiortc_loop, call_soon_in_caller
from room.transport.ice import candidate_to_json, sdp_candidates
from room.transport.media import TrackSink
from room.transport.peer import Peer

__all__ = ["SessionRtc"]

_log = logging.getLogger(__name__)


class _ReOffer:
    """Queued among the client's negotiation messages: offer the subscriber again."""


_REOFFER = _ReOffer()


class _AddDown:
    """Queued: send a published track to this client (a new sendonly m-line)."""

    def __init__(self, source: TrackSink, stream_id: str, track_sid: str) -> None:
        self.source = source
        self.stream_id = stream_id
        self.track_sid = track_sid


class _RemoveDown:
    """Queued: stop sending this client the track ``track_sid`` (its m-line inactive)."""

    def __init__(self, track_sid: str) -> None:
        self.track_sid = track_sid


_Queued = rtc.SignalRequest | _ReOffer | _AddDown | _RemoveDown


class SessionRtc:
    """One participant's peer connections on the server."""

    def __init__(
        self, *, identity: str, host_addresses: Sequence[str] | None,
        send: Callable[[rtc.SignalResponse], None],
        on_packet: Callable[[str, bytes], None], subscriber_primary: bool = True,
        on_track: Callable[[TrackSink, bool], None] | None = None,
    ) -> None:
        self._on_track = on_track
        self._relays: dict[str, RelayTrack] = {}  # what we send it, by track sid (aiortc)
        self._offering = False  # a subscriber offer waits for its answer
        self._offer_again = False  # and another is wanted after it
        self._subscriber_primary = subscriber_primary
        self._identity = identity
        self._hosts = host_addresses
        self._send = send
        self._on_packet = on_packet
        self._loop = aiortc_loop()
        self.publisher: Peer | None = None
        self.subscriber: Peer | None = None
        self._inbox: MemoryObjectSendStream[_Queued]
        self._requests: MemoryObjectReceiveStream[_Queued]
        self._inbox, self._requests = anyio.create_memory_object_stream[_Queued](math.inf)
        self._sdp_id = 0
        self._early: list[tuple[str, bytes]] = []  # relayed before our subscriber existed
        self.connected = anyio.Event()  # set once either connection has connected
        self._delivery: Peer | None = None  # where packets for the client go (aiortc loop)
        # Each connection's UDP watch (`room.devserver.faults`), by peer name.
        self.gates = {"publisher": UdpGate(), "subscriber": UdpGate()}
        # Since when (monotonic) a re-offer of the subscriber connection has waited for
        # the client's answer, if one is pending.
        self.reoffer_pending_since: float | None = None

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

        on_track = self._on_track

        def track_changed(sink: TrackSink, started: bool) -> None:  # on the aiortc loop
            if on_track is not None:
                soon(lambda: on_track(sink, started))

        async def make(name: str) -> Peer:
            return Peer(name=f"{self._identity}/{name}", host_addresses=self._hosts,
                        on_data=self._on_packet, on_state=on_state,
                        on_track=track_changed if name == "publisher" else None)

        if self._subscriber_primary:
            subscriber = self.subscriber = await self._loop.run(
                make, "subscriber", on_orphan=Peer.close)
            self._loop.call_soon(self._deliver_on, subscriber)
            sdp = await self._loop.run(subscriber.offer_with_channels)
            self._offering = True
            self._describe("offer", sdp, rtc.SignalTarget.SUBSCRIBER)
        async for req in self._requests:
            try:
                await self._handle(req, make)
            except Exception:
                _log.exception("dev server: WebRTC negotiation with %s failed", self._identity)

    def restart_ice(self) -> None:
        """Offer the subscriber connection again, as livekit-server does to restart ICE
        when a client resumes. aiortc cannot restart ICE: the offer keeps the
        connection's credentials, and the client answers it like any re-offer."""
        now = time.monotonic()
        for gate in self.gates.values():  # a restarted ICE agent starts a fresh watch
            if gate.last_received:
                gate.last_received = now
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._inbox.send_nowait(_REOFFER)

    async def watch_udp(self) -> list[UdpGate]:
        """The UDP gates of the connections that have connected, installed on their
        sockets; a gate's silence clock starts when its connection is first seen
        connected, and runs on whatever becomes of the connection (closed by the
        client, failed: silent all the same)."""
        await self._install_gates()
        now = time.monotonic()
        for name, peer in (("publisher", self.publisher), ("subscriber", self.subscriber)):
            gate = self.gates[name]
            if peer is not None and not gate.last_received and (
                    peer.pc.connectionState == "connected"):
                gate.last_received = now
        return [gate for gate in self.gates.values() if gate.last_received]

    async def block_udp(self, seconds: float) -> None:
        """Drop the connections' UDP both ways for ``seconds`` from now."""
        for gate in self.gates.values():
            gate.block(seconds)
        await self._install_gates()

    async def _install_gates(self) -> None:
        todo = [(self.gates[name], peer) for name, peer in (
            ("publisher", self.publisher), ("subscriber", self.subscriber))
            if peer is not None and peer.pc.iceGatheringState == "complete"
            and not self.gates[name].covers(peer.pc)]
        if todo:
            async def install() -> None:
                for gate, peer in todo:
                    gate.install(peer.pc)
            await self._loop.run(install)

    def add_downtrack(self, source: TrackSink, participant_sid: str, track_sid: str) -> None:
        """Send the client a published track (then re-offer); never blocks."""
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._inbox.send_nowait(_AddDown(source, f"{participant_sid}|{track_sid}",
                                             track_sid))

    def remove_downtrack(self, track_sid: str) -> None:
        """Stop sending the client ``track_sid`` (then re-offer); never blocks."""
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._inbox.send_nowait(_RemoveDown(track_sid))

    async def _offer_subscriber(self) -> None:
        """A new subscriber offer, unless one waits for its answer: then after it."""
        if self.subscriber is None:
            return
        if self._offering:
            self._offer_again = True
            return
        sdp = await self._loop.run(self._reoffer, self.subscriber)
        self._offering = True
        self.reoffer_pending_since = time.monotonic()
        self._describe("offer", sdp, rtc.SignalTarget.SUBSCRIBER)

    async def _handle(self, req: _Queued, make: Callable[[str], object]) -> None:
        if isinstance(req, _ReOffer):
            self._offering = False  # a restart: the client answers this one
            await self._offer_subscriber()
            return
        if isinstance(req, _AddDown):
            if self.subscriber is not None and not req.source.ended:
                await self._loop.run(self._add_relay, self.subscriber, req)
                await self._offer_subscriber()
            return
        if isinstance(req, _RemoveDown):
            if self.subscriber is not None and await self._loop.run(
                    self._remove_relay, self.subscriber, req.track_sid):
                await self._offer_subscriber()
            return
        which = req.WhichOneof("message")
        if which == "offer":
            if self.publisher is None:
                self.publisher = await self._loop.run(make, "publisher", on_orphan=Peer.close)  # type: ignore[arg-type]
                assert self.publisher is not None
                if not self._subscriber_primary:
                    # No subscriber connection: others' data goes out on the client's own
                    # channels of this one.
                    self._loop.call_soon(self._deliver_on, self.publisher)
            assert self.publisher is not None
            sdp = await self._loop.run(self.publisher.answer, req.offer.sdp)
            self._describe("answer", sdp, rtc.SignalTarget.PUBLISHER, req.offer.id)
        elif which == "answer" and self.subscriber is not None:
            if not await self._loop.run(self.subscriber.accept_answer, req.answer.sdp):
                return  # no offer of ours waited for it
            self.reoffer_pending_since = None
            self._offering = False
            if self._offer_again:
                self._offer_again = False
                await self._offer_subscriber()
        elif which == "trickle":
            peer = (self.subscriber if req.trickle.target == rtc.SignalTarget.SUBSCRIBER
                    else self.publisher)
            if peer is not None:
                await self._loop.run(peer.add_candidate, req.trickle.candidateInit)

    async def _add_relay(self, peer: Peer, req: _AddDown) -> None:
        """A sendonly m-line relaying ``req.source`` (aiortc loop). Its msid is LiveKit's
        ``<participant sid>|<track sid>`` ``<track sid>``: aiortc takes the track id
        from the track and the stream id from the sender (a private attribute)."""
        sid = req.track_sid
        if sid in self._relays:
            return
        relay = RelayTrack(req.source.kind, sid, req.source)
        transceiver = peer.pc.addTransceiver(relay, direction="sendonly")
        transceiver.sender._stream_id = req.stream_id
        self._relays[sid] = relay

    async def _remove_relay(self, peer: Peer, track_sid: str) -> bool:
        relay = self._relays.pop(track_sid, None)
        if relay is None:
            return False
        if not await peer.remove_sender(relay):  # (which stops it)
            relay.stop()
        return True

    async def _reoffer(self, peer: Peer) -> str:
        return await peer.offer()

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
        peers = [peer for peer in (self.publisher, self.subscriber) if peer is not None]
        if peers:
            # Both are closed even if the caller stops waiting (a teardown's time limit).
            await self._loop.run_detached(_close_peers, peers)

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



async def _close_peers(peers: list[Peer]) -> None:
    """Close ``peers`` together, on the aiortc loop; a failure is logged, not raised."""
    results = await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)
    for peer, result in zip(peers, results, strict=True):
        if isinstance(result, BaseException):
            _log.warning("error while closing the %s connection", peer.name, exc_info=result)
