"""The pure media layer: audio and video frames, their conversions, and resampling.

No network and no event loop: these are values and computations. Content is checked
numerically (numpy here, never in the library): frequencies by FFT, levels by RMS,
colours per quadrant.
"""

from __future__ import annotations

import math
from typing import Any

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from room.media import AudioFrame, AudioResampler, VideoBufferType, VideoFrame
from room.media.frame import _audio_from_av, _audio_to_av, _video_from_av, _video_to_av
from room.media.resampler import _remix

T = VideoBufferType


# --- audio frames ---------------------------------------------------------------------


def test_audio_frame_data_is_a_zero_copy_int16_view() -> None:
    samples = np.arange(-480, 480, dtype=np.int16)  # 480 stereo sample pairs
    frame = AudioFrame(bytearray(samples.tobytes()), 48000, 2, 480)
    array = np.frombuffer(frame.data, dtype=np.int16)
    assert frame.data.format == "h"
    assert np.array_equal(array, samples)
    array[7] = 12345  # numpy is writing into the frame's own buffer
    assert frame.data[7] == 12345
    frame.data[8] = -321
    assert array[8] == -321


def test_audio_frame_shares_a_writable_buffer_and_copies_a_read_only_one() -> None:
    shared = np.zeros(160, dtype=np.int16)
    # `.data` is the array's own memory (numpy's stubs type arrays as buffers only on 3.12+).
    frame = AudioFrame(shared.data, 16000, 1, 160)
    frame.data[0] = 99
    assert shared[0] == 99

    original = bytes(320)
    copied = AudioFrame(original, 16000, 1, 160)
    copied.data[0] = 99
    assert original == bytes(320)
    assert not copied.data.readonly


def test_audio_frame_create_is_silence_with_the_given_shape() -> None:
    frame = AudioFrame.create(44100, 2, 441)
    assert (frame.sample_rate, frame.num_channels, frame.samples_per_channel) == (44100, 2, 441)
    assert frame.duration == pytest.approx(0.01)
    assert len(frame.data) == 882
    assert not any(frame.data)
    assert "441" in repr(frame) and "\\x00" not in repr(frame) and len(repr(frame)) < 120


def test_audio_frame_rejects_a_wrong_length_stating_expected_and_got() -> None:
    with pytest.raises(ValueError, match=r"must be 1920 bytes.*got 1918"):
        AudioFrame(bytes(1918), 48000, 2, 480)


@pytest.mark.parametrize(
    ("rate", "channels", "samples"), [(0, 1, 10), (48000, 0, 10), (48000, 1, 0), (-1, 1, 10)]
)
def test_audio_frame_rejects_non_positive_shapes(rate: int, channels: int, samples: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        AudioFrame(bytes(20), rate, channels, samples)


@given(
    rate=st.integers(-3, 50000),
    channels=st.integers(-3, 9),
    samples=st.integers(-3, 600),
    length=st.integers(0, 12000),
)
def test_audio_frame_construction_succeeds_exactly_when_the_size_matches(
    rate: int, channels: int, samples: int, length: int
) -> None:
    valid = rate > 0 and channels > 0 and samples > 0 and length == 2 * channels * samples
    try:
        frame = AudioFrame(bytearray(length), rate, channels, samples)
    except ValueError:
        assert not valid
    else:
        assert valid
        assert len(frame.data) == channels * samples


# --- audio resampling -----------------------------------------------------------------


def _sine(rate: int, seconds: float, freq: float, amplitude: float = 0.5) -> np.ndarray[Any, Any]:
    t = np.arange(round(rate * seconds)) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _frames(signal: np.ndarray[Any, Any], rate: int, channels: int = 1) -> list[AudioFrame]:
    """10 ms frames of an interleaved signal."""
    per_frame = rate // 100 * channels
    return [
        AudioFrame(signal[i : i + per_frame].tobytes(), rate, channels, per_frame // channels)
        for i in range(0, len(signal), per_frame)
    ]


def _join(frames: list[AudioFrame]) -> np.ndarray[Any, Any]:
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])


