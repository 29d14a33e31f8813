"""Media across the aiortc boundary: what we send and what we receive, per track.

Sending. An `AudioFeed` holds the PCM an `AudioSource` captured (on the caller's loop)
until the aiortc track publishing it (`FeedAudioTrack`, on the aiortc loop) takes it, 20 ms
at a time, in real time: the track keeps its own clock, so a producer that is late makes
silence rather than drift, and one that is early waits for room in the feed (the source's
``queue_size_ms``). While no track takes from a feed, it drains against the wall clock as
if it were playing, so a source captured before (or after) it is published never blocks
its producer for ever. A `VideoFeed` holds the latest frame only; `FeedVideoTrack` sends
each new one once.

Receiving. aiortc decodes each received track into an unbounded queue; a `TrackSink`
drains it for as long as the track lives (so nothing accumulates when nobody reads) and
hands each frame to the `FrameTap`s attached at that moment: one per `AudioStream` or
`VideoStream`, each a bounded queue that drops its oldest frame when its reader falls
behind (bounded latency, bounded memory; the count of dropped frames is kept).

Feeds and taps are shared by two threads (the caller's loop and the aiortc loop); each
guards its state with a lock held only for list operations.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import fractions
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = [
    "AUDIO_PTIME",
    "AudioFeed",
    "FeedAudioTrack",
    "FeedVideoTrack",
    "FrameReader",
    "FrameTap",
    "ReceiverPump",
    "TrackSink",
    "VideoFeed",
]

_log = logging.getLogger(__name__)

AUDIO_PTIME = 0.020  # seconds of audio per packet (Opus, as every WebRTC stack sends)
_VIDEO_CLOCK = 90_000
# A sender that fell this far behind its clock (a stalled loop) restarts the clock
# rather than sending a burst to catch up.
_MAX_LAG = 0.2


class AudioFeed:
    """Captured PCM (interleaved int16) waiting to be sent; thread-safe."""

    def __init__(self, sample_rate: int, num_channels: int) -> None:
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self.frame_bytes = 2 * num_channels
        self.bytes_per_second = sample_rate * self.frame_bytes
        self._lock = threading.Lock()
        self._pcm = bytearray()
        self._consumer: object | None = None
        self._clock = time.monotonic()  # how far the virtual player got (no consumer)
        self.played_bytes = 0  # taken by a consumer or the virtual player

    def attach(self, consumer: object) -> None:
        with self._lock:
            if self._consumer is not None and self._consumer is not consumer:
                raise ValueError("this AudioSource already feeds a published track; "
                                 "create one source per track")
            self._drain_virtually()
            self._consumer = consumer

    def detach(self, consumer: object) -> None:
        with self._lock:
            if self._consumer is consumer:
                self._consumer = None
                self._clock = time.monotonic()

    def queued(self) -> int:
        """Bytes waiting to be played."""
        with self._lock:
            self._drain_virtually()
            return len(self._pcm)

    def put(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            self._drain_virtually()
            if not self._pcm:
                self._clock = time.monotonic()
            self._pcm += data

    def take(self, size: int) -> bytes:
        """``size`` bytes from the front, padded with silence when there are fewer."""
        with self._lock:
            chunk = bytes(self._pcm[:size])
            del self._pcm[:size]
            self.played_bytes += len(chunk)
        if len(chunk) < size:
            chunk += bytes(size - len(chunk))
        return chunk

    def clear(self) -> None:
        with self._lock:
            self._pcm.clear()

    def _drain_virtually(self) -> None:
        if self._consumer is not None:
            return
        now = time.monotonic()
        elapsed = now - self._clock
        if elapsed <= 0:
            return
        size = int(elapsed * self.sample_rate) * self.frame_bytes
        if size:
            played = min(size, len(self._pcm))
            del self._pcm[:played]
            self.played_bytes += played
            self._clock += size / self.bytes_per_second


class FeedAudioTrack(MediaStreamTrack):
    """An aiortc audio track sending an `AudioFeed` in real time, 20 ms per frame.
    When ``muted`` it sends silence and the feed still drains (a muted microphone)."""

    kind = "audio"

    def __init__(self, feed: AudioFeed, track_id: str) -> None:
        super().__init__()
        self._id = track_id
        self.feed = feed
        self.muted = False
        self._samples = int(feed.sample_rate * AUDIO_PTIME)
        self._start: float | None = None
        self._pts = 0
        self._time_base = fractions.Fraction(1, feed.sample_rate)
        feed.attach(self)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        rate = self.feed.sample_rate
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += self._samples
            wait = self._start + self._pts / rate - now
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -_MAX_LAG:
                self._start = now - self._pts / rate
        pcm = self.feed.take(self._samples * self.feed.frame_bytes)
        if self.muted:
            pcm = bytes(len(pcm))
        if self.feed.num_channels == 1:
            # The Opus encoder takes stereo; FFmpeg's upmix would halve the power (-3 dB)
            # where a copy in both channels keeps the level.
            mono = array.array("h", pcm)
            both = array.array("h", bytes(2 * len(pcm)))
            both[0::2] = mono
            both[1::2] = mono
            pcm = both.tobytes()
        frame = av.AudioFrame(format="s16", layout="stereo", samples=self._samples)
        frame.planes[0].update(pcm)
        frame.sample_rate = rate
        frame.pts = self._pts
        frame.time_base = self._time_base
        return frame

    def stop(self) -> None:
        self.feed.detach(self)
        super().stop()


class VideoFeed:
    """The latest captured video frame (an ``av.VideoFrame``) and its capture time;
    thread-safe. Senders wake when a new frame is put."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: av.VideoFrame | None = None
        self._timestamp_us = 0
        self._serial = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def put(self, frame: av.VideoFrame, timestamp_us: int) -> None:
        with self._lock:
            self._frame, self._timestamp_us = frame, timestamp_us
            self._serial += 1
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # the aiortc loop is closed
                loop.call_soon_threadsafe(event.set)

    def latest(self) -> tuple[int, av.VideoFrame | None, int]:
        with self._lock:
            return self._serial, self._frame, self._timestamp_us

    async def wait_newer(self, serial: int) -> None:
        """Until a frame newer than ``serial`` is put (runs on the aiortc loop)."""
        event = asyncio.Event()
        with self._lock:
            if self._serial != serial:
                return
            self._waiters.append((asyncio.get_running_loop(), event))
        await event.wait()


