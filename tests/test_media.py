"""Audio and video tracks between `room` clients, through both servers, on both backends,
checked by content: a tone's frequency and level, a video frame's size and colours
(docs/media.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import numpy as np
import pytest

import room
from room.events import (
    ActiveSpeakersChanged,
    ConnectionQualityChanged,
    LocalTrackPublished,
    LocalTrackSubscribed,
    LocalTrackUnpublished,
    RoomEvent,
    TrackMuted,
    TrackPublished,
    TrackSubscribed,
    TrackUnmuted,
    TrackUnpublished,
    TrackUnsubscribed,
)
from tests.helpers import client_tasks, known, next_event, wait_until
from tests.mediatools import (
    dominant_frequency,
    quadrant_colours,
    quadrants,
    rms_dbfs,
    samples,
    tone,
)
from tests.servers import Server

pytestmark = pytest.mark.anyio

MIC = room.TrackPublishOptions(source=room.TrackSource.MICROPHONE)
CAMERA = room.TrackPublishOptions(source=room.TrackSource.CAMERA)
TONE_DBFS = rms_dbfs(samples([tone(440.0, ms=1000)]))


async def play(source: room.AudioSource, frequencies: tuple[float, ...]) -> None:
    """A tone per channel, in real time (the source's queue paces it), until cancelled."""
    pos = 0
    while True:
        channels = [tone(f, sample_rate=source.sample_rate, start=pos) for f in frequencies]
        if len(channels) == 1:
            frame = channels[0]
        else:
            pcm = np.stack([np.frombuffer(c.data, dtype=np.int16) for c in channels],
                           axis=1).reshape(-1)
            frame = room.AudioFrame(pcm.tobytes(), source.sample_rate, len(channels),
                                    channels[0].samples_per_channel)
        pos += frame.samples_per_channel
        await source.capture_frame(frame)


async def show(source: room.VideoSource, fps: float = 15) -> None:
    """The four-colour test picture, ``fps`` times a second, until cancelled."""
    frame = quadrants(source.width, source.height)
    while True:
        source.capture_frame(frame)
        await anyio.sleep(1 / fps)


@asynccontextmanager
async def tone_track(r: room.Room, *frequencies: float, name: str = "mic"
                     ) -> AsyncIterator[tuple[room.LocalAudioTrack, room.LocalTrackPublication]]:
    source = room.AudioSource(48000, len(frequencies))
    track = room.LocalAudioTrack.create_audio_track(name, source)
    pub = await r.local_participant.publish_track(track, MIC)
    async with anyio.create_task_group() as tg:
        tg.start_soon(play, source, frequencies)
        yield track, pub
        tg.cancel_scope.cancel()


async def listen(track: room.Track, *, frames: int = 200, skip: int = 50,
                 sample_rate: int = 16000, num_channels: int = 1
                 ) -> list[room.AudioFrame]:
    """``frames`` 10 ms frames of ``track`` after the first ``skip`` (jitter settling)."""
    got: list[room.AudioFrame] = []
    with anyio.fail_after(20):
        async with room.AudioStream(track, sample_rate=sample_rate,
                                    num_channels=num_channels) as stream:
            async for frame in stream:
                assert frame.sample_rate == sample_rate
                assert frame.num_channels == num_channels
                assert frame.samples_per_channel == sample_rate // 100
                got.append(frame)
                if len(got) == skip + frames:
                    break
    return got[skip:]


def assert_tone(frames: list[room.AudioFrame], frequency: float, sample_rate: int = 16000,
                channel: int = 0) -> None:
    x = samples(frames, channel)
    f = dominant_frequency(x, sample_rate)
    assert abs(f - frequency) / frequency < 0.01, (frequency, f)
    level = rms_dbfs(x)
    assert abs(level - TONE_DBFS) < 3.0, (TONE_DBFS, level)


async def subscribed(sub: AsyncIterator[RoomEvent], sid: str) -> TrackSubscribed:
    with anyio.fail_after(20):
        async for ev in sub:
            if isinstance(ev, TrackSubscribed) and ev.publication.sid == sid:
                return ev
    raise AssertionError("no TrackSubscribed")


async def test_a_published_tone_is_heard_at_its_frequency_and_level(
        server: Server) -> None:
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await known(bob, "alice")
        events = bob.events(TrackPublished, TrackSubscribed)
        mine = alice.events(LocalTrackPublished, LocalTrackSubscribed)
        async with tone_track(alice, 440.0) as (track, pub):
            assert pub.sid.startswith("TR_") and track.sid == pub.sid
            assert pub.track is track and pub.kind is room.TrackKind.AUDIO
            assert pub.source is room.TrackSource.MICROPHONE
            assert alice.local_participant.track_publications[pub.sid] is pub
            local = await next_event(mine, LocalTrackPublished)
            assert local.publication is pub and local.track is track
            # TrackPublished, then TrackSubscribed, with the state already in place.
            first = await next_event(events, TrackPublished, timeout=15)
            assert first.publication.sid == pub.sid
            ev = await subscribed(events, pub.sid)
            assert ev.participant.identity == "alice"
            assert ev.publication.subscribed and ev.publication.track is ev.track
            assert isinstance(ev.track, room.RemoteAudioTrack)
            remote = bob.remote_participants["alice"]
            assert remote.track_publications[pub.sid] is ev.publication
            assert_tone(await listen(ev.track), 440.0)
            # The publisher hears that its track has a subscriber.
            told = await next_event(mine, LocalTrackSubscribed, timeout=10)
            assert told.track is track
    assert client_tasks() == []


async def test_stereo_keeps_its_channels_apart(server: Server) -> None:
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await known(bob, "alice")
        events = bob.events(TrackSubscribed)
        async with tone_track(alice, 440.0, 660.0) as (_, pub):
            ev = await subscribed(events, pub.sid)
            frames = await listen(ev.track, num_channels=2)
            assert_tone(frames, 440.0, channel=0)
            assert_tone(frames, 660.0, channel=1)


@pytest.mark.parametrize("codec", [room.VideoCodec.VP8, room.VideoCodec.H264])
async def test_video_arrives_with_its_size_and_colours(server: Server,
                                                      codec: room.VideoCodec) -> None:
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await known(bob, "alice")
        events = bob.events(TrackSubscribed)
        source = room.VideoSource(320, 240)
        track = room.LocalVideoTrack.create_video_track("cam", source)
        async with anyio.create_task_group() as tg:
            tg.start_soon(show, source)
            pub = await alice.local_participant.publish_track(track, room.TrackPublishOptions(
                source=room.TrackSource.CAMERA, video_codec=codec))
            assert pub.kind is room.TrackKind.VIDEO
            assert pub.mime_type.lower() == f"video/{codec.name.lower()}", pub.mime_type
            ev = await subscribed(events, pub.sid)
            assert isinstance(ev.track, room.RemoteVideoTrack)
            seen = 0
            with anyio.fail_after(20):
                async with room.VideoStream(ev.track, format=room.VideoBufferType.RGBA
                                            ) as stream:
                    async for frame in stream:
                        assert (frame.width, frame.height) == (320, 240)
                        assert frame.type is room.VideoBufferType.RGBA
                        seen += 1
                        if seen == 10:
                            break
            colours = quadrant_colours(frame)
            for name, want in (("top left", (255, 0, 0)), ("top right", (0, 255, 0)),
                               ("bottom left", (0, 0, 255)),
                               ("bottom right", (255, 255, 255))):
                got = colours[name]
                assert all(abs(g - w) <= 40 for g, w in zip(got, want, strict=True)), (
                    name, got, want)
            tg.cancel_scope.cancel()


async def test_mute_and_unmute_are_seen_and_muted_audio_is_silent(server: Server) -> None:
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await known(bob, "alice")
        events = bob.events(TrackSubscribed, TrackMuted, TrackUnmuted)
        async with tone_track(alice, 440.0) as (track, pub):
            ev = await subscribed(events, pub.sid)
            remote_pub = ev.publication
            track.mute()
            assert track.muted and pub.muted
            muted = await next_event(events, TrackMuted, timeout=10)
            assert muted.publication is remote_pub and remote_pub.muted
            # As livekit-server does, the server stops forwarding a muted track: a
            # stream gets nothing (no made-up silence) until it is unmuted.
            await anyio.sleep(0.5)
            async with room.AudioStream(ev.track) as stream:
                with anyio.move_on_after(1.0):
                    async for frame in stream:
                        raise AssertionError(f"a frame while muted: {frame}")
            track.unmute()
            unmuted = await next_event(events, TrackUnmuted, timeout=10)
            assert unmuted.publication is remote_pub and not remote_pub.muted
            assert_tone(await listen(ev.track, frames=100, skip=30), 440.0)


async def test_unpublish_ends_the_stream_and_is_seen(server: Server) -> None:
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await known(bob, "alice")
        events = bob.events(TrackSubscribed, TrackUnsubscribed, TrackUnpublished)
        mine = alice.events(LocalTrackUnpublished)
        async with tone_track(alice, 440.0) as (track, pub):
            ev = await subscribed(events, pub.sid)
            stream = room.AudioStream(ev.track)
            await alice.local_participant.unpublish_track(pub.sid)
            assert pub.sid not in alice.local_participant.track_publications
            assert track.sid == "" and track.publication is None
            gone = await next_event(mine, LocalTrackUnpublished)
            assert gone.publication is pub
            unsub = await next_event(events, TrackUnsubscribed, timeout=15)
            assert unsub.track is ev.track and not unsub.publication.subscribed
            unpub = await next_event(events, TrackUnpublished, timeout=15)
            assert unpub.publication.sid == pub.sid
            assert pub.sid not in bob.remote_participants["alice"].track_publications
            with anyio.fail_after(5):
                async for _ in stream:
                    pass  # what was buffered, then the end
            # The same track can be published again (a new sid).
            again = await alice.local_participant.publish_track(track, MIC)
            assert again.sid != pub.sid
            ev2 = await subscribed(events, again.sid)
            assert_tone(await listen(ev2.track, frames=100), 440.0)


async def test_set_subscribed_false_then_true(server: Server) -> None:
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await known(bob, "alice")
        events = bob.events(TrackSubscribed, TrackUnsubscribed)
        async with tone_track(alice, 440.0) as (_, pub):
            ev = await subscribed(events, pub.sid)
            stream = room.AudioStream(ev.track)
            ev.publication.set_subscribed(False)
            unsub = await next_event(events, TrackUnsubscribed)
            assert unsub.publication is ev.publication and ev.publication.track is None
            with anyio.fail_after(5):
                async for _ in stream:
                    pass
            with anyio.move_on_after(2):  # nothing comes back by itself
                again = await next_event(events, TrackSubscribed, timeout=3)
                raise AssertionError(f"subscribed again unasked: {again}")
            ev.publication.set_subscribed(True)
            ev2 = await subscribed(events, pub.sid)
            assert ev2.publication is ev.publication
            assert_tone(await listen(ev2.track, frames=100), 440.0)


async def test_a_publisher_leaving_ends_its_streams(server: Server) -> None:
    async with server.connect("bob") as bob:
        events = bob.events(TrackSubscribed, TrackUnsubscribed, TrackUnpublished)
        async with server.connect("alice") as alice:
            await known(bob, "alice")
            async with tone_track(alice, 440.0) as (_, pub):
                ev = await subscribed(events, pub.sid)
                stream = room.AudioStream(ev.track)
                frames = 0
                async for _ in stream:
                    frames += 1
                    if frames == 20:
                        break
        unsub = await next_event(events, TrackUnsubscribed, timeout=15)
        assert unsub.track is ev.track
        await next_event(events, TrackUnpublished, timeout=15)
        with anyio.fail_after(5):
            async for _ in stream:
                pass


async def test_without_auto_subscribe_nothing_comes_until_asked(server: Server) -> None:
    async with server.connect("alice") as alice, \
            server.connect("bob", options=room.RoomOptions(auto_subscribe=False)) as bob:
        await known(bob, "alice")
        events = bob.events(TrackPublished, TrackSubscribed)
        async with tone_track(alice, 440.0) as (_, pub):
            published = await next_event(events, TrackPublished, timeout=15)
            assert published.publication.sid == pub.sid
            assert not published.publication.subscribed
            with anyio.move_on_after(2):
                ev = await next_event(events, TrackSubscribed, timeout=3)
                raise AssertionError(f"subscribed unasked: {ev}")
            published.publication.set_subscribed(True)
            ev = await subscribed(events, pub.sid)
            assert_tone(await listen(ev.track, frames=100), 440.0)


async def test_a_speaker_is_announced_and_then_not(server: Server) -> None:
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await known(bob, "alice")
        speakers = bob.events(ActiveSpeakersChanged)
        async with tone_track(alice, 440.0) as (track, _):
            with anyio.fail_after(15):
                async for ev in speakers:
                    assert isinstance(ev, ActiveSpeakersChanged)
                    if [p.identity for p in ev.speakers] == ["alice"]:
                        break
            assert bob.remote_participants["alice"].is_speaking
            track.mute()
            with anyio.fail_after(15):
                async for ev in speakers:
                    assert isinstance(ev, ActiveSpeakersChanged)
                    if not ev.speakers:
                        break
            assert not bob.remote_participants["alice"].is_speaking


async def test_bad_publications_are_refused_clearly(server: Server) -> None:
    async with server.connect("alice") as alice:
        source = room.AudioSource(48000, 1)
        track = room.LocalAudioTrack.create_audio_track("mic", source)
        with pytest.raises(TypeError):
            await alice.local_participant.publish_track(source, MIC)  # type: ignore[arg-type]
        pub = await alice.local_participant.publish_track(track, MIC)
        with pytest.raises(ValueError, match="published already"):
            await alice.local_participant.publish_track(track, MIC)
        with pytest.raises(ValueError, match="no published track"):
            await alice.local_participant.unpublish_track("TR_nope")
        other = room.LocalAudioTrack.create_audio_track("again", source)
        with pytest.raises(ValueError, match="one source per track"):
            await alice.local_participant.publish_track(other, MIC)
        await alice.local_participant.unpublish_track(pub.sid)
    with pytest.raises(room.UnsupportedFeatureError):
        room.TrackPublishOptions(simulcast=True)
    with pytest.raises(room.UnsupportedFeatureError):
        room.TrackPublishOptions(video_codec=room.VideoCodec.AV1)


async def test_publishing_without_permission_is_refused(server: Server) -> None:
    token = server.token("viewer", room="r", can_publish=False)
    async with room.Room.connect(server.url, token, options=server.options()) as viewer:
        track = room.LocalAudioTrack.create_audio_track("mic", room.AudioSource(48000, 1))
        with pytest.raises(room.PublishTrackError, match="canPublish"):
            await viewer.local_participant.publish_track(track, MIC)
    await wait_until(lambda: client_tasks() == [])


async def test_connection_quality_is_reported_for_a_publisher_we_receive(
        server: Server) -> None:
    """Both servers report the quality of our own connection and of the publishers we
    receive (every 5 s, when new or changed)."""
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await known(bob, "alice")
        quality = bob.events(ConnectionQualityChanged)
        async with tone_track(alice, 440.0):
            seen: dict[str, room.ConnectionQuality] = {}
            with anyio.fail_after(20):
                async for ev in quality:
                    assert isinstance(ev, ConnectionQualityChanged)
                    seen[ev.participant.identity] = ev.quality
                    if {"alice", "bob"} <= set(seen):
                        break
            assert seen["alice"] in (room.ConnectionQuality.EXCELLENT,
                                     room.ConnectionQuality.GOOD), seen
            assert bob.remote_participants["alice"].connection_quality is seen["alice"]


async def test_a_stream_from_a_participant_waits_for_its_microphone(server: Server) -> None:
    """`AudioStream.from_participant` before the participant publishes: the stream waits,
    then carries the microphone once it is subscribed; one made for a participant who
    leaves without publishing just ends."""
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await known(bob, "alice")
        stream = room.AudioStream.from_participant(
            participant=bob.remote_participants["alice"],
            track_source=room.TrackSource.MICROPHONE, sample_rate=16000)
        assert stream.track is None
        async with tone_track(alice, 440.0) as (_, pub):
            got = []
            with anyio.fail_after(20):
                async for frame in stream:
                    got.append(frame)
                    if len(got) == 150:
                        break
            assert stream.track is not None and stream.track.sid == pub.sid
            assert_tone(got[50:], 440.0)
            await stream.aclose()
        async with server.connect("carol") as carol:
            await known(bob, "carol")
            waiting = room.AudioStream.from_participant(
                participant=bob.remote_participants["carol"],
                track_source=room.TrackSource.MICROPHONE)
            del carol
        with anyio.fail_after(15):
            assert [f async for f in waiting] == []


async def test_media_nobody_reads_does_not_pile_up(server: Server) -> None:
    """aiortc decodes every received frame into a queue with no bound; the pump drains it
    whether or not anyone reads, so after seconds of unread audio and video it is empty
    (give or take the frame in hand)."""
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await known(bob, "alice")
        events = bob.events(TrackSubscribed)
        source = room.VideoSource(160, 120)
        video = room.LocalVideoTrack.create_video_track("cam", source)
        async with tone_track(alice, 440.0), anyio.create_task_group() as tg:
            tg.start_soon(show, source)
            await alice.local_participant.publish_track(video, CAMERA)
            kinds: set[room.TrackKind] = set()
            while len(kinds) < 2:
                ev = await next_event(events, TrackSubscribed, timeout=15)
                kinds.add(ev.track.kind)
            await anyio.sleep(3.0)
            transport = bob._engine.transport
            assert transport is not None and transport._subscriber is not None
            pumps = list(transport._subscriber._pumps.values())
            assert len(pumps) >= 2
            frames = sum(p.sink.frames for p in pumps if p.sink is not None)
            assert frames > 100, frames  # media did arrive ...
            # ... and did not pile up (aiortc's RemoteStreamTrack queue)
            backlog = [p.track._queue.qsize() for p in pumps]  # type: ignore[attr-defined]
            assert max(backlog) <= 3, backlog
            tg.cancel_scope.cancel()


async def test_a_media_call_leaves_no_task_behind() -> None:
    """Rooms and a dev server that published, forwarded and read audio and video: once they
    are gone, so is every task they started, on our loop and on the aiortc loop."""
    from room.devserver import DevServer
    from tests.helpers import aiortc_tasks

    before = await aiortc_tasks()
    async with DevServer(presence_interval=0) as dev, \
            room.Room.connect(dev.url, dev.token("alice", room="r")) as alice, \
            room.Room.connect(dev.url, dev.token("bob", room="r")) as bob:
        await known(bob, "alice")
        events = bob.events(TrackSubscribed)
        source = room.VideoSource(160, 120)
        video = room.LocalVideoTrack.create_video_track("cam", source)
        async with tone_track(alice, 440.0), anyio.create_task_group() as tg:
            tg.start_soon(show, source)
            await alice.local_participant.publish_track(video, CAMERA)
            for _ in range(2):
                ev = await next_event(events, TrackSubscribed, timeout=15)
                stream: room.AudioStream | room.VideoStream = (
                    room.AudioStream(ev.track) if ev.track.kind is room.TrackKind.AUDIO
                    else room.VideoStream(ev.track))
                async for _ in stream:
                    break
            tg.cancel_scope.cancel()
    assert client_tasks() == []
    left: list[int] = []

    async def settled() -> bool:
        left.append(await aiortc_tasks())
        return left[-1] <= before

    with anyio.fail_after(10):
        while not await settled():
            await anyio.sleep(0.2)


async def test_a_publish_cancelled_midway_publishes_nothing(server: Server) -> None:
    """Cancelled at any point (before the server accepts the track, during the
    renegotiation), publish_track leaves no half-published track behind: whatever the
    others saw published is unpublished again, the room stays connected, and the same
    track can be published afterwards."""
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await known(bob, "alice")
        seen = bob.events(TrackPublished, TrackUnpublished)
        source = room.AudioSource(48000, 1)
        track = room.LocalAudioTrack.create_audio_track("mic", source)
        cancelled = 0
        for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.05):
            with anyio.move_on_after(delay) as scope:
                pub = await alice.local_participant.publish_track(track, MIC)
            if scope.cancelled_caught:
                cancelled += 1
                assert track.publication is None and track.sid == ""
            else:  # it made it in time
                await alice.local_participant.unpublish_track(pub.sid)
        assert cancelled >= 2
        assert not alice.local_participant.track_publications
        assert alice.connection_state is room.ConnectionState.CONNECTED
        await anyio.sleep(3)
        assert not bob.remote_participants["alice"].track_publications
        published: set[str] = set()
        unpublished: set[str] = set()
        with anyio.move_on_after(0.5):
            async for ev in seen:
                assert isinstance(ev, TrackPublished | TrackUnpublished)
                (published if isinstance(ev, TrackPublished) else unpublished).add(
                    ev.publication.sid)
        assert published == unpublished
        pub = await alice.local_participant.publish_track(track, MIC)
        last = await next_event(seen, TrackPublished, timeout=15)
        assert last.publication.sid == pub.sid


