"""Raw media frames: `AudioFrame` (interleaved int16 PCM) and `VideoFrame` (packed RGB or
planar/biplanar YUV), plus their conversions to and from PyAV frames.

These are plain values with no I/O and no event loop. A user builds them to feed an
``AudioSource`` / ``VideoSource`` and gets them from an ``AudioStream`` / ``VideoStream``;
the media pipeline turns them into PyAV frames (what aiortc's encoders take and its
decoders give) with the private ``_audio_to_av`` / ``_audio_from_av`` / ``_video_to_av`` /
``_video_from_av`` helpers at the bottom of this module.

Memory: a frame views one contiguous buffer. A writable buffer handed to the constructor
(a ``bytearray``, a writable ``memoryview``, a numpy array) is *shared*, not copied, so
writing through ``frame.data`` writes into it and vice versa; a read-only one (``bytes``)
or a non-contiguous one is copied into a ``bytearray`` the frame owns. ``frame.data`` is
always a writable ``memoryview``, so ``numpy.frombuffer(frame.data, dtype=...)`` gives a
zero-copy array. numpy itself is never imported here.

Colour: YUV frames hold BT.601 limited-range ("TV range", Y in 16..235) samples, which is
what WebRTC (libwebrtc and LiveKit's own converter, libyuv) uses. Conversions go through
libswscale (via PyAV), with the matrix and range stated explicitly so they do not depend
on swscale's defaults.
"""

from __future__ import annotations

import enum
import operator
from typing import TYPE_CHECKING, Final

import av
from av.video.reformatter import ColorRange, Colorspace

if TYPE_CHECKING:
    from av.video.plane import VideoPlane
    from typing_extensions import Buffer

__all__ = ["AudioFrame", "VideoBufferType", "VideoFrame"]

_SAMPLE_BYTES: Final = 2  # signed 16-bit PCM


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    value = operator.index(value)  # accepts numpy integers, rejects floats
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _byte_view(data: Buffer) -> memoryview:
    """A writable, 1-D, unsigned-byte view of ``data``'s memory, or of a private copy when
    ``data`` is read-only or not C-contiguous (a cast needs contiguous memory)."""
    view = memoryview(data)
    if view.readonly or not view.c_contiguous:
        return memoryview(bytearray(view))
    if view.format == "B" and view.ndim == 1:
        return view
    return view.cast("B")


class AudioFrame:
    """A block of interleaved signed 16-bit PCM audio (native byte order, which is
    little-endian on every platform WebRTC runs on).

    ``data`` holds ``2 * num_channels * samples_per_channel`` bytes, sample ``i`` of
    channel ``c`` at int16 index ``i * num_channels + c``. See the module docstring for
    when the buffer is shared rather than copied.
    """

    __slots__ = ("_num_channels", "_sample_rate", "_samples_per_channel", "_view")

    def __init__(
        self, data: Buffer, sample_rate: int, num_channels: int, samples_per_channel: int
    ) -> None:
        self._sample_rate = _positive_int("sample_rate", sample_rate)
        self._num_channels = _positive_int("num_channels", num_channels)
        self._samples_per_channel = _positive_int("samples_per_channel", samples_per_channel)
        view = _byte_view(data)
        expected = _SAMPLE_BYTES * self._num_channels * self._samples_per_channel
        if view.nbytes != expected:
            raise ValueError(
                f"AudioFrame data must be {expected} bytes (2 bytes x {self._num_channels} "
                f"channel(s) x {self._samples_per_channel} samples), got {view.nbytes}"
            )
        self._view = view

    @classmethod
    def create(cls, sample_rate: int, num_channels: int, samples_per_channel: int) -> AudioFrame:
        """A frame of silence (all zero samples) in a fresh buffer."""
        size = _SAMPLE_BYTES * _positive_int("num_channels", num_channels) * _positive_int(
            "samples_per_channel", samples_per_channel
        )
        return cls(bytearray(size), sample_rate, num_channels, samples_per_channel)

    @property
    def data(self) -> memoryview:
        """The samples as a writable ``memoryview`` of format ``'h'`` (int16), over the
        frame's own buffer."""
        return self._view.cast("h")

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def num_channels(self) -> int:
        return self._num_channels

    @property
    def samples_per_channel(self) -> int:
        return self._samples_per_channel

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self._samples_per_channel / self._sample_rate

    def __repr__(self) -> str:
        return (
            f"AudioFrame(sample_rate={self._sample_rate}, num_channels={self._num_channels}, "
            f"samples_per_channel={self._samples_per_channel}, "
            f"duration={self.duration * 1000:.3g}ms)"
        )