def _dominant_hz(signal: np.ndarray[Any, Any], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal.astype(np.float64) * np.hanning(len(signal))))
    return float(np.argmax(spectrum)) * rate / len(signal)


def _rms_db(signal: np.ndarray[Any, Any]) -> float:
    return 20 * math.log10(float(np.sqrt(np.mean(signal.astype(np.float64) ** 2))))


@pytest.mark.parametrize(("src", "dst"), [(48000, 16000), (16000, 48000), (44100, 48000)])
def test_resampling_a_sine_keeps_its_frequency_level_and_duration(src: int, dst: int) -> None:
    signal = _sine(src, 1.0, 1000)
    resampler = AudioResampler(src, dst)
    out: list[AudioFrame] = []
    for frame in _frames(signal, src):
        out += resampler.push(frame)
    out += resampler.flush()

    assert all(f.sample_rate == dst and f.num_channels == 1 for f in out)
    result = _join(out)
    assert abs(len(result) - dst) <= dst // 100  # one 10 ms frame of filter delay
    # Leave out the filter's start-up and tail when measuring.
    steady = result[dst // 50 : -dst // 50]
    assert _dominant_hz(steady, dst) == pytest.approx(1000, rel=0.01)
    assert abs(_rms_db(steady) - _rms_db(signal)) <= 1.0


def test_resampling_stereo_keeps_each_channel_apart() -> None:
    stereo = np.empty(2 * 48000, dtype=np.int16)
    stereo[0::2] = _sine(48000, 1.0, 1000)
    stereo[1::2] = _sine(48000, 1.0, 3000)
    resampler = AudioResampler(48000, 16000, num_channels=2)
    out: list[AudioFrame] = []
    for frame in _frames(stereo, 48000, channels=2):
        out += resampler.push(frame)
    out += resampler.flush()

    result = _join(out)
    assert all(f.num_channels == 2 for f in out)
    assert _dominant_hz(result[0::2][320:-320], 16000) == pytest.approx(1000, rel=0.01)
    assert _dominant_hz(result[1::2][320:-320], 16000) == pytest.approx(3000, rel=0.01)


def test_resampler_can_take_a_new_stream_after_flush() -> None:
    resampler = AudioResampler(48000, 16000)
    for _ in range(2):
        out: list[AudioFrame] = []
        for frame in _frames(_sine(48000, 0.1, 1000), 48000):
            out += resampler.push(frame)
        out += resampler.flush()
        assert sum(f.samples_per_channel for f in out) == 1600


def test_resampler_with_equal_rates_passes_frames_through() -> None:
    frame = AudioFrame(_sine(16000, 0.01, 1000).tobytes(), 16000, 1, 160)
    resampler = AudioResampler(16000, 16000)
    assert resampler.push(frame) == [frame]
    assert resampler.push(frame)[0] is frame
    assert resampler.flush() == []


@pytest.mark.parametrize(
    "frame", [AudioFrame.create(44100, 1, 441), AudioFrame.create(48000, 2, 480)]
)
def test_resampler_rejects_frames_of_another_rate_or_channel_count(frame: AudioFrame) -> None:
    with pytest.raises(ValueError, match="resampler"):
        AudioResampler(48000, 16000).push(frame)


def test_resampler_rejects_non_positive_rates() -> None:
    with pytest.raises(ValueError):
        AudioResampler(0, 16000)
    with pytest.raises(ValueError):
        AudioResampler(48000, 16000, num_channels=0)


# --- remix ----------------------------------------------------------------------------


def test_remix_mono_to_stereo_duplicates_each_sample() -> None:
    mono = _sine(48000, 0.01, 1000)
    stereo = _remix(AudioFrame(mono.tobytes(), 48000, 1, 480), 2)
    assert (stereo.num_channels, stereo.samples_per_channel, stereo.sample_rate) == (2, 480, 48000)
    samples = np.frombuffer(stereo.data, dtype=np.int16)
    assert np.array_equal(samples[0::2], mono)
    assert np.array_equal(samples[1::2], mono)


def test_remix_stereo_to_mono_averages_the_channels() -> None:
    left = np.arange(-24000, 24000, 100, dtype=np.int16)  # 480 samples
    right = np.full(480, 3001, dtype=np.int16)
    stereo = np.empty(960, dtype=np.int16)
    stereo[0::2], stereo[1::2] = left, right
    for _ in range(3):  # the cached downmixer keeps working and holds nothing back
        mono = _remix(AudioFrame(stereo.tobytes(), 48000, 2, 480), 1)
        assert (mono.num_channels, mono.samples_per_channel) == (1, 480)
        expected = (left.astype(np.int32) + right) / 2
        assert np.max(np.abs(np.frombuffer(mono.data, dtype=np.int16) - expected)) <= 0.5


def test_remix_round_trip_mono_stereo_mono_is_exact() -> None:
    mono = _sine(16000, 0.02, 440, amplitude=0.99)
    back = _remix(_remix(AudioFrame(mono.tobytes(), 16000, 1, 320), 2), 1)
    assert np.array_equal(np.frombuffer(back.data, dtype=np.int16), mono)


def test_remix_to_the_same_channel_count_is_the_same_frame_and_others_are_refused() -> None:
    frame = AudioFrame.create(48000, 2, 480)
    assert _remix(frame, 2) is frame
    with pytest.raises(ValueError, match="mono and stereo"):
        _remix(frame, 6)


# --- audio <-> PyAV -------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "layout"), [(1, "mono"), (2, "stereo")])
def test_audio_to_av_and_back_keeps_samples(channels: int, layout: str) -> None:
    samples = _sine(48000, 0.01 * channels, 700)
    frame = AudioFrame(samples.tobytes(), 48000, channels, 480)
    av_frame = _audio_to_av(frame)
    assert (av_frame.format.name, av_frame.layout.name) == ("s16", layout)
    assert (av_frame.sample_rate, av_frame.samples) == (48000, 480)
    assert np.array_equal(av_frame.to_ndarray().reshape(-1), samples)

    back = _audio_from_av(av_frame)
    assert (back.sample_rate, back.num_channels, back.samples_per_channel) == (48000, channels, 480)
    assert np.array_equal(np.frombuffer(back.data, dtype=np.int16), samples)


def test_audio_from_av_converts_planar_float_to_interleaved_int16() -> None:
    planes = np.stack([np.linspace(-0.5, 0.5, 256), np.full(256, 0.25)]).astype(np.float32)
    av_frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout="stereo")
    av_frame.sample_rate = 24000
    frame = _audio_from_av(av_frame)
    assert (frame.sample_rate, frame.num_channels, frame.samples_per_channel) == (24000, 2, 256)
    samples = np.frombuffer(frame.data, dtype=np.int16)
    assert np.max(np.abs(samples[0::2] - planes[0] * 32767)) <= 1.5
    assert np.max(np.abs(samples[1::2] - planes[1] * 32767)) <= 1.5


