"""The client's WebRTC side: publisher and subscriber peer connections (AnyIO side).

LiveKit's dual peer-connection arrangement: on the *publisher* connection we offer and
the server answers; it carries the ``_reliable`` and ``_lossy`` data channels we send on.
On the *subscriber* connection the server offers and we answer; the server opens its own
pair of channels there to deliver other participants' packets. Candidates are embedded in
aiortc's SDP and also trickled as LiveKit's JSON; the server's trickled candidates are
added as they come. The peers themselves live on the aiortc loop (`room.transport.aio`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence

import anyio
import anyio.lowlevel
from aiortc import RTCIceServer
from aiortc.mediastreams import MediaStreamTrack
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from livekit.protocol import rtc

from room.transport.aio import aiortc_loop, call_soon_in_caller
from room.transport.ice import candidate_to_json, sdp_candidates
from room.transport.media import TrackSink
from room.transport.peer import HIGH_WATER, LOSSY, LOW_WATER, RELIABLE, Peer
from room.transport.sdp import MediaSection

__all__ = ["LOSSY", "RELIABLE", "RtcTransport"]

_log = logging.getLogger(__name__)

_PUBLISHER = rtc.SignalTarget.PUBLISHER
_SUBSCRIBER = rtc.SignalTarget.SUBSCRIBER
# How long the server may take to answer a publisher offer.
_ANSWER_TIMEOUT = 15.0


class RtcTransport:
    """Both peer connections of one room connection.

    ``send_signal`` sends a `SignalRequest`; ``on_packet(label, data)`` and
    ``on_failure(message)`` are called on the caller's loop.
    """

    def __init__(
        self, *, send_signal: Callable[[rtc.SignalRequest], Awaitable[None]],
        on_packet: Callable[[str, bytes], None], on_failure: Callable[[str], None],
        ice_servers: Sequence[RTCIceServer], host_addresses: Sequence[str] | None,
        subscriber_primary: bool = True, relay_only: bool = False,
        on_track: Callable[[TrackSink, bool], None] | None = None,
        on_track_failed: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._on_track = on_track
        self._on_track_failed = on_track_failed
        self._relay_only = relay_only
        self._subscriber_primary = subscriber_primary
        self._send_signal = send_signal
        self._on_packet = on_packet
        self._on_failure = on_failure
        self._ice_servers = list(ice_servers)
        self._host_addresses = host_addresses
        self._loop = aiortc_loop()
        self._publisher: Peer | None = None
        self._subscriber: Peer | None = None
        self._subscriber_ready = anyio.Event()
        self._inbox: MemoryObjectSendStream[rtc.SignalResponse]
        self._messages: MemoryObjectReceiveStream[rtc.SignalResponse]
        self._inbox, self._messages = anyio.create_memory_object_stream[rtc.SignalResponse](
            math.inf)
        self._sdp_id = 0
        self._closing = False
        self._negotiating = anyio.Lock()  # one publisher offer/answer at a time
        self._answered = anyio.Event()
        self._trickled: set[tuple[int, str]] = set()  # (target, candidate) sent already

    @property
    def healthy(self) -> bool:
        """Whether the connections we need are up: the publisher one, and the subscriber
        one when it is primary. (A snapshot of the aiortc side's state.)"""
        peers = [self._publisher] + ([self._subscriber] if self._subscriber_primary else [])
        return all(p is not None and p.pc.connectionState == "connected" for p in peers)

    def sync_state(self, receive_states: list[rtc.DataChannelReceiveState]
                   ) -> rtc.SyncState:
        """What a resume tells the server about these connections (``SyncState``)."""
        state = rtc.SyncState(datachannel_receive_states=receive_states)
        pub, sub = self._publisher, self._subscriber
        if pub is not None and pub.pc.localDescription is not None:
            state.offer.CopyFrom(rtc.SessionDescription(
                type="offer", sdp=pub.pc.localDescription.sdp, id=self._sdp_id))
        if sub is not None and sub.pc.localDescription is not None:
            state.answer.CopyFrom(rtc.SessionDescription(
                type="answer", sdp=sub.pc.localDescription.sdp))
        state.subscription.CopyFrom(rtc.UpdateSubscription(subscribe=True))
        for peer, target in ((pub, _PUBLISHER), (sub, _SUBSCRIBER)):
            if peer is not None:
                state.data_channels.extend(
                    rtc.DataChannelInfo(label=label, id=ch_id, target=t)  # type: ignore[arg-type]
                    for label, ch_id, t in peer.channel_infos(target))
        return state

    async def start(self) -> None:
        """Create both peers and offer the publisher connection."""
        soon = call_soon_in_caller()

        def on_data(label: str, data: bytes) -> None:
            soon(lambda: self._on_packet(label, data))

        def on_state(which: str) -> Callable[[str], None]:
            def changed(state: str) -> None:
                # "closed" without our asking: aioice gave up (consent to send expired).
                if state == "failed" or (state == "closed" and not self._closing):
                    soon(lambda: self._on_failure(f"{which} peer connection {state}"))
            return changed

        on_track = self._on_track

        def track_changed(sink: TrackSink, started: bool) -> None:
            if on_track is not None:
                soon(lambda: on_track(sink, started))

        on_track_failed = self._on_track_failed

        def undecodable(section: MediaSection) -> None:
            if on_track_failed is not None:
                message = f"no codec this client can decode (offered: {section.codecs})"
                soon(lambda: on_track_failed(section.stream_id, section.track_id, message))

        async def make(name: str) -> Peer:
            subscriber = name == "subscriber"
            return Peer(name=name, ice_servers=self._ice_servers,
                        host_addresses=self._host_addresses, on_data=on_data,
                        on_state=on_state(name), relay_only=self._relay_only,
                        on_track=track_changed if subscriber else None,
                        on_undecodable=undecodable if subscriber else None)

        self._publisher = await self._loop.run(make, "publisher", on_orphan=Peer.close)
        self._subscriber = await self._loop.run(make, "subscriber", on_orphan=Peer.close)
        self._subscriber_ready.set()
        sdp = await self._loop.run(self._publisher.offer_with_channels)
        await self._send_description("offer", sdp, _PUBLISHER)

    async def wait_ready(self) -> None:
        """Until we can send and receive data: our publisher channels are open and, when
        the subscriber connection is primary, the server's channels on it too. When it is
        not (a token without canSubscribe), the server sends nothing on the subscriber
        connection until there is media to subscribe to, and delivers data on our
        publisher channels instead."""
        assert self._publisher is not None and self._subscriber is not None
        await self._loop.run(self._publisher.wait_open, RELIABLE, LOSSY)
        if self._subscriber_primary:
            await self._loop.run(self._subscriber.wait_open, RELIABLE)

    def post(self, msg: rtc.SignalResponse) -> None:
        """Queue the server's ``offer``, ``answer`` or ``trickle`` (never blocks)."""
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._inbox.send_nowait(msg)

    async def run(self) -> None:
        """Handle queued negotiation messages strictly in order (a trickled candidate must
        not overtake the description it belongs to)."""
        await self._subscriber_ready.wait()
        async for msg in self._messages:
            await self._handle(msg)

    async def _handle(self, msg: rtc.SignalResponse) -> None:
        assert self._publisher is not None and self._subscriber is not None
        which = msg.WhichOneof("message")
        if which == "offer":
            sdp = await self._loop.run(self._subscriber.answer, msg.offer.sdp)
            await self._send_description("answer", sdp, _SUBSCRIBER, msg.offer.id)
        elif which == "answer":
            if await self._loop.run(self._publisher.accept_answer, msg.answer.sdp):
                self._answered.set()
        elif which == "trickle":
            peer = self._subscriber if msg.trickle.target == _SUBSCRIBER else self._publisher
            await self._loop.run(peer.add_candidate, msg.trickle.candidateInit)

    async def send(self, label: str, data: bytes) -> None:
        """Send on our publisher channel ``label``, in call order; waits only while more
        than HIGH_WATER bytes are queued (no thread round trip per packet)."""
        await anyio.lowlevel.checkpoint()
        pub = self._publisher
        if pub is None or not pub.is_open(label):
            raise ConnectionError(f"data channel {label} is not open")
        if pub.backlog(label) > HIGH_WATER:
            await self._loop.run(pub.wait_backlog_below, label, LOW_WATER)
            if not pub.is_open(label):
                raise ConnectionError(f"data channel {label} closed")
        pub.note_posted(len(data))
        self._loop.call_soon(pub.deliver, label, data)

    # -- media we send ------------------------------------------------------------------

    async def add_track(self, track: MediaStreamTrack, *, codec: str | None = None) -> str:
        """Send ``track`` on a new sendonly m-line of the publisher connection (its id is
        the track's cid, which is how the server recognizes it), negotiated before this
        returns; the MIME type negotiated. ``codec`` ("vp8", "h264", ...) restricts the
        m-line to that codec."""
        assert self._publisher is not None
        await self._loop.run(self._publisher.add_sender, track, codec)
        await self.negotiate()
        return await self._loop.run(self._publisher.sender_codec, track)

    async def remove_track(self, track: MediaStreamTrack) -> None:
        """Stop sending ``track``; its m-line goes inactive (negotiated before return)."""
        assert self._publisher is not None
        if await self._loop.run(self._publisher.remove_sender, track):
            await self.negotiate()

    async def negotiate(self) -> None:
        """Offer the publisher connection again and wait for the server's answer.

        Once begun, an offer/answer exchange is seen through even if the caller is
        cancelled (an offer abandoned halfway would leave the connection unable to take
        the late answer); it is bounded by `_ANSWER_TIMEOUT`."""
        assert self._publisher is not None
        async with self._negotiating:
            with anyio.CancelScope(shield=True), anyio.fail_after(_ANSWER_TIMEOUT):
                self._answered = anyio.Event()
                sdp = await self._loop.run(self._publisher.offer)
                await self._send_description("offer", sdp, _PUBLISHER)
                await self._answered.wait()

    async def close(self) -> None:
        self._closing = True
        self._answered.set()
        self._inbox.close()
        self._messages.close()
        peers = [peer for peer in (self._publisher, self._subscriber) if peer is not None]
        if peers:
            # Both are closed even if the caller stops waiting (a teardown's time limit).
            await self._loop.run_detached(_close_peers, peers)

    async def _send_description(self, kind: str, sdp: str, target: rtc.SignalTarget,
                                sdp_id: int | None = None) -> None:
        self._sdp_id += 1
        desc = rtc.SessionDescription(type=kind, sdp=sdp,
                                      id=sdp_id if sdp_id is not None else self._sdp_id)
        await self._send_signal(rtc.SignalRequest(offer=desc) if kind == "offer"
                                else rtc.SignalRequest(answer=desc))
        # LiveKit clients trickle; ours also rides in the SDP, so the server may use either.
        # A renegotiation's SDP repeats them: each is trickled once.
        candidates = [c for c in (candidate_to_json(c) for c in sdp_candidates(sdp))
                      if (target, c) not in self._trickled]
        for i, candidate in enumerate(candidates):
            self._trickled.add((target, candidate))
            await self._send_signal(rtc.SignalRequest(trickle=rtc.TrickleRequest(
                candidateInit=candidate, target=target, final=i == len(candidates) - 1)))


async def _close_peers(peers: list[Peer]) -> None:
    """Close ``peers`` together, on the aiortc loop; a failure is logged, not raised."""
    results = await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)
    for peer, result in zip(peers, results, strict=True):
        if isinstance(result, BaseException):
            _log.warning("error while closing the %s connection", peer.name, exc_info=result)