class FeedVideoTrack(MediaStreamTrack):
    """An aiortc video track sending each new frame of a `VideoFeed` once. When ``muted``
    it sends nothing."""

    kind = "video"

    def __init__(self, feed: VideoFeed, track_id: str) -> None:
        super().__init__()
        self._id = track_id
        self.feed = feed
        self.muted = False
        self._serial = 0
        self._time_base = fractions.Fraction(1, _VIDEO_CLOCK)
        self._first_us: int | None = None

    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            await self.feed.wait_newer(self._serial)
            serial, frame, timestamp_us = self.feed.latest()
            self._serial = serial
            if frame is None or self.muted:
                continue
            if self._first_us is None:
                self._first_us = timestamp_us
            out: av.VideoFrame = frame
            out.pts = (timestamp_us - self._first_us) * _VIDEO_CLOCK // 1_000_000
            out.time_base = self._time_base
            return out


F = TypeVar("F")
F_contra = TypeVar("F_contra", contravariant=True)


class FrameReader(Protocol[F_contra]):
    """Whatever a `TrackSink` hands frames to (a `FrameTap`, a level meter)."""

    def push(self, frame: F_contra) -> None: ...

    def close(self) -> None: ...


class FrameTap(Generic[F]):
    """One reader's bounded queue of received frames: pushed on the aiortc loop, read on
    the reader's loop, which ``wake`` (from `call_soon_in_caller`) reaches.

    When full, a push drops the oldest frame (counted in ``dropped``)."""

    def __init__(self, capacity: int, wake: Callable[[Callable[[], None]], object]) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.dropped = 0
        self.closed = False
        self._frames: collections.deque[F] = collections.deque()
        self._lock = threading.Lock()
        self._wake = wake
        self._on_ready: Callable[[], None] | None = None

    def push(self, frame: F) -> None:
        with self._lock:
            if self.closed:
                return
            if len(self._frames) >= self.capacity:
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(frame)
            notify = self._on_ready
        if notify is not None:
            self._wake(notify)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            notify = self._on_ready
        if notify is not None:
            self._wake(notify)

    def pop(self) -> F | None:
        with self._lock:
            return self._frames.popleft() if self._frames else None

    def __len__(self) -> int:
        return len(self._frames)

    def on_ready(self, callback: Callable[[], None] | None) -> None:
        """``callback`` runs on the reader's loop after each push and on close."""
        with self._lock:
            self._on_ready = callback