# --- video frames ---------------------------------------------------------------------

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
ALL_TYPES = list(VideoBufferType)
PAIR_TYPES = [T.RGBA, T.BGRA, T.ARGB, T.ABGR, T.RGB24, T.I420, T.NV12]
SIZES = [(64, 48), (33, 17), (17, 33), (35, 21)]


def _expected_size(type: VideoBufferType, w: int, h: int) -> int:
    """Written out independently of the library's plane table."""
    cw, ch = math.ceil(w / 2), math.ceil(h / 2)
    return {
        T.RGBA: w * h * 4, T.ABGR: w * h * 4, T.ARGB: w * h * 4, T.BGRA: w * h * 4,
        T.RGB24: w * h * 3,
        T.I420: w * h + 2 * cw * ch,
        T.I420A: 2 * w * h + 2 * cw * ch,
        T.I422: w * h + 2 * cw * h,
        T.I444: 3 * w * h,
        T.I010: 2 * (w * h + 2 * cw * ch),
        T.NV12: w * h + 2 * cw * ch,
    }[type]


def _quadrants(w: int, h: int) -> VideoFrame:
    """RGBA, opaque: red top-left, green top-right, blue bottom-left, white bottom-right."""
    pixels = np.zeros((h, w, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    pixels[: h // 2, : w // 2, :3] = RED
    pixels[: h // 2, w // 2 :, :3] = GREEN
    pixels[h // 2 :, : w // 2, :3] = BLUE
    pixels[h // 2 :, w // 2 :, :3] = WHITE
    return VideoFrame(w, h, T.RGBA, bytearray(pixels.tobytes()))


def _assert_quadrants(frame: VideoFrame, tolerance: int = 8) -> None:
    assert frame.type is T.RGBA
    w, h = frame.width, frame.height
    pixels = np.frombuffer(frame.data, dtype=np.uint8).reshape(h, w, 4).astype(np.int16)
    m = 3  # keep away from the edges between quadrants, where chroma is shared
    interiors = {
        RED: pixels[: h // 2 - m, : w // 2 - m],
        GREEN: pixels[: h // 2 - m, w // 2 + m :],
        BLUE: pixels[h // 2 + m :, : w // 2 - m],
        WHITE: pixels[h // 2 + m :, w // 2 + m :],
    }
    for colour, block in interiors.items():
        assert block.size > 0
        error = np.max(np.abs(block[..., :3] - np.array(colour)))
        assert error <= tolerance, f"{colour} off by {error}"
        assert np.all(block[..., 3] == 255)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("type", ALL_TYPES, ids=lambda t: t.name)
def test_convert_to_each_type_and_back_keeps_the_quadrant_colours(
    type: VideoBufferType, size: tuple[int, int]
) -> None:
    original = _quadrants(*size)
    converted = original.convert(type)
    assert (converted.type, converted.width, converted.height) == (type, *size)
    assert len(converted.data) == _expected_size(type, *size)
    _assert_quadrants(converted.convert(T.RGBA))


@pytest.mark.parametrize("second", PAIR_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("first", PAIR_TYPES, ids=lambda t: t.name)
def test_convert_between_every_pair_keeps_the_quadrant_colours(
    first: VideoBufferType, second: VideoBufferType
) -> None:
    a = _quadrants(33, 17).convert(first)
    b = a.convert(second)
    assert b.type is second and len(b.data) == _expected_size(second, 33, 17)
    # Two chroma subsamplings in a row may blur a little more.
    _assert_quadrants(b.convert(T.RGBA), tolerance=10)


@pytest.mark.parametrize(
    ("type", "expected"),
    [
        (T.RGBA, [10, 20, 30, 40]),
        (T.BGRA, [30, 20, 10, 40]),
        (T.ARGB, [40, 10, 20, 30]),
        (T.ABGR, [40, 30, 20, 10]),
        (T.RGB24, [10, 20, 30]),
    ],
    ids=lambda value: value.name if isinstance(value, VideoBufferType) else "",
)
def test_packed_rgb_types_name_their_byte_order(type: VideoBufferType, expected: list[int]) -> None:
    pixel = VideoFrame(1, 1, T.RGBA, bytes([10, 20, 30, 40]))
    assert list(pixel.convert(type).data) == expected
    back = VideoFrame(1, 1, type, bytes(expected)).convert(T.RGBA)
    assert list(back.data) == [10, 20, 30, 40 if len(expected) == 4 else 255]


@pytest.mark.parametrize(
    ("rgb", "yuv"),
    [
        # BT.601 limited range, as libyuv (WebRTC, LiveKit's converter) computes them.
        ((255, 0, 0), (82, 90, 240)),
        ((0, 255, 0), (145, 54, 34)),
        ((0, 0, 255), (41, 240, 110)),
        ((255, 255, 255), (235, 128, 128)),
        ((0, 0, 0), (16, 128, 128)),
    ],
)
def test_yuv_output_is_bt601_limited_range(rgb: tuple[int, int, int], yuv: tuple[int, ...]) -> None:
    frame = VideoFrame(2, 2, T.RGBA, bytes([*rgb, 255]) * 4)
    i420 = list(frame.convert(T.I420).data)
    assert len(i420) == 6
    y, u, v = i420[0], i420[4], i420[5]
    assert all(p == y for p in i420[:4])
    assert max(abs(y - yuv[0]), abs(u - yuv[1]), abs(v - yuv[2])) <= 2
    nv12 = list(frame.convert(T.NV12).data)
    assert nv12 == [y, y, y, y, u, v]


@pytest.mark.parametrize("type", [T.RGB24, T.RGBA, T.I420], ids=lambda t: t.name)
def test_odd_sized_planes_are_copied_row_by_row_without_padding(type: VideoBufferType) -> None:
    # A grey ramp that differs on every row and column: a stride mistake shifts it.
    w, h = 33, 17
    grey = ((np.arange(w)[None, :] * 5 + np.arange(h)[:, None] * 11) % 200 + 20).astype(np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    frame = VideoFrame(w, h, T.RGBA, bytearray(rgba.tobytes())).convert(type)
    if type is T.I420:
        luma = np.frombuffer(frame.data, dtype=np.uint8)[: w * h].reshape(h, w)
        assert np.max(np.abs(luma - (16 + grey.astype(np.float64) * 219 / 255))) <= 1.5
        chroma = np.frombuffer(frame.data, dtype=np.uint8)[w * h :]
        assert np.max(np.abs(chroma.astype(int) - 128)) <= 1
    back = np.frombuffer(frame.convert(T.RGBA).data, dtype=np.uint8).reshape(h, w, 4)
    assert np.max(np.abs(back[..., :3].astype(int) - grey[..., None])) <= 2


@pytest.mark.parametrize(
    "route",
    [
        [T.BGRA],
        [T.ARGB],
        [T.ABGR],
        [T.I420A],
        [T.BGRA, T.I420A, T.BGRA],
        [T.ARGB, T.I420A, T.ABGR],
        [T.ABGR, T.I420A, T.ARGB],
    ],
    ids=lambda route: "-".join(t.name for t in route),
)
def test_alpha_survives_conversion_exactly(route: list[VideoBufferType]) -> None:
    w, h = 33, 17
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = (np.arange(w * h) % 256).reshape(h, w)
    frame = VideoFrame(w, h, T.RGBA, bytearray(rgba.tobytes()))
    for type in route:
        frame = frame.convert(type)
    back = np.frombuffer(frame.convert(T.RGBA).data, dtype=np.uint8).reshape(h, w, 4)
    assert np.array_equal(back[..., 3], rgba[..., 3])
    assert np.max(np.abs(back[..., :3].astype(int) - 200)) <= 2


def test_convert_to_the_same_type_is_an_independent_copy() -> None:
    frame = _quadrants(8, 8)
    copy = frame.convert(T.RGBA)
    assert bytes(copy.data) == bytes(frame.data)
    copy.data[0] = 7
    assert frame.data[0] == 255


def test_video_frame_data_is_a_shared_writable_byte_view() -> None:
    pixels = np.zeros(4 * 3 * 2, dtype=np.uint8)
    frame = VideoFrame(3, 2, T.RGBA, pixels.data)
    assert frame.data.format == "B" and not frame.data.readonly
    frame.data[5] = 77
    assert pixels[5] == 77
    assert np.shares_memory(np.frombuffer(frame.data, dtype=np.uint8), pixels)
    assert "width=3" in repr(frame) and "RGBA" in repr(frame) and len(repr(frame)) < 100


def test_video_frame_rejects_a_wrong_size_stating_expected_and_got() -> None:
    with pytest.raises(ValueError, match=r"I420 data at 33x17 must be 867 bytes, got 866"):
        VideoFrame(33, 17, T.I420, bytes(866))


@given(
    width=st.integers(-2, 70),
    height=st.integers(-2, 70),
    type=st.sampled_from(ALL_TYPES),
    slack=st.integers(-5, 5) | st.integers(-20000, 20000),
)
def test_video_frame_construction_succeeds_exactly_when_the_size_matches(
    width: int, height: int, type: VideoBufferType, slack: int
) -> None:
    valid_dims = width > 0 and height > 0
    length = max(0, (_expected_size(type, width, height) if valid_dims else 0) + slack)
    try:
        frame = VideoFrame(width, height, type, bytearray(length))
    except ValueError:
        assert not (valid_dims and slack == 0)
    else:
        assert valid_dims and slack == 0
        assert len(frame.data) == length


def test_video_frame_rejects_an_unknown_type() -> None:
    with pytest.raises(ValueError):
        VideoFrame(2, 2, 99, bytes(16))  # type: ignore[arg-type]


# --- video <-> PyAV -------------------------------------------------------------------


@pytest.mark.parametrize("type", ALL_TYPES, ids=lambda t: t.name)
def test_video_to_av_and_back_keeps_every_byte(type: VideoBufferType) -> None:
    w, h = 33, 17
    rng = np.random.default_rng(int(type))
    size = _expected_size(type, w, h)
    if type is T.I010:  # 10-bit samples in little-endian 16-bit words
        data = rng.integers(0, 1024, size // 2).astype("<u2")
    else:
        data = rng.integers(0, 256, size).astype(np.uint8)
    frame = VideoFrame(w, h, type, data.tobytes())
    av_frame = _video_to_av(frame)
    assert (av_frame.width, av_frame.height) == (w, h)
    back = _video_from_av(av_frame, type)
    assert back.type is type
    assert bytes(back.data) == bytes(frame.data)


def test_video_to_av_tags_yuv_as_bt601_limited_range() -> None:
    av_frame = _video_to_av(_quadrants(4, 4).convert(T.I420))
    assert av_frame.format.name == "yuv420p"
    assert av_frame.colorspace == 6  # AVCOL_SPC_SMPTE170M, i.e. BT.601
    assert av_frame.color_range == 1  # AVCOL_RANGE_MPEG, i.e. limited


def test_video_from_av_defaults_to_i420_from_any_pixel_format() -> None:
    rgb = np.zeros((17, 33, 3), dtype=np.uint8)
    rgb[...] = RED
    frame = _video_from_av(av.VideoFrame.from_ndarray(rgb, format="rgb24"))
    assert (frame.type, frame.width, frame.height) == (T.I420, 33, 17)
    y, u, v = frame.data[0], frame.data[33 * 17], frame.data[33 * 17 + 17 * 9]
    assert max(abs(y - 82), abs(u - 90), abs(v - 240)) <= 2


def test_video_from_av_reads_the_source_colour_tags() -> None:
    # Red as BT.709 limited range codes it; a decoder would tag such a frame BT.709.
    av_frame = av.VideoFrame(4, 4, "yuv420p")
    for plane, value in zip(av_frame.planes, (63, 102, 240), strict=True):
        plane.update(bytes([value]) * plane.buffer_size)
    av_frame.colorspace = 1  # AVCOL_SPC_BT709
    av_frame.color_range = 1
    i420 = _video_from_av(av_frame)
    assert max(abs(i420.data[0] - 82), abs(i420.data[16] - 90), abs(i420.data[20] - 240)) <= 3
    rgba = _video_from_av(av_frame, T.RGBA)
    assert max(abs(a - b) for a, b in zip(rgba.data[:3], RED, strict=True)) <= 8
