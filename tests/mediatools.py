"""Media test helpers: tones, their analysis (FFT), coloured video frames."""

from __future__ import annotations

import math

import numpy as np

import room


def tone(frequency: float, *, sample_rate: int = 48000, num_channels: int = 1,
         ms: int = 10, start: int = 0, amplitude: float = 0.5) -> room.AudioFrame:
    """``ms`` of a sine at ``frequency`` from sample ``start`` (so frames join up)."""
    n = sample_rate * ms // 1000
    t = (np.arange(start, start + n) / sample_rate)
    wave = (np.sin(2 * math.pi * frequency * t) * amplitude * 32767).astype(np.int16)
    pcm = np.repeat(wave, num_channels) if num_channels > 1 else wave
    return room.AudioFrame(pcm.tobytes(), sample_rate, num_channels, n)


def samples(frames: list[room.AudioFrame], channel: int = 0) -> np.ndarray:
    """One channel of ``frames`` as floats in [-1, 1]."""
    if not frames:
        return np.zeros(0)
    ch = frames[0].num_channels
    data = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
    return data[channel::ch].astype(np.float64) / 32768


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


_QUADRANTS = {"top left": (255, 0, 0), "top right": (0, 255, 0),
              "bottom left": (0, 0, 255), "bottom right": (255, 255, 255)}


def quadrants(width: int, height: int) -> room.VideoFrame:
    """An RGBA test picture: red, green / blue, white quadrants."""
    img = np.zeros((height, width, 4), dtype=np.uint8)
    img[..., 3] = 255
    h2, w2 = height // 2, width // 2
    img[:h2, :w2, :3] = _QUADRANTS["top left"]
    img[:h2, w2:, :3] = _QUADRANTS["top right"]
    img[h2:, :w2, :3] = _QUADRANTS["bottom left"]
    img[h2:, w2:, :3] = _QUADRANTS["bottom right"]
    return room.VideoFrame(width, height, room.VideoBufferType.RGBA, img.tobytes())


def quadrant_colours(frame: room.VideoFrame) -> dict[str, tuple[int, int, int]]:
    """The mean RGB of the middle of each quadrant of ``frame`` (any layout)."""
    rgba = frame.convert(room.VideoBufferType.RGBA)
    img = np.frombuffer(rgba.data, dtype=np.uint8).reshape(rgba.height, rgba.width, 4)
    h, w = rgba.height, rgba.width
    out = {}
    top, bottom = slice(h // 8, 3 * h // 8), slice(5 * h // 8, 7 * h // 8)
    left, right = slice(w // 8, 3 * w // 8), slice(5 * w // 8, 7 * w // 8)
    for name, (ys, xs) in {"top left": (top, left), "top right": (top, right),
                           "bottom left": (bottom, left),
                           "bottom right": (bottom, right)}.items():
        mean = img[ys, xs, :3].reshape(-1, 3).mean(axis=0)
        out[name] = (int(mean[0]), int(mean[1]), int(mean[2]))
    return out
