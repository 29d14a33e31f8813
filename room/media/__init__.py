"""Media values: raw audio and video frames and audio resampling.

Everything here is pure (no network, no event loop); the sources, tracks and streams that
move frames through a room build on it.
"""

from room.media.frame import AudioFrame, VideoBufferType, VideoFrame
from room.media.resampler import AudioResampler

__all__ = ["AudioFrame", "AudioResampler", "VideoBufferType", "VideoFrame"]
