"""Reading received media: `AudioStream` and `VideoStream`, async iterators of frames.

A stream reads one subscribed remote track from the moment it is created. It ends (the
``async for`` finishes) when the track is unsubscribed or unpublished, its publisher
leaves, or the room ends; `aclose` (or leaving its ``async with``) ends it early.

Buffering, for a reader slower than real time: each stream holds at most ``capacity``
frames; when a new one arrives and the stream is full, the oldest is dropped and counted
in ``dropped``. So a slow reader gets the most recent media, with bounded latency and
bounded memory, never a growing backlog; a reader that keeps up loses nothing. A track
nobody streams costs its decoding only: frames with no stream are dropped at once.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio
import av

from room.media.frame import AudioFrame, VideoBufferType, VideoFrame, _video_from_av
from room.transport.aio import call_soon_in_caller
from room.transport.media import AUDIO_PTIME, FrameTap, TrackSink
from room.types import TrackKind, TrackSource

if TYPE_CHECKING:
    from room.participant import RemoteParticipant
    from room.track import Track

__all__ = ["AudioStream", "VideoStream"]


def _sink_of(track: Track, kind: TrackKind, what: str) -> TrackSink:
    sink: TrackSink | None = getattr(track, "_sink", None)
    if sink is None:
        raise TypeError(f"{what} reads a subscribed remote track, not {track!r}")
    if track.kind is not kind:
        raise ValueError(f"{what} needs a {kind.name.lower()} track, not {track!r}")
    return sink


class _FrameStream:
    """What both streams share: the tap, the wake-up, the end."""

    def __init__(self, sink: TrackSink | None, capacity: int) -> None:
        self._sink = sink  # None while waiting for the track (`from_participant`)
        self._tap: FrameTap[av.AudioFrame | av.VideoFrame] = FrameTap(
            capacity, call_soon_in_caller())
        self._ready: anyio.Event | None = None
        self._tap.on_ready(self._wake)
        if sink is not None:
            sink.attach(self._tap)

    @property
    def dropped(self) -> int:
        """Frames dropped because this stream's reader fell behind."""
        return self._tap.dropped

    def _wake(self) -> None:
        if self._ready is not None:
            self._ready.set()

    async def _next_raw(self) -> av.AudioFrame | av.VideoFrame | None:
        """The next received frame; None once the stream has ended."""
        while True:
            frame = self._tap.pop()
            if frame is not None:
                return frame
            if self._tap.closed:
                return None
            self._ready = anyio.Event()
            if len(self._tap) or self._tap.closed:
                continue
            await self._ready.wait()

    async def aclose(self) -> None:
        """End the stream now (idempotent)."""
        if self._sink is not None:
            self._sink.detach(self._tap)
        self._tap.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


