"""Media timing and buffering without a server: an `AudioSource` drains in real time
(published or not), its track sends 20 ms per 20 ms and silence when starved (no drift),
and a stream's slow reader loses its oldest frames, never memory (docs/media.md).

Timing bounds here are generous (this machine is shared): they check behaviour (did it
wait? did it not wait for ever?), not speed; speed is bench/media.py's business."""

from __future__ import annotations

import fractions
import time

import anyio
import av
import numpy as np
import pytest

import room
from room.transport.aio import aiortc_loop
from room.transport.media import FeedAudioTrack, TrackSink
from tests.mediatools import dominant_frequency, samples, tone

pytestmark = pytest.mark.anyio


async def test_an_unpublished_source_drains_in_real_time() -> None:
    """Three seconds of audio into a one-second queue, as fast as possible: the producer
    is held back about two seconds (the queue plays into nothing), then the queue empties
    at the pace of the clock."""
    source = room.AudioSource(48000, 1, queue_size_ms=1000)
    started = time.monotonic()
    for i in range(300):
        await source.capture_frame(tone(440, start=i * 480))
    took = time.monotonic() - started
    assert 1.8 <= took <= 4.0, took
    assert 0.8 <= source.queued_duration <= 1.05, source.queued_duration
    started = time.monotonic()
    await source.wait_for_playout()
    assert 0.7 <= time.monotonic() - started <= 2.0
    assert source.queued_duration == 0


async def test_clear_queue_empties_it_and_releases_a_waiting_producer() -> None:
    source = room.AudioSource(16000, 1, queue_size_ms=200)
    await source.capture_frame(tone(300, sample_rate=16000, ms=200))
    assert 0.15 <= source.queued_duration <= 0.2
    released = anyio.Event()

    async def producer() -> None:
        await source.capture_frame(tone(300, sample_rate=16000, ms=100))
        released.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await anyio.sleep(0.02)
        assert not released.is_set()  # the queue is full
        source.clear_queue()
        with anyio.fail_after(0.5):
            await released.wait()
    assert source.queued_duration <= 0.1


async def test_bad_frames_are_refused() -> None:
    source = room.AudioSource(48000, 1)
    with pytest.raises(ValueError, match="16000 Hz"):
        await source.capture_frame(tone(440, sample_rate=16000))
    with pytest.raises(ValueError, match="2 channel"):
        await source.capture_frame(tone(440, num_channels=2))
    with pytest.raises(TypeError):
        await source.capture_frame(b"\0" * 960)  # type: ignore[arg-type]
    for bad in ((44, 1), (48000, 3), (48000, 0)):
        with pytest.raises(ValueError):
            room.AudioSource(*bad)
    with pytest.raises(ValueError):
        room.AudioSource(48000, 1, queue_size_ms=0)


async def _pull(track: FeedAudioTrack, count: int) -> list[tuple[float, av.AudioFrame]]:
    out = []
    for _ in range(count):
        frame = await track.recv()
        out.append((time.monotonic(), frame))
    track.stop()
    return out


async def test_the_track_sends_20_ms_every_20_ms_and_silence_when_starved() -> None:
    """The aiortc track publishing a source: frames of 20 ms, paced by the clock (not by
    the producer), stereo for the encoder; a gap in the production is sent as silence,
    and what comes after is not delayed by it (no drift)."""
    source = room.AudioSource(48000, 1)
    track = FeedAudioTrack(source._feed, "cid")
    # 200 ms of tone, then nothing for a while (the producer is late), then more tone.
    for i in range(20):
        await source.capture_frame(tone(440, start=i * 480))
    pulled = await aiortc_loop().run(_pull, track, 50)  # 1 s
    times = [t for t, _ in pulled]
    frames = [f for _, f in pulled]
    assert all(f.samples == 960 and f.sample_rate == 48000 and f.layout.name == "stereo"
               for f in frames)
    assert [f.pts for f in frames] == [i * 960 for i in range(50)]
    assert frames[0].time_base == fractions.Fraction(1, 48000)
    span = times[-1] - times[0]
    assert 0.9 <= span <= 1.3, span  # 49 intervals of 20 ms
    pcm = [np.frombuffer(bytes(f.planes[0])[:960 * 4], dtype=np.int16) for f in frames]
    loud = [int(np.abs(p).max()) for p in pcm]
    assert all(level > 10000 for level in loud[:10])  # the tone
    assert all(level == 0 for level in loud[11:])  # then silence, not a wait
    both = pcm[0].reshape(-1, 2)
    assert (both[:, 0] == both[:, 1]).all()  # mono sent as two equal channels


