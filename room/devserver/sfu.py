"""The dev server's media: publications, subscriptions and forwarding (an SFU).

A client publishes as with livekit-server: ``add_track`` (answered ``track_published``
with the track's new sid), then an m-line whose msid track id is the request's cid.
When that m-line's media starts (`SessionRtc` reports the received track), the track is
announced in the publisher's `ParticipantInfo` and forwarded to every participant that
subscribes: a sendonly m-line on the subscriber's connection, msid
``<publisher sid>|<track sid>`` and ``<track sid>``, then a re-offer. When the
publisher's m-line stops (unpublished: inactive; or the publisher left), the track is
taken out of its info and out of every subscriber's connection.

Forwarding decodes and re-encodes: aiortc hands a received track's frames, not its RTP
packets, and sends a track by encoding frames. Each subscriber's `RelayTrack` reads the
publisher's decoded frames from a small drop-oldest queue (`FrameTap`), so a slow
subscriber never holds up the others. (docs/devserver.md has the CPU this costs.)

Audio levels are measured on the decoded audio, livekit-server's way (a participant is
speaking while its level is above -35 dBov for 40 % of a 400 ms window), and announced
with ``speakers_changed``.

Room state changes here run on the server's loop; aiortc objects are touched only on
the aiortc loop (through `SessionRtc`).
"""

from __future__ import annotations

import array
import asyncio
import logging
import math
import threading
from typing import TYPE_CHECKING

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from livekit.protocol import models, rtc

from room.transport.media import FrameTap, TrackSink

if TYPE_CHECKING:
    from room.devserver.rooms import DevRoom, Session

__all__ = ["RelayTrack", "RoomMedia"]

_log = logging.getLogger(__name__)

# Frames a subscriber may lag behind its publisher before the oldest are dropped.
_RELAY_QUEUE = 8
# livekit-server's active speaker rule: a level of at least -35 dBov (its "35") for 40 %
# of each 400 ms window.
SPEAKER_INTERVAL = 0.4
QUALITY_INTERVAL = 5.0  # livekit-server's connection quality updates
_SPEAKING_DBOV = -35.0
_SPEAKING_SHARE = 0.4

_MIME = {"audio": "audio/opus", "video": "video/VP8"}


class RelayTrack(MediaStreamTrack):
    """What a subscriber is sent: the frames of a publisher's track (on the aiortc
    loop). Ends when the published track ends or the subscription is dropped."""

    def __init__(self, kind: str, track_sid: str, source: TrackSink) -> None:
        super().__init__()
        self.kind = kind
        self._id = track_sid
        self.source = source
        self._ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.tap: FrameTap[av.AudioFrame | av.VideoFrame] = FrameTap(
            _RELAY_QUEUE, lambda fn: loop.call_soon(fn))
        self.tap.on_ready(self._ready.set)
        source.attach(self.tap)

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            frame = self.tap.pop()
            if frame is not None:
                return frame
            if self.tap.closed:
                self.stop()
                raise MediaStreamError
            self._ready.clear()
            if len(self.tap) or self.tap.closed:
                continue
            await self._ready.wait()

    def stop(self) -> None:
        self.source.detach(self.tap)
        self.tap.close()
        super().stop()