class AudioStream(_FrameStream):
    """The audio of a subscribed remote track as `AudioFrame`s of ``frame_size_ms``,
    resampled to ``sample_rate`` and mixed to ``num_channels``. ``capacity`` frames are
    buffered for a slow reader (default: one second's worth); see the module's notes."""

    def __init__(self, track: Track, *, sample_rate: int = 48000, num_channels: int = 1,
                 frame_size_ms: int = 10, capacity: int | None = None) -> None:
        self._setup(track, sample_rate, num_channels, frame_size_ms, capacity)

    def _setup(self, track: Track | None, sample_rate: int, num_channels: int,
               frame_size_ms: int, capacity: int | None) -> None:
        if not isinstance(sample_rate, int) or not 8000 <= sample_rate <= 192_000:
            raise ValueError(f"sample_rate must be an int in 8000..192000, not {sample_rate!r}")
        if num_channels not in (1, 2):
            raise ValueError(f"num_channels must be 1 or 2, not {num_channels!r}")
        if not isinstance(frame_size_ms, int) or not 1 <= frame_size_ms <= 1000:
            raise ValueError(f"frame_size_ms must be an int in 1..1000, not {frame_size_ms!r}")
        if capacity is None:
            capacity = max(1, 1000 // frame_size_ms)
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, not {capacity!r}")
        sink = None if track is None else _sink_of(track, TrackKind.AUDIO, "AudioStream")
        # The tap holds received packets (20 ms each), enough for ``capacity`` frames.
        super().__init__(sink, math.ceil(capacity * frame_size_ms / 1000 / AUDIO_PTIME) + 1)
        self.track = track
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self.frame_size_ms = frame_size_ms
        self.samples_per_frame = sample_rate * frame_size_ms // 1000
        self._frame_bytes = self.samples_per_frame * 2 * num_channels
        self._layout = "mono" if num_channels == 1 else "stereo"
        self._resampler: av.AudioResampler | None = None
        self._pcm = bytearray()

    @classmethod
    def from_participant(cls, *, participant: RemoteParticipant,
                         track_source: TrackSource, sample_rate: int = 48000,
                         num_channels: int = 1, frame_size_ms: int = 10,
                         capacity: int | None = None) -> AudioStream:
        """A stream of ``participant``'s audio track from ``track_source`` (e.g.
        `TrackSource.MICROPHONE`): the one subscribed now, or else the first one
        subscribed from now on (the stream waits for it). It ends with that track, or
        when the participant leaves first."""
        source = TrackSource(track_source)
        for publication in participant.track_publications.values():
            track = publication.track
            if (publication.kind is TrackKind.AUDIO and publication.source == source
                    and track is not None):
                return cls(track, sample_rate=sample_rate, num_channels=num_channels,
                           frame_size_ms=frame_size_ms, capacity=capacity)
        media = participant._media
        if media is None:
            from room.errors import ConnectionClosedError

            raise ConnectionClosedError(f"{participant!r} is not in a live room")
        stream = cls.__new__(cls)
        stream._setup(None, sample_rate, num_channels, frame_size_ms, capacity)
        media.wait_for_track(participant, TrackKind.AUDIO, source, stream._tap,
                             stream._bind)
        return stream

    def _bind(self, sink: TrackSink, track: Track) -> None:
        """The track a waiting stream was waiting for (its tap is attached already)."""
        self._sink = sink
        self.track = track

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> AudioFrame:
        size = self._frame_bytes
        while len(self._pcm) < size:
            frame = await self._next_raw()
            if frame is None:
                raise StopAsyncIteration
            assert isinstance(frame, av.AudioFrame)
            self._convert(frame)
        chunk = self._pcm[:size]
        del self._pcm[:size]
        return AudioFrame(chunk, self.sample_rate, self.num_channels, self.samples_per_frame)

    def _convert(self, frame: av.AudioFrame) -> None:
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout=self._layout,
                                                rate=self.sample_rate)
        try:
            out = self._resampler.resample(frame)
        except ValueError:  # the input's format changed: start over with a new one
            self._resampler = av.AudioResampler(format="s16", layout=self._layout,
                                                rate=self.sample_rate)
            out = self._resampler.resample(frame)
        step = 2 * self.num_channels
        for part in out:
            self._pcm += memoryview(part.planes[0])[:part.samples * step]

    def __repr__(self) -> str:
        return (f"<AudioStream of {self.track!r}: {self.sample_rate} Hz, "
                f"{self.num_channels} ch, {self.frame_size_ms} ms frames>")


class VideoStream(_FrameStream):
    """The video of a subscribed remote track as `VideoFrame`s of ``format`` (default
    I420, what the decoder gives). ``capacity`` frames are buffered for a slow reader
    (default 2: video readers want the latest frame); see the module's notes."""

    def __init__(self, track: Track, *, format: VideoBufferType | None = None,
                 capacity: int = 2) -> None:
        if format is not None:
            format = VideoBufferType(format)
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, not {capacity!r}")
        super().__init__(_sink_of(track, TrackKind.VIDEO, "VideoStream"), capacity)
        self.track = track
        self.format = format

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> VideoFrame:
        frame = await self._next_raw()
        if frame is None:
            raise StopAsyncIteration
        assert isinstance(frame, av.VideoFrame)
        return _video_from_av(frame, self.format)

    def __repr__(self) -> str:
        return f"<VideoStream of {self.track!r}>"
