"""The room's tracks: what we publish and what we are subscribed to (private).

`MediaManager` belongs to the engine (`room.engine`), which feeds it the server's track
messages and the transport's received tracks, and gives it a way to send signal requests
and reach the current transport. It keeps the publications in step and emits the track
events, each after the state it announces is in place.

Publishing a track (LiveKit's protocol): ``AddTrackRequest`` with our id for the track
(the cid, which is also the aiortc track's id, hence the SDP's msid track id), the
server's ``TrackPublishedResponse`` with the same cid, then a sendonly m-line for the
track and a publisher renegotiation. Unpublishing takes the m-line away (inactive) and
renegotiates. Subscribed tracks arrive on the subscriber connection: each m-line's msid
names the track sid; a track whose publication we do not know yet waits for it.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import av
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from livekit.protocol import models, rtc

from room.errors import ConnectionClosedError, RequestTimeoutError, RoomError
from room.events._types import (
    LocalTrackPublished,
    LocalTrackSubscribed,
    LocalTrackUnpublished,
    ParticipantDisconnected,
    RoomEvent,
    TrackMuted,
    TrackSubscribed,
    TrackSubscriptionFailed,
    TrackUnmuted,
    TrackUnpublished,
    TrackUnsubscribed,
)
from room.options import TrackPublishOptions
from room.participant import RemoteParticipant as RemoteParticipantType
from room.publication import LocalTrackPublication, RemoteTrackPublication
from room.track import (
    LocalAudioTrack,
    LocalTrack,
    LocalVideoTrack,
    RemoteAudioTrack,
    RemoteTrack,
    RemoteVideoTrack,
)
from room.transport.media import FrameReader, TrackSink
from room.types import TrackKind, TrackSource

if TYPE_CHECKING:
    from room.participant import LocalParticipant, RemoteParticipant
    from room.state import RoomState
    from room.transport.rtc import RtcTransport

__all__ = ["MediaManager", "PublishTrackError"]

_log = logging.getLogger(__name__)


class PublishTrackError(RoomError):
    """A track could not be published (permission, refusal, negotiation)."""


class _Awaiting:
    def __init__(self) -> None:
        self.done = anyio.Event()
        self.info: models.TrackInfo | None = None


@dataclass(slots=True)
class _TrackWaiter:
    participant_sid: str
    kind: TrackKind
    source: TrackSource
    tap: FrameReader[av.AudioFrame | av.VideoFrame]
    bind: Callable[[TrackSink, RemoteTrack], None]


class MediaManager:
    """Publications and subscriptions of one room (see the module docstring)."""

    def __init__(self, *, send_signal: Callable[[rtc.SignalRequest], Awaitable[None]],
                 transport: Callable[[], RtcTransport | None],
                 state: Callable[[], RoomState | None],
                 publish: Callable[[RoomEvent], None], request_timeout: float,
                 auto_subscribe: bool = True) -> None:
        self._auto_subscribe = auto_subscribe
        self._send_signal = send_signal
        self._transport = transport
        self._state = state
        self._publish = publish
        self._timeout = request_timeout
        self._awaiting: dict[str, _Awaiting] = {}  # by cid
        self._lock = anyio.Lock()  # one publication change at a time
        self._orphans: dict[str, TrackSink] = {}  # received before their publication
        self._subscribed_early: set[str] = set()  # track_subscribed before publish ended
        self._track_waiters: list[_TrackWaiter] = []  # `AudioStream.from_participant`
        self._posts_in: MemoryObjectSendStream[rtc.SignalRequest]
        self._posts: MemoryObjectReceiveStream[rtc.SignalRequest]
        self._posts_in, self._posts = anyio.create_memory_object_stream[rtc.SignalRequest](
            math.inf)
        self._closed = False

    # -- requests that do not wait (mute, subscribe): sent in order by one task ---------

    async def run_posts(self) -> None:
        """Send the posted requests in order (a task of the engine)."""
        async for request in self._posts:
            try:
                await self._send_signal(request)
            except ConnectionClosedError:
                return

    def _post(self, request: rtc.SignalRequest) -> None:
        if self._closed:
            raise ConnectionClosedError("the room is disconnected")
        self._posts_in.send_nowait(request)

    # -- publishing ----------------------------------------------------------------------

    async def publish_track(self, local: LocalParticipant, track: LocalTrack,
                            options: TrackPublishOptions) -> LocalTrackPublication:
        if not isinstance(track, (LocalAudioTrack, LocalVideoTrack)):
            raise TypeError(f"publish_track takes a LocalAudioTrack or LocalVideoTrack, "
                            f"not {track!r}")
        if not isinstance(options, TrackPublishOptions):
            raise TypeError("options must be a TrackPublishOptions")
        if not local.can_publish:
            raise PublishTrackError("the token does not allow publishing (canPublish)")
        source = options.source
        if source is TrackSource.UNKNOWN:
            source = (TrackSource.MICROPHONE if track.kind is TrackKind.AUDIO
                      else TrackSource.CAMERA)
        allowed = local.can_publish_sources
        if allowed and source not in allowed:
            raise PublishTrackError(f"the token does not allow publishing from "
                                    f"{source.name} (canPublishSources)")
        async with self._lock:
            if track._publication is not None:
                raise ValueError(f"{track!r} is published already")
            if self._closed:
                raise ConnectionClosedError("the room is disconnected")
            return await self._publish_now(local, track, options, source)

    async def _publish_now(self, local: LocalParticipant, track: LocalTrack,
                           options: TrackPublishOptions, source: TrackSource
                           ) -> LocalTrackPublication:
        # A fresh cid per attempt: livekit-server queues a request whose cid an earlier,
        # abandoned attempt still holds.
        cid = track._cid = str(uuid.uuid4())
        request = rtc.AddTrackRequest(
            cid=cid, name=track.name, type=int(track.kind),  # type: ignore[arg-type]
            source=int(source), muted=track.muted,  # type: ignore[arg-type]
            disable_dtx=not options.dtx, disable_red=True, stream=options.stream)
        if isinstance(track, LocalAudioTrack):
            request.stereo = track.source.num_channels == 2
        else:
            assert isinstance(track, LocalVideoTrack)
            request.width, request.height = track.source.width, track.source.height
            request.layers.append(models.VideoLayer(
                quality=models.VideoQuality.HIGH, width=track.source.width,
                height=track.source.height,
                bitrate=options.video_encoding.max_bitrate if options.video_encoding else 0))
        awaiting = self._awaiting[cid] = _Awaiting()
        try:
            await self._send_signal(rtc.SignalRequest(add_track=request))
            with anyio.move_on_after(self._timeout):
                await awaiting.done.wait()
        finally:
            self._awaiting.pop(cid, None)
        if awaiting.info is None:
            if self._closed:
                raise ConnectionClosedError("the room is disconnected")
            raise RequestTimeoutError(f"the server did not accept the track within "
                                      f"{self._timeout:g} s")
        info = awaiting.info
        transport = self._transport()
        if transport is None:
            raise ConnectionClosedError("the room is not connected")
        rtc_track = track._make_rtc()
        codec = options.codec_name if track.kind is TrackKind.VIDEO else None
        try:
            mime_type = await transport.add_track(rtc_track, codec=codec)
        except BaseException:
            # Cancelled or failed midway: take the m-line away again, so that the server
            # does not announce a track we do not know we publish.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout), \
                    suppress(Exception):
                await transport.remove_track(rtc_track)
            rtc_track.stop()
            track._rtc = None
            raise
        if mime_type and not info.mime_type:  # livekit-server fills it in later
            info.mime_type = mime_type
        publication = LocalTrackPublication(info)
        publication._info = info
        publication.track = track
        publication._options = options
        track.sid = info.sid
        track._publication = publication
        track._engine = self
        local._publications[info.sid] = publication
        _log.info("published %s track %r as %s", track.kind.name.lower(), track.name,
                  info.sid)
        self._publish(LocalTrackPublished(publication, track))
        if info.sid in self._subscribed_early:
            self._subscribed_early.discard(info.sid)
            self._publish(LocalTrackSubscribed(track))
        return publication

    async def unpublish_track(self, local: LocalParticipant, track_sid: str) -> None:
        if not isinstance(track_sid, str):
            raise TypeError("unpublish_track takes a track sid (str)")
        async with self._lock:
            publication = local._publications.get(track_sid)
            if publication is None:
                raise ValueError(f"no published track has sid {track_sid!r}")
            assert isinstance(publication, LocalTrackPublication)
            track = publication.track
            assert isinstance(track, LocalTrack)
            rtc_track = track._rtc
            transport = self._transport()
            try:
                if rtc_track is not None and transport is not None:
                    await transport.remove_track(rtc_track)
            finally:  # even if cancelled: the m-line is inactive, the track is not ours
                self._forget_local(local, publication, track)
                self._publish(LocalTrackUnpublished(publication))

    def _forget_local(self, local: LocalParticipant, publication: LocalTrackPublication,
                      track: LocalTrack) -> None:
        local._publications.pop(publication.sid, None)
        if track._rtc is not None:
            track._rtc.stop()
            track._rtc = None
        track._publication = None
        track._engine = None
        track.sid = ""

    async def republish(self, local: LocalParticipant) -> None:
        """After a full rejoin: publish every local track again (new session, new sids);
        each old publication is announced unpublished, the new one published."""
        async with self._lock:
            for publication in list(local._publications.values()):
                assert isinstance(publication, LocalTrackPublication)
                track = publication.track
                assert isinstance(track, LocalTrack)
                self._forget_local(local, publication, track)
                self._publish(LocalTrackUnpublished(publication))
                options = publication._options or TrackPublishOptions()
                try:
                    await self._publish_now(local, track, options, publication.source)
                except (RoomError, TimeoutError) as exc:
                    _log.error("could not republish %r after rejoining: %s", track, exc)

    def describe_for_resume(self, local: LocalParticipant, sync: rtc.SyncState) -> None:
        """What a resume's ``SyncState`` says about our tracks: the ones we publish (the
        server checks it knows each of them) and the ones we do not want (with
        auto_subscribe, the server sends everything else)."""
        for publication in local._publications.values():
            track = publication.track
            if isinstance(publication, LocalTrackPublication) and isinstance(
                    track, LocalTrack):
                sync.publish_tracks.append(rtc.TrackPublishedResponse(
                    cid=track._cid, track=publication._info))
        state = self._state()
        # With auto_subscribe the exceptions are the unwanted; without, the wanted.
        listed = [] if state is None else [
            publication.sid for participant in state.remote.values()
            for publication in participant.track_publications.values()
            if publication._wanted != self._auto_subscribe]
        sync.subscription.CopyFrom(rtc.UpdateSubscription(
            track_sids=listed, subscribe=not self._auto_subscribe))

    def set_track_muted(self, track: LocalTrack, muted: bool) -> None:
        """A local track was muted or unmuted: tell the server (in order, in the
        background) and the room's subscribers."""
        publication = track._publication
        if publication is None:
            return
        publication.muted = muted
        self._post(rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=track.sid, muted=muted)))
        state = self._state()
        if state is not None:
            event = TrackMuted if muted else TrackUnmuted
            self._publish(event(state.local, publication))

    def on_track_published(self, resp: rtc.TrackPublishedResponse) -> None:
        awaiting = self._awaiting.get(resp.cid)
        if awaiting is not None:
            awaiting.info = resp.track
            awaiting.done.set()

    def on_track_unpublished(self, local: LocalParticipant, track_sid: str) -> None:
        """The server unpublished one of our tracks (an admin, a permission change)."""
        publication = local._publications.get(track_sid)
        if not isinstance(publication, LocalTrackPublication):
            return
        track = publication.track
        assert isinstance(track, LocalTrack)
        self._forget_local(local, publication, track)
        self._publish(LocalTrackUnpublished(publication))

    def on_local_track_subscribed(self, local: LocalParticipant, track_sid: str) -> None:
        """Someone subscribed to one of our tracks (the server says so once per track)."""
        publication = local._publications.get(track_sid)
        if isinstance(publication, LocalTrackPublication) and isinstance(
                publication.track, LocalTrack):
            self._publish(LocalTrackSubscribed(publication.track))
        else:  # before our renegotiation is over: told once the publication is
            self._subscribed_early.add(track_sid)

    def on_server_mute(self, local: LocalParticipant, req: rtc.MuteTrackRequest) -> None:
        """The server muted (or unmuted) one of our tracks."""
        publication = local._publications.get(req.sid)
        if isinstance(publication, LocalTrackPublication) and publication.track is not None:
            track = publication.track
            assert isinstance(track, LocalTrack)
            track.muted = req.muted
            if track._rtc is not None:
                track._rtc.muted = req.muted
            if publication.muted != req.muted:
                publication.muted = req.muted
                self._publish((TrackMuted if req.muted else TrackUnmuted)(local, publication))

    # -- subscriptions -------------------------------------------------------------------

    def set_subscribed(self, publication: RemoteTrackPublication, subscribed: bool) -> None:
        state = self._state()
        participant = self._owner(publication)
        if state is None or participant is None:
            raise ValueError(f"{publication!r} is not a publication in this room")
        publication._wanted = subscribed
        self._post(rtc.SignalRequest(subscription=rtc.UpdateSubscription(
            track_sids=[publication.sid], subscribe=subscribed,
            participant_tracks=[models.ParticipantTracks(
                participant_sid=participant.sid, track_sids=[publication.sid])])))
        if not subscribed:
            self._unsubscribed(publication, participant)
        elif publication.track is None:
            orphan = self._orphans.pop(publication.sid, None)
            if orphan is not None and not orphan.ended:
                self._subscribed(publication, participant, orphan)

    def on_sink(self, sink: TrackSink, started: bool) -> None:
        """The subscriber connection started or stopped carrying a track."""
        found = self._find(sink.track_sid)
        if not started:
            if self._orphans.get(sink.track_sid) is sink:
                del self._orphans[sink.track_sid]
            if found is not None:
                publication, participant = found
                track = publication.track
                if isinstance(track, RemoteTrack) and track._sink is sink:
                    self._unsubscribed(publication, participant)
            return
        if found is None:
            self._orphans[sink.track_sid] = sink
            return
        publication, participant = found
        if not publication._wanted:
            self._orphans[sink.track_sid] = sink
            return
        self._subscribed(publication, participant, sink)

    def on_subscription_failed(self, track_sid: str, error: str) -> None:
        """A track we are subscribed to cannot be delivered (its codec, most often):
        `TrackSubscriptionFailed`; the room goes on."""
        found = self._find(track_sid)
        if found is None:
            _log.warning("subscription to unknown track %s failed: %s", track_sid, error)
            return
        participant = found[1]
        _log.warning("subscription to %s of %r failed: %s", track_sid,
                     participant.identity, error)
        self._publish(TrackSubscriptionFailed(participant, track_sid, error))

    def before_state_event(self, event: RoomEvent) -> list[RoomEvent]:
        """Events that must precede ``event`` (a subscribed track is unsubscribed before
        its publication goes), with the state changed accordingly."""
        if isinstance(event, TrackUnpublished):
            publication, participant = event.publication, event.participant
            self._orphans.pop(publication.sid, None)
            return self._unsubscribed(publication, participant, emit=False)
        if isinstance(event, ParticipantDisconnected):
            sid = event.participant.sid
            for waiter in [w for w in self._track_waiters if w.participant_sid == sid]:
                self._track_waiters.remove(waiter)
                waiter.tap.close()
        return []

    def wait_for_track(self, participant: RemoteParticipant, kind: TrackKind,
                       source: TrackSource, tap: FrameReader[av.AudioFrame | av.VideoFrame],
                       bind: Callable[[TrackSink, RemoteTrack], None]) -> None:
        """A stream waiting for ``participant``'s next ``kind`` track from ``source``:
        attached to it once subscribed (`bind` is told); closed if the participant
        leaves first or the room ends."""
        if self._closed:
            tap.close()
            return
        self._track_waiters.append(_TrackWaiter(participant.sid, kind, source, tap, bind))

    def after_state_event(self, event: RoomEvent) -> None:
        """A publication became known: a track that arrived before it is taken now."""
        participant = getattr(event, "participant", None)
        if isinstance(participant, RemoteParticipantType):
            participant._media = self
        publication = getattr(event, "publication", None)
        if isinstance(publication, RemoteTrackPublication):
            self._adopt(publication)
            orphan = self._orphans.get(publication.sid)
            if orphan is not None and publication._wanted and publication.track is None:
                del self._orphans[publication.sid]
                participant = getattr(event, "participant", None)
                if participant is not None and not orphan.ended:
                    self._subscribed(publication, participant, orphan)

    def adopt(self, state: RoomState) -> None:
        """Make every known remote publication able to reach us (`set_subscribed`)."""
        for participant in state.remote.values():
            participant._media = self
            for publication in participant.track_publications.values():
                self._adopt(publication)

    def _adopt(self, publication: RemoteTrackPublication) -> None:
        if publication._media is None:
            publication._media = self
            publication._wanted = self._auto_subscribe

    def _subscribed(self, publication: RemoteTrackPublication,
                    participant: RemoteParticipant, sink: TrackSink) -> None:
        cls = RemoteAudioTrack if sink.kind == "audio" else RemoteVideoTrack
        track = cls(sid=publication.sid, name=publication.name,
                    kind=TrackKind.AUDIO if sink.kind == "audio" else TrackKind.VIDEO,
                    sink=sink)
        track.muted = publication.muted
        publication.track = track
        publication.subscribed = True
        for waiter in list(self._track_waiters):
            if (waiter.participant_sid == participant.sid and waiter.kind is track.kind
                    and waiter.source == publication.source):
                self._track_waiters.remove(waiter)
                sink.attach(waiter.tap)
                waiter.bind(sink, track)
        self._publish(TrackSubscribed(track, publication, participant))

    def _unsubscribed(self, publication: RemoteTrackPublication,
                      participant: RemoteParticipant, *, emit: bool = True
                      ) -> list[RoomEvent]:
        track = publication.track
        publication.subscribed = False
        if not isinstance(track, RemoteTrack):
            return []
        publication.track = None
        track._sink.end()
        event = TrackUnsubscribed(track, publication, participant)
        if emit:
            self._publish(event)
            return []
        return [event]

    def _find(self, track_sid: str
              ) -> tuple[RemoteTrackPublication, RemoteParticipant] | None:
        state = self._state()
        if state is None:
            return None
        for participant in state.remote.values():
            publication = participant.track_publications.get(track_sid)
            if publication is not None:
                return publication, participant
        return None

    def _owner(self, publication: RemoteTrackPublication) -> RemoteParticipant | None:
        found = self._find(publication.sid)
        return found[1] if found is not None and found[0] is publication else None

    def close(self) -> None:
        """The room is over: every received track ends."""
        self._closed = True
        self._posts_in.close()
        for waiter in self._track_waiters:
            waiter.tap.close()
        self._track_waiters.clear()
        for awaiting in self._awaiting.values():
            awaiting.done.set()
        for sink in self._orphans.values():
            sink.end()
        self._orphans.clear()
        state = self._state()
        if state is not None:
            for participant in state.remote.values():
                for publication in participant.track_publications.values():
                    if isinstance(publication.track, RemoteTrack):
                        publication.track._sink.end()

