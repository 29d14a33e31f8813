"""One WebRTC peer connection with LiveKit's two data channels, on the aiortc loop.

`Peer` is used by the client (publisher: we offer; subscriber: the server offers) and by
the dev server (the mirror image). Every coroutine method runs on the aiortc loop
(`room.transport.aio`), called through ``AiortcLoop.run``; callbacks it is given are
invoked on the aiortc loop and must hop to their own loop themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy

from room.transport.aio import FarEndError, report_handler_errors, uncancellable
from room.transport.ice import candidate_from_json, use_host_addresses
from room.transport.media import ReceiverPump, TrackSink
from room.transport.sdp import MediaSection, decline_undecodable, media_sections

__all__ = ["HIGH_WATER", "LOSSY", "LOW_WATER", "RELIABLE", "NegotiationError", "Peer"]

_log = logging.getLogger(__name__)

RELIABLE = "_reliable"
LOSSY = "_lossy"
# Sending waits while this much is queued in a data channel (flow control).
# Packets relayed to a channel that is still opening wait for it, up to this many.
_EARLY_LIMIT = 4096
HIGH_WATER = 1 << 20
LOW_WATER = 256 * 1024

OnData = Callable[[str, bytes], None]
OnState = Callable[[str], None]
# A received track starts being carried (True) or stops (False).
OnTrack = Callable[[TrackSink, bool], None]


class NegotiationError(FarEndError):
    """The far end's description could not be taken (malformed, or not matching ours)."""