class VideoBufferType(enum.IntEnum):
    """Pixel layout of a `VideoFrame`; the values are LiveKit's ``VideoBufferType``.

    The packed RGB names give the byte order in memory (``RGBA``: R, G, B, A), as in
    the official SDK and PyAV. ``I420``: Y plane, then U and V at half width and height
    (rounded up). ``I420A``: I420 followed by a full-size alpha plane. ``I422``: chroma
    at half width, full height. ``I444``: three full planes. ``I010``: I420 with 10-bit
    samples in little-endian 16-bit words. ``NV12``: Y plane, then one half-size plane of
    interleaved U, V pairs.
    """

    RGBA = 0
    ABGR = 1
    ARGB = 2
    BGRA = 3
    RGB24 = 4
    I420 = 5
    I420A = 6
    I422 = 7
    I444 = 8
    I010 = 9
    NV12 = 10


_AV_FORMATS: Final[dict[VideoBufferType, str]] = {
    VideoBufferType.RGBA: "rgba",
    VideoBufferType.ABGR: "abgr",
    VideoBufferType.ARGB: "argb",
    VideoBufferType.BGRA: "bgra",
    VideoBufferType.RGB24: "rgb24",
    VideoBufferType.I420: "yuv420p",
    VideoBufferType.I420A: "yuva420p",
    VideoBufferType.I422: "yuv422p",
    VideoBufferType.I444: "yuv444p",
    VideoBufferType.I010: "yuv420p10le",
    VideoBufferType.NV12: "nv12",
}

_RGB_TYPES: Final = frozenset(
    {
        VideoBufferType.RGBA,
        VideoBufferType.ABGR,
        VideoBufferType.ARGB,
        VideoBufferType.BGRA,
        VideoBufferType.RGB24,
    }
)

# Where alpha sits in each 4-byte pixel.
_ALPHA_OFFSET: Final[dict[VideoBufferType, int]] = {
    VideoBufferType.RGBA: 3,
    VideoBufferType.BGRA: 3,
    VideoBufferType.ARGB: 0,
    VideoBufferType.ABGR: 0,
}

# FFmpeg's AVColorSpace values (PyAV exposes no enum for frame tags; its `Colorspace` is
# swscale's SWS_CS_* numbering, which differs). BT470BG and SMPTE170M both mean the
# BT.601 matrix.
_AVCOL_SPC_BT470BG: Final = 5
_AVCOL_SPC_SMPTE170M: Final = 6
_AVCOL_SPC_UNSPECIFIED: Final = 2


