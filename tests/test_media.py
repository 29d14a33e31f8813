"""Audio and video tracks through both servers, checked by content (docs/media.md)."""

from __future__ import annotations

import anyio
import pytest

import room
from room.events import TrackSubscribed
from tests.helpers import client_tasks, known, next_event
from tests.mediatools import dominant_frequency, rms_dbfs, samples, tone
from tests.servers import Server

pytestmark = pytest.mark.anyio


async def play(source: room.AudioSource, frequency: float, seconds: float) -> None:
    pos = 0
    for _ in range(int(seconds * 100)):
        frame = tone(frequency, sample_rate=source.sample_rate,
                     num_channels=source.num_channels, start=pos)
        pos += frame.samples_per_channel
        await source.capture_frame(frame)


async def test_a_published_tone_is_heard_at_its_frequency(server: Server) -> None:
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await known(bob, "alice")
        subscribed = bob.events(TrackSubscribed)
        source = room.AudioSource(48000, 1)
        track = room.LocalAudioTrack.create_audio_track("mic", source)
        pub = await alice.local_participant.publish_track(
            track, room.TrackPublishOptions(source=room.TrackSource.MICROPHONE))
        assert pub.sid.startswith("TR_") and track.sid == pub.sid
        async with anyio.create_task_group() as tg:
            tg.start_soon(play, source, 440.0, 6.0)
            ev = await next_event(subscribed, TrackSubscribed, timeout=15)
            assert ev.publication.sid == pub.sid and ev.participant.identity == "alice"
            got: list[room.AudioFrame] = []
            async with room.AudioStream(ev.track, sample_rate=16000) as stream:
                async for frame in stream:
                    got.append(frame)
                    if len(got) == 300:
                        break
            tg.cancel_scope.cancel()
        x = samples(got[100:])  # after the jitter buffer settles
        f = dominant_frequency(x, 16000)
        assert abs(f - 440.0) / 440.0 < 0.01, f
        level = rms_dbfs(x)
        assert abs(level - rms_dbfs(samples([tone(440.0, ms=1000)]))) < 3.0, level
    assert client_tasks() == []
