"""Media test helpers: tones, their analysis (FFT), coloured video frames.

The first part is numpy only, on raw bytes (interleaved int16 PCM, RGBA pixels), so that
a process without `room` (tests/interop/official_peer.py, the official SDK) can share it;
the functions below it wrap `room`'s frame types (``room`` is imported on first use).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import room

TONE_AMPLITUDE = 0.5  # of full scale: a sine at -9.03 dBFS (RMS)

# -- numpy only: raw bytes ------------------------------------------------------------


def tone_pcm(frequencies: Sequence[float], n: int, *, sample_rate: int = 48000,
             start: int = 0, amplitude: float = TONE_AMPLITUDE) -> bytes:
    """``n`` samples per channel of interleaved int16 PCM, one sine per channel (at
    ``frequencies[c]``), from sample ``start`` (so consecutive pieces join up)."""
    t = np.arange(start, start + n) / sample_rate
    waves = [(np.sin(2 * math.pi * f * t) * amplitude * 32767).astype(np.int16)
             for f in frequencies]
    return np.stack(waves, axis=1).reshape(-1).tobytes()


def pcm_channel(data: bytes | memoryview, num_channels: int, channel: int = 0
                ) -> np.ndarray:
    """One channel of interleaved int16 PCM as floats in [-1, 1]."""
    pcm = np.frombuffer(data, dtype=np.int16)
    return pcm[channel::num_channels].astype(np.float64) / 32768


def dominant_frequency(x: np.ndarray, sample_rate: int) -> float:
    """The strongest frequency in ``x`` (Hann window, quadratic interpolation)."""
    windowed = x * np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(windowed))
    spectrum[0] = 0
    k = int(np.argmax(spectrum))
    if 0 < k < len(spectrum) - 1:
        a, b, c = np.log(spectrum[k - 1:k + 2] + 1e-12)
        k += 0.5 * (a - c) / (a - 2 * b + c)
    return k * sample_rate / len(x)


def rms_dbfs(x: np.ndarray) -> float:
    return 20 * math.log10(max(float(np.sqrt(np.mean(x ** 2))), 1e-9))


TONE_DBFS = rms_dbfs(pcm_channel(tone_pcm([440.0], 48000), 1))  # about -9.03


def analyse_pcm(data: bytes | memoryview, sample_rate: int, num_channels: int
                ) -> list[dict[str, float]]:
    """Per channel of interleaved int16 PCM: its dominant ``frequency`` and ``dbfs``."""
    out = []
    for c in range(num_channels):
        x = pcm_channel(data, num_channels, c)
        out.append({"frequency": dominant_frequency(x, sample_rate), "dbfs": rms_dbfs(x)})
    return out


QUADRANT_COLOURS = {"top left": (255, 0, 0), "top right": (0, 255, 0),
                    "bottom left": (0, 0, 255), "bottom right": (255, 255, 255)}


def quadrants_rgba(width: int, height: int) -> bytes:
    """The RGBA bytes of the test picture: red, green / blue, white quadrants."""
    img = np.zeros((height, width, 4), dtype=np.uint8)
    img[..., 3] = 255
    h2, w2 = height // 2, width // 2
    img[:h2, :w2, :3] = QUADRANT_COLOURS["top left"]
    img[:h2, w2:, :3] = QUADRANT_COLOURS["top right"]
    img[h2:, :w2, :3] = QUADRANT_COLOURS["bottom left"]
    img[h2:, w2:, :3] = QUADRANT_COLOURS["bottom right"]
    return img.tobytes()


def rgba_quadrant_colours(data: bytes | memoryview, width: int, height: int
                          ) -> dict[str, tuple[int, int, int]]:
    """The mean RGB of the middle of each quadrant of an RGBA picture (rows packed)."""
    img = np.frombuffer(data, dtype=np.uint8)[:width * height * 4].reshape(height, width, 4)
    h, w = height, width
    out = {}
    top, bottom = slice(h // 8, 3 * h // 8), slice(5 * h // 8, 7 * h // 8)
    left, right = slice(w // 8, 3 * w // 8), slice(5 * w // 8, 7 * w // 8)
    for name, (ys, xs) in {"top left": (top, left), "top right": (top, right),
                           "bottom left": (bottom, left),
                           "bottom right": (bottom, right)}.items():
        mean = img[ys, xs, :3].reshape(-1, 3).mean(axis=0)
        out[name] = (int(mean[0]), int(mean[1]), int(mean[2]))
    return out


def colour_error(colours: dict[str, Sequence[int]]) -> int:
    """The largest per-channel difference between ``colours`` and the test picture's."""
    return max(abs(int(g) - w) for name, want in QUADRANT_COLOURS.items()
               for g, w in zip(colours[name], want, strict=True))


# -- `room` frames ----------------------------------------------------------------------


def tone(frequency: float, *, sample_rate: int = 48000, num_channels: int = 1,
         ms: int = 10, start: int = 0, amplitude: float = TONE_AMPLITUDE
         ) -> room.AudioFrame:
    """``ms`` of a sine at ``frequency`` from sample ``start`` (so frames join up)."""
    import room

    n = sample_rate * ms // 1000
    pcm = tone_pcm([frequency] * num_channels, n, sample_rate=sample_rate, start=start,
                   amplitude=amplitude)
    return room.AudioFrame(pcm, sample_rate, num_channels, n)


def samples(frames: list[room.AudioFrame], channel: int = 0) -> np.ndarray:
    """One channel of ``frames`` as floats in [-1, 1]."""
    if not frames:
        return np.zeros(0)
    return pcm_channel(b"".join(bytes(f.data) for f in frames), frames[0].num_channels,
                       channel)


def quadrants(width: int, height: int) -> room.VideoFrame:
    """An RGBA test picture: red, green / blue, white quadrants."""
    import room

    return room.VideoFrame(width, height, room.VideoBufferType.RGBA,
                           quadrants_rgba(width, height))


def quadrant_colours(frame: room.VideoFrame) -> dict[str, tuple[int, int, int]]:
    """The mean RGB of the middle of each quadrant of ``frame`` (any layout)."""
    import room

    rgba = frame.convert(room.VideoBufferType.RGBA)
    return rgba_quadrant_colours(rgba.data, rgba.width, rgba.height)