def _plane_layout(type: VideoBufferType, width: int, height: int) -> list[tuple[int, int]]:
    """(bytes per row, rows) of each plane, in memory order, for a tightly packed frame."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    match type:
        case (
            VideoBufferType.RGBA
            | VideoBufferType.ABGR
            | VideoBufferType.ARGB
            | VideoBufferType.BGRA
        ):
            return [(4 * width, height)]
        case VideoBufferType.RGB24:
            return [(3 * width, height)]
        case VideoBufferType.I420:
            return [(width, height), (cw, ch), (cw, ch)]
        case VideoBufferType.I420A:
            return [(width, height), (cw, ch), (cw, ch), (width, height)]
        case VideoBufferType.I422:
            return [(width, height), (cw, height), (cw, height)]
        case VideoBufferType.I444:
            return [(width, height)] * 3
        case VideoBufferType.I010:
            return [(2 * width, height), (2 * cw, ch), (2 * cw, ch)]
        case VideoBufferType.NV12:
            return [(width, height), (2 * cw, ch)]
    raise ValueError(f"unsupported VideoBufferType {type!r}")  # pragma: no cover


class VideoFrame:
    """One uncompressed picture, tightly packed (no row padding) in a single buffer.

    The size of ``data`` must be exactly what ``type`` needs at ``width`` x ``height``
    (see `VideoBufferType`; chroma planes of odd sizes round up). YUV content is BT.601
    limited range. See the module docstring for when the buffer is shared.
    """

    __slots__ = ("_height", "_type", "_view", "_width")

    def __init__(self, width: int, height: int, type: VideoBufferType, data: Buffer) -> None:
        self._width = _positive_int("width", width)
        self._height = _positive_int("height", height)
        self._type = VideoBufferType(type)
        view = _byte_view(data)
        expected = sum(
            row * rows for row, rows in _plane_layout(self._type, self._width, self._height)
        )
        if view.nbytes != expected:
            raise ValueError(
                f"{self._type.name} data at {self._width}x{self._height} must be {expected} "
                f"bytes, got {view.nbytes}"
            )
        self._view = view

    @property
    def width(self) -> int:
        return self._width

    @property
    def height(self) -> int:
        return self._height

    @property
    def type(self) -> VideoBufferType:
        return self._type

    @property
    def data(self) -> memoryview:
        """The pixels as a writable ``memoryview`` of bytes, over the frame's own buffer."""
        return self._view[:]  # a fresh view, so releasing it leaves the frame usable

    def convert(self, type: VideoBufferType) -> VideoFrame:
        """A new frame with the same picture in layout ``type`` (a copy even when ``type``
        is this frame's own). YUV output is BT.601 limited range; converting to a type
        without alpha drops it, converting from one gives opaque pixels."""
        target = VideoBufferType(type)
        if target is self._type:
            return VideoFrame(self._width, self._height, target, bytearray(self._view))
        result = _video_from_av(_video_to_av(self), target)
        # swscale rounds alpha on its way to or from a YUVA plane (128 comes back as
        # 129); alpha is never subsampled, so copy it across exactly instead.
        pixels = self._width * self._height
        if target is VideoBufferType.I420A and self._type in _ALPHA_OFFSET:
            start = _ALPHA_OFFSET[self._type]
            result._view[-pixels:] = self._view[start::4]
        elif self._type is VideoBufferType.I420A and target in _ALPHA_OFFSET:
            start = _ALPHA_OFFSET[target]
            result._view[start::4] = self._view[-pixels:]
        return result

    def __repr__(self) -> str:
        return (
            f"VideoFrame(width={self._width}, height={self._height}, "
            f"type={self._type.name}, nbytes={self._view.nbytes})"
        )


# --- PyAV boundary -------------------------------------------------------------------
#
# PyAV frames are what aiortc's encoders consume and its decoders produce. Their planes
# carry row padding (``line_size`` is rounded up for SIMD, so a 33-pixel RGBA row of 132
# bytes sits in 144), which is why copies go row by row unless the rows happen to be
# contiguous; the per-row loop is the only Python loop, never per pixel.


def _copy_into_plane(plane: VideoPlane, src: memoryview, row_bytes: int, rows: int) -> None:
    dst = memoryview(plane)
    stride = plane.line_size
    if stride == row_bytes:
        dst[: row_bytes * rows] = src
        return
    for r in range(rows):
        dst[r * stride : r * stride + row_bytes] = src[r * row_bytes : (r + 1) * row_bytes]


def _copy_from_plane(plane: VideoPlane, dst: memoryview, row_bytes: int, rows: int) -> None:
    src = memoryview(plane)
    stride = plane.line_size
    if stride == row_bytes:
        dst[:] = src[: row_bytes * rows]
        return
    for r in range(rows):
        dst[r * row_bytes : (r + 1) * row_bytes] = src[r * stride : r * stride + row_bytes]


def _video_to_av(frame: VideoFrame) -> av.VideoFrame:
    """A PyAV frame (pixel format per `VideoBufferType`) holding a copy of ``frame``'s
    pixels. YUV frames are tagged BT.601 limited range, so encoders and later
    ``reformat`` calls read them as they were meant."""
    out = av.VideoFrame(frame.width, frame.height, _AV_FORMATS[frame.type])
    offset = 0
    layout = _plane_layout(frame.type, frame.width, frame.height)
    for plane, (row_bytes, rows) in zip(out.planes, layout, strict=True):
        size = row_bytes * rows
        _copy_into_plane(plane, frame.data[offset : offset + size], row_bytes, rows)
        offset += size
    if frame.type not in _RGB_TYPES:
        out.colorspace = _AVCOL_SPC_SMPTE170M
        out.color_range = ColorRange.MPEG
    return out


def _is_bt601_limited(av_frame: av.VideoFrame) -> bool:
    # An untagged frame counts: swscale reads untagged YUV as BT.601 limited range.
    return av_frame.colorspace in (
        _AVCOL_SPC_UNSPECIFIED,
        _AVCOL_SPC_BT470BG,
        _AVCOL_SPC_SMPTE170M,
    ) and av_frame.color_range in (ColorRange.UNSPECIFIED, ColorRange.MPEG)