class TrackSink:
    """One received remote track (by its sid) and the taps reading it. Frames come from
    the `ReceiverPump` of the m-line carrying the track; when the track stops being
    carried (unsubscribed, unpublished, the m-line reused for another track, the peer
    connection closed), `end` closes every tap: its stream ends."""

    def __init__(self, *, track_sid: str, stream_id: str, kind: str, mid: str) -> None:
        self.track_sid = track_sid
        self.stream_id = stream_id  # LiveKit's "<participant sid>|<track sid>"
        self.kind = kind
        self.mid = mid
        self.frames = 0
        self._taps: tuple[FrameReader[av.AudioFrame | av.VideoFrame], ...] = ()
        self._lock = threading.Lock()
        self._ended = False
        self.paused = False  # frames are dropped meanwhile (the dev server: muted)
        self.mime_type = ""  # the codec it arrives in, e.g. "video/VP8"

    @property
    def participant_sid(self) -> str:
        return self.stream_id.split("|", 1)[0] if "|" in self.stream_id else self.stream_id

    @property
    def ended(self) -> bool:
        return self._ended

    def attach(self, tap: FrameReader[av.AudioFrame | av.VideoFrame]) -> None:
        with self._lock:
            if self._ended:
                tap.close()
                return
            self._taps = (*self._taps, tap)

    def detach(self, tap: FrameReader[av.AudioFrame | av.VideoFrame]) -> None:
        with self._lock:
            self._taps = tuple(t for t in self._taps if t is not tap)

    def deliver(self, frame: av.AudioFrame | av.VideoFrame) -> None:
        if self.paused:
            return
        self.frames += 1
        for tap in self._taps:
            tap.push(frame)

    def end(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
            taps, self._taps = self._taps, ()
        for tap in taps:
            tap.close()
        _log.debug("track %s ended after %d frames", self.track_sid, self.frames)


class ReceiverPump:
    """Drains one aiortc receiver's decoded frames for as long as its track lives (on the
    aiortc loop), handing them to the `TrackSink` it currently carries, if any; otherwise
    they are dropped. aiortc's own queue is unbounded: this keeps it empty."""

    def __init__(self, track: MediaStreamTrack, name: str) -> None:
        self.track = track
        self.name = name
        self.sink: TrackSink | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                sink = self.sink
                if sink is not None and isinstance(frame, (av.AudioFrame, av.VideoFrame)):
                    sink.deliver(frame)
        except MediaStreamError:
            pass
        finally:
            if self.sink is not None:
                self.sink.end()

    def carry(self, sink: TrackSink | None) -> None:
        """Carry ``sink`` from now on; the one carried before ends."""
        old, self.sink = self.sink, sink
        if old is not None and old is not sink:
            old.end()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.carry(None)