async def test_a_muted_track_sends_silence_and_the_source_still_drains() -> None:
    source = room.AudioSource(48000, 1)
    track = FeedAudioTrack(source._feed, "cid")
    track.muted = True
    for i in range(10):
        await source.capture_frame(tone(440, start=i * 480))
    pulled = await aiortc_loop().run(_pull, track, 10)
    assert all(not np.frombuffer(bytes(f.planes[0]), dtype=np.int16).any()
               for _, f in pulled)
    assert source.queued_duration < 0.05


def _decoded(frequency: float, n: int, start: int = 0) -> av.AudioFrame:
    """What aiortc's Opus decoder hands over: 20 ms of 48 kHz stereo s16."""
    x = tone(frequency, ms=20, start=start)
    pcm = np.repeat(np.frombuffer(x.data, dtype=np.int16), 2)
    frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
    frame.planes[0].update(pcm.tobytes())
    frame.sample_rate = 48000
    frame.pts = n * 960
    frame.time_base = fractions.Fraction(1, 48000)
    return frame


def _remote_track(sink: TrackSink) -> room.RemoteAudioTrack:
    return room.RemoteAudioTrack(sid="TR_x", name="mic", kind=room.TrackKind.AUDIO,
                                 sink=sink)


async def test_a_stream_resamples_and_reframes() -> None:
    sink = TrackSink(track_sid="TR_x", stream_id="PA_x|TR_x", kind="audio", mid="0")
    track = _remote_track(sink)
    got: list[room.AudioFrame] = []
    async with room.AudioStream(track, sample_rate=16000, num_channels=1,
                                frame_size_ms=10) as stream:
        for n in range(50):  # one second
            sink.deliver(_decoded(440, n, start=n * 960))
        sink.end()
        async for frame in stream:
            assert (frame.sample_rate, frame.num_channels, frame.samples_per_channel) == (
                16000, 1, 160)
            got.append(frame)
    assert 95 <= len(got) <= 100  # the resampler keeps a few samples back
    f = dominant_frequency(samples(got), 16000)
    assert abs(f - 440) / 440 < 0.01, f
    assert stream.dropped == 0


async def test_a_slow_reader_gets_the_latest_audio_and_bounded_memory() -> None:
    """Ten seconds arrive while nobody reads a stream of capacity 50 (half a second of
    10 ms frames): the reader then gets about half a second, the most recent, and the
    rest is counted as dropped."""
    sink = TrackSink(track_sid="TR_x", stream_id="PA_x|TR_x", kind="audio", mid="0")
    track = _remote_track(sink)
    stream = room.AudioStream(track, sample_rate=48000, capacity=50)
    for n in range(500):
        frequency = 440 if n < 450 else 880  # the last second sounds different
        sink.deliver(_decoded(frequency, n, start=n * 960))
    sink.end()
    got = [frame async for frame in stream]
    assert 40 <= len(got) <= 60, len(got)
    assert stream.dropped >= 470
    f = dominant_frequency(samples(got), 48000)
    assert abs(f - 880) / 880 < 0.01, f  # the newest audio


async def test_a_stream_ends_when_closed_and_refuses_wrong_tracks() -> None:
    sink = TrackSink(track_sid="TR_x", stream_id="PA_x|TR_x", kind="audio", mid="0")
    stream = room.AudioStream(_remote_track(sink))
    await stream.aclose()
    assert [f async for f in stream] == []
    with pytest.raises(ValueError, match="video"):
        room.VideoStream(_remote_track(sink))
    local = room.LocalAudioTrack.create_audio_track("x", room.AudioSource(48000, 1))
    with pytest.raises(TypeError, match="remote"):
        room.AudioStream(local)
    with pytest.raises(ValueError):
        room.AudioStream(_remote_track(sink), num_channels=3)


async def test_frames_nobody_reads_are_not_kept() -> None:
    """A received track without streams: its frames are dropped at once (aiortc's own
    queue is drained by the pump, tests/test_media.py)."""
    sink = TrackSink(track_sid="TR_x", stream_id="PA_x|TR_x", kind="audio", mid="0")
    for n in range(1000):
        sink.deliver(_decoded(440, n))
    assert sink.frames == 1000
    stream = room.AudioStream(_remote_track(sink))
    sink.deliver(_decoded(440, 1000))
    sink.end()
    assert len([f async for f in stream]) <= 2  # only what came after it was made


async def test_the_virtual_drain_does_not_run_ahead_of_the_clock() -> None:
    source = room.AudioSource(48000, 1, queue_size_ms=1000)
    for i in range(50):
        await source.capture_frame(tone(440, start=i * 480))
    await anyio.sleep(0.2)
    assert 0.2 <= source.queued_duration <= 0.32, source.queued_duration