def _video_from_av(av_frame: av.VideoFrame, type: VideoBufferType | None = None) -> VideoFrame:
    """A `VideoFrame` of layout ``type`` (default I420) from a PyAV frame of any pixel
    format, colour space and range (hardware frames included), converting with
    libswscale when needed. The pixels are copied; nothing keeps ``av_frame`` alive.

    YUV output is BT.601 limited range whatever the source's tags say; RGB output is
    full range. Raises ValueError for a frame with no pixels.
    """
    target = VideoBufferType.I420 if type is None else VideoBufferType(type)
    fmt = _AV_FORMATS[target]
    # threads=1: swscale's default (one slice per CPU) is no faster at 720p on two cores,
    # and its threaded path to yuv420p10le writes wrong pixels now and then (FFmpeg 8,
    # about one conversion in ten at 33x17).
    if target in _RGB_TYPES:
        converted = av_frame.reformat(format=fmt, threads=1)
    elif av_frame.format.name == fmt and _is_bt601_limited(av_frame):
        converted = av_frame  # already what we want: skip swscale's copy
    else:
        converted = av_frame.reformat(
            format=fmt,
            dst_colorspace=Colorspace.ITU601,
            dst_color_range=ColorRange.MPEG,
            threads=1,
        )
    width = _positive_int("width", converted.width)
    height = _positive_int("height", converted.height)
    layout = _plane_layout(target, width, height)
    buf = bytearray(sum(row_bytes * rows for row_bytes, rows in layout))
    view = memoryview(buf)
    offset = 0
    for plane, (row_bytes, rows) in zip(converted.planes, layout, strict=True):
        size = row_bytes * rows
        _copy_from_plane(plane, view[offset : offset + size], row_bytes, rows)
        offset += size
    return VideoFrame(width, height, target, buf)


def _layout_name(num_channels: int) -> str:
    # "Nc" is FFmpeg's spelling of the default layout for N channels ("6c" is 5.1).
    return {1: "mono", 2: "stereo"}.get(num_channels, f"{num_channels}c")


def _audio_to_av(frame: AudioFrame) -> av.AudioFrame:
    """A PyAV ``s16`` (packed) frame holding a copy of ``frame``'s samples, with layout
    mono / stereo (FFmpeg's default layout for other channel counts) and ``sample_rate``
    set; ``pts`` and ``time_base`` are left for the caller."""
    out = av.AudioFrame(
        format="s16", layout=_layout_name(frame.num_channels), samples=frame.samples_per_channel
    )
    out.sample_rate = frame.sample_rate
    # Slice rather than Plane.update: update insists on the plane's exact buffer size,
    # which FFmpeg may round up.
    memoryview(out.planes[0])[: frame._view.nbytes] = frame._view
    return out


def _audio_from_av(av_frame: av.AudioFrame) -> AudioFrame:
    """An `AudioFrame` from a PyAV audio frame of any sample format (packed or planar)
    and layout, keeping its sample rate and channel count. Non-``s16`` input is
    converted with a one-off ``av.AudioResampler`` (about 0.4 ms of set-up; ``s16`` input,
    what aiortc's Opus decoder gives, is only copied). Raises ValueError for an empty
    frame or one without a sample rate."""
    if av_frame.format.name == "s16":
        parts = [av_frame]
    else:
        resampler = av.AudioResampler(
            format="s16", layout=av_frame.layout, rate=av_frame.sample_rate
        )
        # No rate change, so nothing should stay buffered; flush anyway to be sure.
        parts = resampler.resample(av_frame) + resampler.resample(None)
    return _join_s16(parts, av_frame.sample_rate, av_frame.layout.nb_channels)


def _join_s16(parts: list[av.AudioFrame], sample_rate: int, num_channels: int) -> AudioFrame:
    """One `AudioFrame` from consecutive packed ``s16`` PyAV frames."""
    samples = sum(part.samples for part in parts)
    frame_bytes = _SAMPLE_BYTES * num_channels
    buf = bytearray(frame_bytes * samples)
    view = memoryview(buf)
    offset = 0
    for part in parts:
        # Planes may be longer than the samples in them (FFmpeg pads audio buffers).
        size = frame_bytes * part.samples
        view[offset : offset + size] = memoryview(part.planes[0])[:size]
        offset += size
    return AudioFrame(buf, sample_rate, num_channels, samples)