async def test_tracks_already_there_when_joining_are_all_heard(server: Server) -> None:
    """Two microphones (440 and 660 Hz) and a camera are published before bob joins: they
    reach him together (livekit-server puts them in his very first subscriber offer; the
    dev server re-offers them while his connection is still coming up), and each carries
    its own content. (Found by the interop tests: aiortc's default bundle policy left the
    second m-line of a kind deaf, and m-lines negotiated while connecting never started.)"""
    async with server.connect("alice") as alice:
        video_source = room.VideoSource(160, 120)
        video = room.LocalVideoTrack.create_video_track("cam", video_source)
        async with tone_track(alice, 440.0, name="mic1") as (_, pub1), \
                tone_track(alice, 660.0, name="mic2") as (_, pub2), \
                anyio.create_task_group() as tg:
            tg.start_soon(show, video_source)
            pub3 = await alice.local_participant.publish_track(video, CAMERA)
            async with server.connect("bob") as bob:
                await known(bob, "alice", timeout=10)
                events = bob.events(TrackSubscribed)
                tracks: dict[str, room.Track] = {}
                for publication in bob.remote_participants["alice"].track_publications.values():
                    if publication.track is not None:
                        tracks[publication.sid] = publication.track
                with anyio.fail_after(20):
                    while len(tracks) < 3:
                        ev = await next_event(events, TrackSubscribed, timeout=20)
                        tracks[ev.publication.sid] = ev.track
                assert_tone(await listen(tracks[pub1.sid], frames=100), 440.0)
                assert_tone(await listen(tracks[pub2.sid], frames=100), 660.0)
                with anyio.fail_after(10):
                    async with room.VideoStream(tracks[pub3.sid]) as stream:
                        async for frame in stream:
                            assert (frame.width, frame.height) == (160, 120)
                            break
            tg.cancel_scope.cancel()