class _Level:
    """A track's audio level over the current window (decoded frames, aiortc loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames = 0
        self.loud = 0
        self.energy = 0.0

    def close(self) -> None:
        pass

    def push(self, frame: av.AudioFrame | av.VideoFrame) -> None:
        if not isinstance(frame, av.AudioFrame) or frame.format.name != "s16":
            return
        pcm = array.array("h", bytes(frame.planes[0])[:frame.samples * 2 *
                                                        frame.layout.nb_channels])
        if not pcm:
            return
        mean_square = sum(s * s for s in pcm[::8]) / max(1, len(pcm[::8]))
        dbov = 10 * math.log10(mean_square / (32768.0 ** 2)) if mean_square else -127.0
        with self._lock:
            self.frames += 1
            self.loud += dbov >= _SPEAKING_DBOV
            self.energy += mean_square / (32768.0 ** 2)

    def take(self) -> tuple[bool, float]:
        """(speaking, level in 0..1) over the window now ending; starts a new one."""
        with self._lock:
            frames, loud, energy = self.frames, self.loud, self.energy
            self.frames = self.loud = 0
            self.energy = 0.0
        if not frames:
            return False, 0.0
        level = min(1.0, math.sqrt(energy / frames) * 2)
        return loud / frames >= _SPEAKING_SHARE, level


class _Published:
    """A published track: its info, its publisher, the received media."""

    def __init__(self, session: Session, info: models.TrackInfo) -> None:
        self.session = session
        self.info = info
        self.sink: TrackSink | None = None
        self.level: _Level | None = None
        self.subscribers: set[str] = set()  # identities
        self.announced_subscribed = False


class RoomMedia:
    """The media of one `DevRoom` (see the module docstring)."""

    def __init__(self, room: DevRoom) -> None:
        self.room = room
        self._pending: dict[tuple[str, str], models.TrackInfo] = {}  # (identity, cid)
        self._tracks: dict[str, _Published] = {}  # by track sid
        self._speakers: dict[str, float] = {}  # participant sid -> level

    # -- publishing ------------------------------------------------------------------

    def add_track(self, session: Session, req: rtc.AddTrackRequest) -> None:
        if not session.grants.can_publish:
            _log.info("dev server: %s may not publish; track %r refused", session.identity,
                      req.name)
            return
        if not req.cid:
            return
        key = (session.identity, req.cid)
        info = self._pending.get(key)
        if info is None:
            from room.devserver.rooms import new_sid  # (rooms imports this module)

            info = models.TrackInfo(
                sid=new_sid("TR_"), type=req.type, name=req.name, muted=req.muted,
                width=req.width, height=req.height, disable_dtx=req.disable_dtx,
                source=req.source, layers=list(req.layers), stereo=req.stereo,
                disable_red=req.disable_red, stream=req.stream or (
                    "camera" if req.type == models.TrackType.VIDEO else ""))
            self._pending[key] = info
        session.send(rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(
            cid=req.cid, track=info)))

    def on_media(self, session: Session, sink: TrackSink, started: bool) -> None:
        """``session``'s publisher connection started or stopped receiving a track (the
        sink is named by the msid track id: the cid of its ``add_track``)."""
        if not started:
            for pub in list(self._tracks.values()):
                if pub.session is session and pub.sink is sink:
                    self._unpublish(pub)
            return
        info = self._pending.pop((session.identity, sink.track_sid), None)
        if info is None or self.room.sessions.get(session.identity) is not session:
            _log.info("dev server: %s sent media for a track it did not add (%s)",
                      session.identity, sink.track_sid)
            return
        info.mid = sink.mid
        # Known once the media is negotiated (livekit-server too leaves it out of the
        # track_published answer).
        info.mime_type = sink.mime_type or _MIME[sink.kind]
        sink.paused = info.muted
        pub = _Published(session, info)
        pub.sink = sink
        if sink.kind == "audio":
            pub.level = _Level()
            sink.attach(pub.level)
        self._tracks[info.sid] = pub
        session.info.tracks.append(info)
        session.info.is_publisher = True
        self.room.changed(session)
        _log.info("dev server: %s published %s track %s", session.identity,
                  sink.kind, info.sid)
        for other in list(self.room.sessions.values()):
            if other is not session and other.auto_subscribe and other.grants.can_subscribe:
                self.subscribe(other, pub)

    def _unpublish(self, pub: _Published) -> None:
        self._tracks.pop(pub.info.sid, None)
        for identity in list(pub.subscribers):
            other = self.room.sessions.get(identity)
            if other is not None:
                self._unsubscribe(other, pub)
        session = pub.session
        kept = [t for t in session.info.tracks if t.sid != pub.info.sid]
        if len(kept) != len(session.info.tracks):
            del session.info.tracks[:]
            session.info.tracks.extend(kept)
            if self.room.sessions.get(session.identity) is session:
                self.room.changed(session)
        _log.info("dev server: %s unpublished %s", session.identity, pub.info.sid)

    def mute(self, session: Session, req: rtc.MuteTrackRequest) -> None:
        for info in session.info.tracks:
            if info.sid == req.sid:
                if info.muted != req.muted:
                    info.muted = req.muted
                    pub = self._tracks.get(info.sid)
                    if pub is not None:
                        pub.info.muted = req.muted
                        if pub.sink is not None:  # livekit-server forwards nothing muted
                            pub.sink.paused = req.muted
                    self.room.changed(session)
                return
        for key, info in self._pending.items():
            if key[0] == session.identity and info.sid == req.sid:
                info.muted = req.muted
                return

    def known_tracks(self, session: Session, sids: list[str]) -> bool:
        """Whether every track sid a resuming client says it publishes is its own."""
        mine = {t.sid for t in session.info.tracks} | {
            info.sid for (identity, _), info in self._pending.items()
            if identity == session.identity}
        return all(sid in mine for sid in sids)

    # -- subscribing -----------------------------------------------------------------

    def joined(self, session: Session) -> None:
        """A new session: with auto_subscribe, everything published is sent to it."""
        if session.auto_subscribe and session.grants.can_subscribe:
            for pub in list(self._tracks.values()):
                if pub.session is not session:
                    self.subscribe(session, pub)

    def left(self, session: Session) -> None:
        """``session`` is gone: its tracks are unpublished, its subscriptions dropped."""
        for pub in list(self._tracks.values()):
            if pub.session is session:
                self._unpublish(pub)
            else:
                pub.subscribers.discard(session.identity)
        for key in [k for k in self._pending if k[0] == session.identity]:
            del self._pending[key]
        if self._speakers.pop(session.info.sid, None) is not None:
            self._send_speakers([models.SpeakerInfo(sid=session.info.sid, level=0.0,
                                                    active=False)])

    def update_subscription(self, session: Session, req: rtc.UpdateSubscription) -> None:
        sids = list(req.track_sids) + [sid for pt in req.participant_tracks
                                       for sid in pt.track_sids]
        for sid in dict.fromkeys(sids):
            pub = self._tracks.get(sid)
            if pub is None or pub.session is session:
                continue
            if req.subscribe:
                if session.grants.can_subscribe:
                    self.subscribe(session, pub)
            else:
                self._unsubscribe(session, pub)

    def subscribe(self, session: Session, pub: _Published) -> None:
        if session.identity in pub.subscribers or session.rtc is None or pub.sink is None:
            return
        pub.subscribers.add(session.identity)
        session.rtc.add_downtrack(pub.sink, pub.session.info.sid, pub.info.sid)
        if not pub.announced_subscribed and not session.hidden:
            # livekit-server tells a publisher once per track that it has a subscriber.
            pub.announced_subscribed = True
            pub.session.send(rtc.SignalResponse(track_subscribed=rtc.TrackSubscribed(
                track_sid=pub.info.sid)))

    def _unsubscribe(self, session: Session, pub: _Published) -> None:
        if session.identity not in pub.subscribers:
            return
        pub.subscribers.discard(session.identity)
        if session.rtc is not None:
            session.rtc.remove_downtrack(pub.info.sid)

    # -- connection quality ----------------------------------------------------------

    def report_quality(self) -> None:
        """Tell each participant, as livekit-server does every 5 s, the quality of its own
        connection and of the publishers it receives, when new to it. Here everything is
        on one machine: EXCELLENT."""
        for session in list(self.room.sessions.values()):
            wanted = {session.info.sid} | {
                pub.session.info.sid for pub in self._tracks.values()
                if session.identity in pub.subscribers}
            new = wanted - session.quality_told
            if new:
                session.quality_told |= new
                session.send(rtc.SignalResponse(connection_quality=rtc.ConnectionQualityUpdate(
                    updates=[rtc.ConnectionQualityInfo(
                        participant_sid=sid, quality=models.ConnectionQuality.EXCELLENT,
                        score=5.0) for sid in sorted(new)])))

    # -- speakers --------------------------------------------------------------------

    def measure_speakers(self) -> None:
        """Close the audio level window; announce who started or stopped speaking."""
        now: dict[str, float] = {}
        for pub in self._tracks.values():
            if pub.level is None or pub.info.muted or (
                    pub.info.source != models.TrackSource.MICROPHONE):
                continue
            speaking, level = pub.level.take()
            if speaking:
                sid = pub.session.info.sid
                now[sid] = max(now.get(sid, 0.0), level)
        changed = [models.SpeakerInfo(sid=sid, level=level, active=True)
                   for sid, level in now.items() if sid not in self._speakers]
        changed += [models.SpeakerInfo(sid=sid, level=0.0, active=False)
                    for sid in self._speakers if sid not in now]
        self._speakers = now
        if changed:
            self._send_speakers(changed)

    def _send_speakers(self, speakers: list[models.SpeakerInfo]) -> None:
        self.room.broadcast(rtc.SignalResponse(speakers_changed=rtc.SpeakersChanged(
            speakers=speakers)))