class Peer:
    """An ``RTCPeerConnection`` plus the ``_reliable``/``_lossy`` channels it carries."""

    def __init__(
        self, *, name: str, ice_servers: Sequence[RTCIceServer] = (),
        host_addresses: Sequence[str] | None = None, on_data: OnData | None = None,
        on_state: OnState | None = None, relay_only: bool = False,
        on_track: OnTrack | None = None,
        on_undecodable: Callable[[MediaSection], None] | None = None,
    ) -> None:
        self.name = name
        self._on_track = on_track
        self._on_undecodable = on_undecodable
        self._starts: set[asyncio.Future[None]] = set()  # see `_state_changed`
        self._pumps: dict[str, ReceiverPump] = {}  # by mid
        self._host_addresses = tuple(host_addresses) if host_addresses is not None else None
        self._on_data = on_data
        self._on_state = on_state
        self._channels: dict[str, RTCDataChannel] = {}
        self._opened: dict[str, asyncio.Event] = {RELIABLE: asyncio.Event(),
                                                   LOSSY: asyncio.Event()}
        self._low = asyncio.Event()
        self._posted = 0
        self._early: dict[str, list[bytes]] = {}  # relayed before the channel opened
        self._delivered = 0
        self._closed = False
        self.pc = RTCPeerConnection(RTCConfiguration(
            # An empty list, never None: aiortc turns None into Google's public STUN
            # server, which costs a DNS lookup (and a stall without internet) per peer.
            iceServers=list(ice_servers),
            iceTransportPolicy=(RTCIceTransportPolicy.RELAY if relay_only
                                else RTCIceTransportPolicy.ALL),
            # Everything on one transport, as LiveKit's servers and clients bundle. With
            # aiortc's default (balanced), the 2nd and later m-lines of a kind added in
            # one negotiation sit on a provisional transport that the BUNDLE group then
            # stops: they never receive (found by tests/test_interop_media.py).
            bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.pc.on("datachannel", self._adopt)
        self.pc.on("connectionstatechange", self._state_changed)
        report_handler_errors(self.pc, name, _log)

    # -- negotiation -------------------------------------------------------------------

    async def offer_with_channels(self) -> str:
        """Create our two data channels and return the offer SDP (candidates included)."""
        self._adopt(self.pc.createDataChannel(RELIABLE, ordered=True))
        self._adopt(self.pc.createDataChannel(LOSSY, ordered=False, maxRetransmits=0))
        with use_host_addresses(self._host_addresses):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def answer(self, offer_sdp: str) -> str:
        """Accept a remote offer; return our answer SDP (candidates included).

        With ``on_track``, every media m-line that sends us a track is received: its
        decoded frames are drained (`ReceiverPump`) into the `TrackSink` of the track it
        carries now, and ``on_track`` hears when a track starts or stops being carried.
        Without it, media m-lines are answered inactive (an aiortc receiver nobody drains
        would decode every frame into an unbounded queue)."""
        declined: list[MediaSection] = []
        if self._on_track is not None:
            offer_sdp, declined = decline_undecodable(offer_sdp)
        with use_host_addresses(self._host_addresses):
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            except (ValueError, InvalidStateError, OperationError) as exc:
                raise NegotiationError(f"{self.name}: offer refused: {exc}") from exc
            self._follow_ice_restart(offer_sdp)
            for section in declined:
                _log.info("%s: %s m-line %s declined: no codec we can decode in %s",
                          self.name, section.kind, section.mid, section.codecs)
                if self._on_undecodable is not None and section.track_id:
                    self._on_undecodable(section)
            if self._on_track is None:
                for transceiver in self.pc.getTransceivers():
                    if transceiver.kind in ("audio", "video") and (
                            transceiver.direction != "inactive"):
                        _log.info("%s: %s m-line %s declined (no media here)",
                                  self.name, transceiver.kind, transceiver.mid)
                        transceiver.direction = "inactive"
            else:
                self._follow_media(offer_sdp)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    def _follow_media(self, offer_sdp: str) -> None:
        """Start, swap or stop what each media m-line carries, as the offer says."""
        assert self._on_track is not None
        sections = {m.mid: m for m in media_sections(offer_sdp)}
        for transceiver in self.pc.getTransceivers():
            mid = transceiver.mid
            if transceiver.kind not in ("audio", "video") or mid is None:
                continue
            section = sections.get(mid)
            track = transceiver.receiver.track
            pump = self._pumps.get(mid)
            if pump is None and track is not None:
                pump = self._pumps[mid] = ReceiverPump(track, f"{self.name} {mid}")
                pump.start()
            if pump is None:
                continue
            old = pump.sink
            if section is None or not section.sends or not section.track_id:
                wanted = None
            elif old is not None and old.track_sid == section.track_id and not old.ended:
                wanted = old
            else:
                wanted = TrackSink(track_sid=section.track_id, stream_id=section.stream_id,
                                   kind=transceiver.kind, mid=mid)
                codecs = getattr(transceiver, "_codecs", None) or []
                wanted.mime_type = str(codecs[0].mimeType) if codecs else ""
            if wanted is old:
                continue
            pump.carry(wanted)
            if old is not None:
                self._on_track(old, False)
            if wanted is not None:
                self._on_track(wanted, True)

    async def add_sender(self, track: MediaStreamTrack, codec: str | None) -> None:
        """A sendonly m-line for ``track`` (negotiated by the next `offer`)."""
        transceiver = self.pc.addTransceiver(track, direction="sendonly")
        if codec is not None:
            capabilities = RTCRtpSender.getCapabilities(track.kind)
            wanted = [c for c in capabilities.codecs
                      if c.mimeType.lower() in (f"{track.kind}/{codec}", f"{track.kind}/rtx")]
            if not any(c.mimeType.lower() != f"{track.kind}/rtx" for c in wanted):
                raise ValueError(f"aiortc cannot send {codec}")
            transceiver.setCodecPreferences(wanted)

    async def sender_codec(self, track: MediaStreamTrack) -> str:
        """The MIME type negotiated for sending ``track`` ("" before an answer)."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.sender.track is track:
                codecs = getattr(transceiver, "_codecs", None) or []
                return str(codecs[0].mimeType) if codecs else ""
        return ""

    async def remove_sender(self, track: MediaStreamTrack) -> bool:
        """Stop sending ``track``: its m-line goes inactive. False if it was not sent."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.sender.track is track:
                transceiver.direction = "inactive"
                transceiver.sender.replaceTrack(None)
                track.stop()
                return True
        return False

    async def offer(self) -> str:
        """A new offer (after media was added or removed); its SDP."""
        with use_host_addresses(self._host_addresses):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    def _follow_ice_restart(self, sdp: str) -> None:
        """Take the new ICE credentials of a re-offer that restarts ICE (LiveKit servers
        restart the subscriber connection's ICE whenever a client resumes).

        aiortc cannot restart ICE itself, and keeps checking the peer with the old
        credentials, which the restarted peer refuses: the connection would die. Our own
        credentials and candidates stay as they are; the peer's connectivity checks,
        answered with them, re-establish the pair, and our consent checks use the peer's
        new credentials."""
        ufrag = password = None
        for line in sdp.splitlines():
            if line.startswith("a=ice-ufrag:") and ufrag is None:
                ufrag = line[len("a=ice-ufrag:"):].strip()
            elif line.startswith("a=ice-pwd:") and password is None:
                password = line[len("a=ice-pwd:"):].strip()
        if not ufrag or not password:
            return
        for connection in self._ice_connections():
            if connection.remote_username not in (None, ufrag):
                _log.info("%s: the peer restarted ICE; following its new credentials",
                          self.name)
                connection.remote_username = ufrag
                connection.remote_password = password

    def _ice_connections(self) -> list[Any]:
        """The aioice connections under this peer connection (one with BUNDLE)."""
        transports = [t.receiver.transport.transport for t in self.pc.getTransceivers()]
        if self.pc.sctp is not None:
            transports.append(self.pc.sctp.transport.transport)
        seen: list[Any] = []
        for ice in transports:
            connection = getattr(ice, "_connection", None)
            if connection is not None and all(connection is not c for c in seen):
                seen.append(connection)
        return seen

    def channel_infos(self, target: int) -> list[tuple[str, int, int]]:
        """(label, id, target) of our LiveKit channels, for a resume's ``SyncState``."""
        return [(label, ch.id, target) for label, ch in self._channels.items()
                if ch.id is not None]

    async def accept_answer(self, answer_sdp: str) -> bool:
        """Take the far end's answer to our offer. An answer when no offer of ours waits
        for one is ignored (False, with a warning); one aiortc refuses raises
        `NegotiationError`."""
        if self.pc.signalingState != "have-local-offer":
            _log.warning("%s: an answer came with no offer waiting for one (%s); ignored",
                         self.name, self.pc.signalingState)
            return False
        with use_host_addresses(self._host_addresses):
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
            except (ValueError, InvalidStateError, OperationError) as exc:
                raise NegotiationError(f"{self.name}: answer refused: {exc}") from exc
        return True

    async def add_candidate(self, candidate_init: str) -> None:
        """Add a trickled candidate (LiveKit's JSON); unusable or late ones are ignored.

        So are mDNS candidates (``<uuid>.local``: how browsers hide their host addresses).
        aioice would resolve the name first, and this connection's negotiation would wait
        for that (up to a second per candidate, usually for nothing), while the browser's
        own connectivity checks reveal the address anyway: a peer-reflexive candidate."""
        candidate = candidate_from_json(candidate_init)
        if candidate is None or self.pc.remoteDescription is None:
            return
        if candidate.ip.lower().endswith(".local"):
            _log.debug("%s: mDNS candidate %s not resolved", self.name, candidate.ip)
            return
        try:
            await self.pc.addIceCandidate(candidate)
        except (ValueError, KeyError) as exc:  # after end-of-candidates, unknown mid
            _log.debug("%s: trickle candidate ignored: %s", self.name, exc)

    # -- data --------------------------------------------------------------------------

    async def wait_open(self, *labels: str) -> None:
        for label in labels:
            await self._opened[label].wait()

    def is_open(self, label: str) -> bool:
        ch = self._channels.get(label)
        return ch is not None and ch.readyState == "open"

    # Sending from another thread without a round trip per packet: the caller counts what
    # it posts (`note_posted`, caller's thread only), `deliver` counts what reached the
    # channel (aiortc thread only); their difference plus the channel's own queue is the
    # backlog the caller throttles on.

    def backlog(self, label: str) -> int:
        ch = self._channels.get(label)
        queued = ch.bufferedAmount if ch is not None else 0
        return self._posted - self._delivered + queued

    def note_posted(self, size: int) -> None:
        self._posted += size

    def deliver(self, label: str, data: bytes) -> None:
        """Put a posted packet on the channel (runs on the aiortc loop, in post order)."""
        self._delivered += len(data)
        ch = self._channels.get(label)
        if ch is not None and ch.readyState == "open":
            ch.send(data)
        else:
            _log.warning("%s: %d-byte packet for closed channel %s dropped",
                         self.name, len(data), label)

    async def wait_backlog_below(self, label: str, limit: int) -> None:
        """Until the backlog of ``label`` is at most ``limit`` (or the channel closed)."""
        while self.backlog(label) > limit and self.is_open(label):
            self._low.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._low.wait(), 0.05)

    def send_nowait(self, label: str, data: bytes) -> bool:
        """Send without waiting (for forwarding). Before the channel opens, packets wait
        for it (up to a bound); False if the channel is closed or the wait is full."""
        ch = self._channels.get(label)
        if ch is not None and ch.readyState == "open":
            ch.send(data)
            return True
        if self._closed or (ch is not None and ch.readyState in ("closing", "closed")):
            return False
        waiting = self._early.setdefault(label, [])
        if len(waiting) >= _EARLY_LIMIT:
            _log.warning("%s: channel %s not open yet and %d packets waiting; dropped",
                         self.name, label, len(waiting))
            return False
        waiting.append(data)
        return True

    @uncancellable  # a close cut short would leave sockets and transports open
    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            pumps, self._pumps = list(self._pumps.values()), {}
            for pump in pumps:
                old = pump.sink
                pump.stop()
                if old is not None and self._on_track is not None:
                    self._on_track(old, False)
            await self.pc.close()
            self._low.set()

    # -- aiortc callbacks (on the aiortc loop) -----------------------------------------

    def _adopt(self, ch: RTCDataChannel) -> None:
        label = ch.label
        if label not in self._opened:
            _log.debug("%s: ignoring data channel %r", self.name, label)
            return
        self._channels[label] = ch
        ch.bufferedAmountLowThreshold = LOW_WATER

        def opened() -> None:
            self._opened[label].set()
            for data in self._early.pop(label, []):
                ch.send(data)

        def message(data: bytes | str) -> None:
            if self._on_data is not None:
                self._on_data(label, data.encode() if isinstance(data, str) else data)

        ch.on("open", opened)
        ch.on("message", message)
        ch.on("bufferedamountlow", self._low.set)
        ch.on("close", self._low.set)
        report_handler_errors(ch, f"{self.name} {label}", _log)
        if ch.readyState == "open":
            opened()

    def _state_changed(self) -> None:
        state = self.pc.connectionState
        _log.debug("%s: connection %s", self.name, state)
        if state == "connected" and not self._closed:
            # aiortc starts a negotiated m-line's sender and receiver only if DTLS is
            # connected when that negotiation's connect step runs; one negotiated while
            # the connection was still connecting (tracks offered right after joining)
            # would never start. Its connect step is idempotent: run it once more now.
            connect = getattr(self.pc, "_RTCPeerConnection__connect", None)
            if connect is not None:
                task = asyncio.ensure_future(connect())
                self._starts.add(task)
                task.add_done_callback(self._started)
        if self._on_state is not None:
            self._on_state(state)

    def _started(self, task: asyncio.Future[None]) -> None:
        self._starts.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.warning("%s: starting media after connecting failed: %r", self.name,
                         task.exception())
