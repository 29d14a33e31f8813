"""Media sources: where an application's audio and video enter a published track.

An `AudioSource` is a queue of PCM with a real-time drain. ``capture_frame`` returns as
soon as the frame is queued and waits while the queue holds ``queue_size_ms`` already;
the track publishing the source takes 20 ms from it every 20 ms, whatever the producer
does: a producer faster than real time is held back by the queue, a slower one leaves
gaps that are sent as silence (the stream never drifts). While the source is not
published (before `publish_track`, after `unpublish_track`) the queue drains against the
wall clock all the same, as if it played into nothing, so a producer is never blocked
for ever.

A `VideoSource` keeps the latest frame; the track sends each new frame once, so a
producer faster than the encoder loses frames (the newest wins) and a slower one sends
fewer.

Both are used from the application's event loop (asyncio or Trio); the aiortc side reads
them from its own thread (`room.transport.media`).
"""

from __future__ import annotations

import array
import math
import time

import anyio

from room.media.frame import AudioFrame, VideoFrame, _video_to_av
from room.transport.media import AudioFeed, VideoFeed

__all__ = ["AudioSource", "VideoSource"]


class AudioSource:
    """Audio to publish: interleaved int16 PCM at ``sample_rate`` with ``num_channels``
    (1 or 2), queued up to ``queue_size_ms``. One source feeds one published track."""

    def __init__(self, sample_rate: int, num_channels: int, *,
                 queue_size_ms: int = 1000) -> None:
        if not isinstance(sample_rate, int) or not 8000 <= sample_rate <= 192_000:
            raise ValueError(f"sample_rate must be an int in 8000..192000, not {sample_rate!r}")
        if num_channels not in (1, 2):
            raise ValueError(f"num_channels must be 1 or 2, not {num_channels!r}")
        if not isinstance(queue_size_ms, int) or queue_size_ms < 10:
            raise ValueError(f"queue_size_ms must be an int of at least 10, "
                             f"not {queue_size_ms!r}")
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self.queue_size_ms = queue_size_ms
        self._feed = AudioFeed(sample_rate, num_channels)
        self._capacity = queue_size_ms * self._feed.bytes_per_second // 1000
        self._cleared: anyio.Event | None = None

    @property
    def queued_duration(self) -> float:
        """Seconds of audio queued and not sent yet."""
        return self._feed.queued() / self._feed.bytes_per_second

    async def capture_frame(self, frame: AudioFrame) -> None:
        """Queue ``frame`` to be sent; returns once it is queued, waiting while the queue
        is full (at most about the frame's duration past the queue's size). A frame longer
        than the whole queue is accepted when the queue is empty.

        Cancelled while waiting, the frame is not queued."""
        if not isinstance(frame, AudioFrame):
            raise TypeError(f"capture_frame takes an AudioFrame, not {type(frame).__name__}")
        if (frame.sample_rate, frame.num_channels) != (self.sample_rate, self.num_channels):
            raise ValueError(
                f"frame is {frame.sample_rate} Hz, {frame.num_channels} channel(s); this "
                f"source takes {self.sample_rate} Hz, {self.num_channels} channel(s) "
                "(use AudioResampler)")
        data = frame.data.cast("B")
        while True:
            queued = self._feed.queued()
            if queued == 0 or queued + len(data) <= self._capacity:
                break
            excess = queued + len(data) - self._capacity
            await self._wait_cleared(excess / self._feed.bytes_per_second)
        self._feed.put(data)

    def clear_queue(self) -> None:
        """Drop everything queued (an interrupted utterance); waiting producers go on."""
        self._feed.clear()
        if self._cleared is not None:
            self._cleared.set()
            self._cleared = None

    async def wait_for_playout(self) -> None:
        """Until everything queued has been sent (or dropped by `clear_queue`)."""
        while queued := self._feed.queued():
            await self._wait_cleared(queued / self._feed.bytes_per_second)

    async def _wait_cleared(self, seconds: float) -> None:
        # The queue drains at a known rate: sleep until there should be room, waking early
        # if the queue is cleared. A few ms more lets the 20 ms consumer get there.
        if self._cleared is None:
            self._cleared = anyio.Event()
        with anyio.move_on_after(max(seconds, 0.001) + 0.002):
            await self._cleared.wait()

    def __repr__(self) -> str:
        return (f"<AudioSource {self.sample_rate} Hz, {self.num_channels} ch, "
                f"{self.queued_duration * 1000:.0f} ms queued>")


class VideoSource:
    """Video to publish, ``width`` x ``height`` (what the server is told; frames of
    another size are sent as they are)."""

    def __init__(self, width: int, height: int) -> None:
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or not 1 <= value <= 8192:
                raise ValueError(f"{name} must be an int in 1..8192, not {value!r}")
        self.width = width
        self.height = height
        self._feed = VideoFeed()
        self._first: tuple[float, int] | None = None

    def capture_frame(self, frame: VideoFrame, *, timestamp_us: int | None = None) -> None:
        """Make ``frame`` the next one to send (replacing one not sent yet). Its capture
        time is ``timestamp_us`` (microseconds, any origin, increasing), else now."""
        if not isinstance(frame, VideoFrame):
            raise TypeError(f"capture_frame takes a VideoFrame, not {type(frame).__name__}")
        if timestamp_us is None:
            timestamp_us = int(time.monotonic() * 1_000_000)
        elif not isinstance(timestamp_us, int):
            raise TypeError("timestamp_us must be an int (microseconds)")
        self._feed.put(_video_to_av(frame), timestamp_us)

    def __repr__(self) -> str:
        return f"<VideoSource {self.width}x{self.height}>"


async def play_sine(source: AudioSource, frequency: float, *, amplitude: int = 8000) -> None:
    """Feed ``source`` a sine wave of ``frequency`` Hz (mono sources) in 10 ms frames,
    until cancelled; `AudioSource.capture_frame` paces it. Not public: the CLI demo and
    `room.testing`'s tones share it."""
    rate = source.sample_rate
    per_frame = rate // 100
    step = 2 * math.pi * frequency / rate
    n = 0
    while True:
        pcm = array.array("h", (int(amplitude * math.sin(step * (n + i)))
                                for i in range(per_frame)))
        n += per_frame
        await source.capture_frame(AudioFrame(pcm.tobytes(), rate, 1, per_frame))
