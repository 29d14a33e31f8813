"""Media through one server, room against the official SDK: CPU per track, latency, RSS.

    python -m bench.media [--server dev|livekit] [--seconds 20] [--tracks 4]
                          [--rss-seconds 60] [--clicks 20] [--backend asyncio|trio|both]
                          [--timeout S]

Four measurements ("phases"), each in a worker subprocess of its own per column (room on
asyncio, room on Trio, the official SDK ``livekit.rtc``), all through ONE server in a
network namespace (``--server dev``: ``python -m room serve``; ``--server livekit``: the
pinned livekit-server; the machinery is bench/_harness.py's):

publish
    The worker joins and publishes ``--tracks`` 48 kHz mono tones (440, 550, 660, ... Hz,
    one second of PCM computed once and fed in a loop, paced by the sources' default
    1 s queues). A peer process -- the official SDK, the same for every column, whose CPU
    is not counted -- subscribes to them and reads each with an audio stream, so that the
    server forwards them. Once the peer hears every track, the worker's CPU time
    (``getrusage(RUSAGE_SELF)``: every thread, the official SDK's Rust and libwebrtc
    threads included) is taken over ``--seconds``: CPU seconds per track per second, as %
    of one core. The peer checks what it got in that window: 10 ms frames per second per
    track (100 expected) and each tone's frequency (FFT of 1 s, within 1 %).
subscribe
    The reverse: a peer process publishes ``--tracks`` tones from one participant -- `room`
    on asyncio, the same for every column, not counted (chosen while the dev server could
    not receive an official SDK's tracks whole, see `_run_peer`); the worker joins first, so each
    track reaches it in a negotiation of its own, subscribes and reads each with an audio
    stream (48 kHz mono, 10 ms frames); its CPU per track over ``--seconds``, the frames
    per second per track and each tone's frequency.
latency
    Two participants of the same implementation in the worker. The talker captures 10 ms
    frames paced by the wall clock (so the capture time is the time it would be played),
    into a source with a 50 ms queue: silence, and every 500 ms a 10 ms 1 kHz click at half
    full scale. The listener reads the track with an audio stream (48 kHz, 10 ms) and
    takes the first frame over a tenth of full scale after 100 ms of quiet as a click's
    onset: latency = when that frame was read - when the click's frame was captured.
    The first 2 s are skipped; median and p95 over ``--clicks`` clicks.
rss
    Two participants of the same implementation in the worker, each publishing a tone and a
    320x240 test picture at 15 fps and reading the other's audio and video streams, for
    ``--rss-seconds``: the worker's RSS every 5 s (VmRSS), from 5 s after every stream has
    its first frame. Start, end, growth, and growth per minute.

Each phase's worker prints one JSON line; a failed one says why in the table's footer
(never a traceback). Everything is bounded: each wait in a worker, each worker (killed
after its timeout) and the whole run (``--timeout``). A peer exits when its worker's pipe
closes, or after its own deadline.

Only the standard library, numpy and tests/mediatools.py (numpy) are imported at the top:
an official-SDK worker or peer loads neither anyio nor `room`, which would weigh in its
memory; `room`, anyio and bench/_harness.py (which loads the dev server for its tokens)
are imported where they are used, and the orchestrator hands the workers their tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

import numpy as np

from tests.mediatools import dominant_frequency, pcm_channel, quadrants_rgba, tone_pcm

if TYPE_CHECKING:
    from bench._harness import Column

ROOT = Path(__file__).resolve().parent.parent
RATE = 48000
FRAME = RATE // 100  # 10 ms
PHASES = ("publish", "subscribe", "latency", "rss")
IDENTITIES = {"publish": ("worker", "peer"), "subscribe": ("worker", "peer"),
              "latency": ("talker", "listener"), "rss": ("alice", "bob")}

SEE_TIMEOUT = 30.0  # tracks subscribed and frames flowing (livekit-server: a few s more)
CONNECT_TIMEOUT = 20.0
LATENCY_QUEUE_MS = 50
CLICK_EVERY = 50  # frames: 500 ms
CLICK_THRESHOLD = 32767 // 10
QUIET_FRAMES = 10  # 100 ms of quiet before an onset
LATENCY_SKIP = 2.0
VIDEO = (320, 240, 15.0)
RSS_EVERY = 5.0
WARM_FRAMES = 50  # frames each stream reads before a window starts (jitter buffers settle)


def _freqs(n: int) -> list[float]:
    return [440.0 + 110.0 * i for i in range(n)]


def _freq_of(name: str) -> float:
    return float(name.rsplit("-", 1)[1])


def _tone_second(frequency: float) -> list[bytes]:
    """One second of ``frequency`` as 100 frames of 10 ms (an integer number of cycles
    when ``frequency`` is a whole number: the frames loop without a click)."""
    pcm = tone_pcm([frequency], RATE)
    step = FRAME * 2
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _proc_cpu(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _waited() -> float:
    total = 0.0
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1]) / 1e9
    return total


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- what a phase needs from its runtime and its client library -----------------------------


class _Tasks(Protocol):
    """Background tasks, all cancelled when the block is left."""

    def start(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> bool | None: ...


class _AsyncioTasks:
    def __init__(self) -> None:
        self._tg = asyncio.TaskGroup()
        self._tasks: list[asyncio.Task[Any]] = []

    def start(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        async def run() -> None:
            await fn(*args)
        self._tasks.append(self._tg.create_task(run()))

    async def __aenter__(self) -> Self:
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        for t in self._tasks:
            t.cancel()
        await self._tg.__aexit__(et, e, tb)
        return None


class _AnyioTasks:
    def __init__(self) -> None:
        import anyio

        self._tg = anyio.create_task_group()

    def start(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        self._tg.start_soon(fn, *args)

    async def __aenter__(self) -> Self:
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(et, e, tb)


@dataclass(frozen=True)
class _Runtime:
    sleep: Callable[[float], Awaitable[Any]]
    tasks: Callable[[], _Tasks]


class _Impl(Protocol):
    """A client library, as the phases use it. The loops that run per frame (feeding,
    reading) are its own, written as a user of that library would write them."""

    def connect(self, url: str, token: str) -> AbstractAsyncContextManager[Any]: ...
    def audio_source(self, queue_ms: int | None) -> Any: ...
    def audio_frame(self, pcm: bytes) -> Any: ...
    async def capture_audio(self, source: Any, frame: Any) -> None: ...
    async def feed_audio(self, source: Any, frames: Sequence[Any]) -> None: ...
    def video_source(self, width: int, height: int) -> Any: ...
    def video_frame(self, width: int, height: int, rgba: bytes) -> Any: ...
    def capture_video(self, source: Any, frame: Any) -> None: ...
    async def publish(self, r: Any, name: str, source: Any) -> None: ...
    def remote_tracks(self, r: Any, video: bool) -> list[tuple[str, Any]]: ...
    async def read_audio(self, track: Any, sink: Callable[[memoryview], None]) -> None: ...
    async def read_video(self, track: Any, sink: Callable[[], None]) -> None: ...


class _RoomImpl:
    def __init__(self) -> None:
        import room

        self.room = room

    def connect(self, url: str, token: str) -> AbstractAsyncContextManager[Any]:
        return self.room.Room.connect(url, token)

    def audio_source(self, queue_ms: int | None) -> Any:
        if queue_ms is None:
            return self.room.AudioSource(RATE, 1)
        return self.room.AudioSource(RATE, 1, queue_size_ms=queue_ms)

    def audio_frame(self, pcm: bytes) -> Any:
        return self.room.AudioFrame(pcm, RATE, 1, len(pcm) // 2)

    async def capture_audio(self, source: Any, frame: Any) -> None:
        await source.capture_frame(frame)

    async def feed_audio(self, source: Any, frames: Sequence[Any]) -> None:
        while True:
            for frame in frames:
                await source.capture_frame(frame)

    def video_source(self, width: int, height: int) -> Any:
        return self.room.VideoSource(width, height)

    def video_frame(self, width: int, height: int, rgba: bytes) -> Any:
        return self.room.VideoFrame(width, height, self.room.VideoBufferType.RGBA, rgba)

    def capture_video(self, source: Any, frame: Any) -> None:
        source.capture_frame(frame)

    async def publish(self, r: Any, name: str, source: Any) -> None:
        room = self.room
        if isinstance(source, room.AudioSource):
            track = room.LocalAudioTrack.create_audio_track(name, source)
            ts = room.TrackSource.MICROPHONE
        else:
            track = room.LocalVideoTrack.create_video_track(name, source)
            ts = room.TrackSource.CAMERA
        await r.local_participant.publish_track(track, room.TrackPublishOptions(source=ts))

    def remote_tracks(self, r: Any, video: bool) -> list[tuple[str, Any]]:
        kind = self.room.TrackKind.VIDEO if video else self.room.TrackKind.AUDIO
        return [(pub.name, pub.track) for p in r.remote_participants.values()
                for pub in p.track_publications.values()
                if pub.kind is kind and pub.track is not None]

    async def read_audio(self, track: Any, sink: Callable[[memoryview], None]) -> None:
        async with self.room.AudioStream(track, sample_rate=RATE, num_channels=1) as stream:
            async for frame in stream:
                sink(frame.data)

    async def read_video(self, track: Any, sink: Callable[[], None]) -> None:
        async with self.room.VideoStream(track) as stream:
            async for _ in stream:
                sink()


class _OfficialImpl:
    def __init__(self) -> None:
        from livekit import rtc

        self.rtc = rtc

    @contextlib.asynccontextmanager
    async def _connect(self, url: str, token: str) -> AsyncIterator[Any]:
        r = self.rtc.Room()
        await asyncio.wait_for(r.connect(url, token), CONNECT_TIMEOUT)
        try:
            yield r
        finally:
            await asyncio.wait_for(r.disconnect(), 10)

    def connect(self, url: str, token: str) -> AbstractAsyncContextManager[Any]:
        return self._connect(url, token)

    def audio_source(self, queue_ms: int | None) -> Any:
        if queue_ms is None:
            return self.rtc.AudioSource(RATE, 1)
        return self.rtc.AudioSource(RATE, 1, queue_size_ms=queue_ms)

    def audio_frame(self, pcm: bytes) -> Any:
        return self.rtc.AudioFrame(pcm, RATE, 1, len(pcm) // 2)

    async def capture_audio(self, source: Any, frame: Any) -> None:
        await source.capture_frame(frame)

    async def feed_audio(self, source: Any, frames: Sequence[Any]) -> None:
        while True:
            for frame in frames:
                await source.capture_frame(frame)

    def video_source(self, width: int, height: int) -> Any:
        return self.rtc.VideoSource(width, height)

    def video_frame(self, width: int, height: int, rgba: bytes) -> Any:
        return self.rtc.VideoFrame(width, height, self.rtc.VideoBufferType.RGBA, rgba)

    def capture_video(self, source: Any, frame: Any) -> None:
        source.capture_frame(frame)

    async def publish(self, r: Any, name: str, source: Any) -> None:
        rtc = self.rtc
        if isinstance(source, rtc.AudioSource):
            track = rtc.LocalAudioTrack.create_audio_track(name, source)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        else:
            track = rtc.LocalVideoTrack.create_video_track(name, source)
            # One layer, as room sends (aiortc has no simulcast).
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA,
                                              simulcast=False)
        await asyncio.wait_for(r.local_participant.publish_track(track, options), 20)

    def remote_tracks(self, r: Any, video: bool) -> list[tuple[str, Any]]:
        kind = self.rtc.TrackKind.KIND_VIDEO if video else self.rtc.TrackKind.KIND_AUDIO
        return [(pub.name, pub.track) for p in r.remote_participants.values()
                for pub in p.track_publications.values()
                if pub.kind == kind and pub.track is not None]

    async def read_audio(self, track: Any, sink: Callable[[memoryview], None]) -> None:
        stream = self.rtc.AudioStream(track, sample_rate=RATE, num_channels=1,
                                      frame_size_ms=10)
        try:
            async for event in stream:
                sink(event.frame.data)
        finally:
            await stream.aclose()

    async def read_video(self, track: Any, sink: Callable[[], None]) -> None:
        stream = self.rtc.VideoStream(track)
        try:
            async for _ in stream:
                sink()
        finally:
            await stream.aclose()


def _official() -> tuple[_Impl, _Runtime]:
    return _OfficialImpl(), _Runtime(asyncio.sleep, _AsyncioTasks)


def _room() -> tuple[_Impl, _Runtime]:
    import anyio

    return _RoomImpl(), _Runtime(anyio.sleep, _AnyioTasks)


# -- pieces of the phases --------------------------------------------------------------------


async def _until(rt: _Runtime, ready: Callable[[], bool], within: float,
                 what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + within
    while not ready():
        if time.monotonic() > deadline:
            said = what if isinstance(what, str) else what()
            raise TimeoutError(f"{said} not within {within:.0f} s")
        await rt.sleep(0.02)


async def _tracks(rt: _Runtime, impl: _Impl, r: Any, n: int, video: bool = False
                  ) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []

    def enough() -> bool:
        nonlocal found
        found = impl.remote_tracks(r, video)
        return len(found) >= n
    await _until(rt, enough, SEE_TIMEOUT, f"{n} subscribed {'video' if video else 'audio'} "
                 f"track(s) (have {len(found)})")
    return sorted(found, key=lambda t: str(t[0]))[:n]


class _Tally:
    """Counts a stream's frames; from `start` on, keeps its first second (FFT)."""

    def __init__(self) -> None:
        self.count = 0
        self.at_start = 0
        self.collecting = False
        self.chunk: list[bytes] = []

    def __call__(self, data: memoryview | None = None) -> None:
        self.count += 1
        if self.collecting and data is not None:
            self.chunk.append(bytes(data))
            if len(self.chunk) == 100:
                self.collecting = False

    def start(self, keep: bool = True) -> None:
        self.at_start = self.count
        self.collecting = keep

    def since_start(self) -> int:
        return self.count - self.at_start

    def frequency(self) -> float | None:
        if len(self.chunk) < 50:
            return None
        return dominant_frequency(pcm_channel(b"".join(self.chunk), 1), RATE)


def _audio_checks(prefix: str, fps: dict[str, float], heard: dict[str, float | None]
                  ) -> dict[str, float | str]:
    """The frames-per-second and tone rows of a CPU phase, and a note if a check fails."""
    out: dict[str, float | str] = {f"{prefix}_fps_min": min(fps.values()),
                                   f"{prefix}_fps_max": max(fps.values())}
    errors = {name: (abs(f - _freq_of(name)) / _freq_of(name) * 100 if f else math.inf)
              for name, f in heard.items()}
    if all(math.isfinite(e) for e in errors.values()):
        out[f"{prefix}_freq_err_pct"] = max(errors.values())
    problems = [f"{n}: {v:.1f} frames/s" for n, v in fps.items() if v < 95]
    problems += [f"{n}: heard {heard[n] or 0:.1f} Hz" for n, e in errors.items() if e > 1.0]
    if problems:
        out[f"{prefix}_check"] = "FAILED: " + "; ".join(problems)
    return out


class _Peer:
    """The other side of a CPU phase: ``python -m bench.media --peer ...`` (official SDK),
    started by the worker in its namespace; JSON lines out, words in."""

    def __init__(self, role: str, url: str, tokens: list[str], tracks: int,
                 max_seconds: float) -> None:
        self._err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.media", "--peer", role, url,
             *(a for t in tokens for a in ("--token", t)),
             "--tracks", str(tracks), "--max-seconds", str(int(max_seconds))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
            cwd=ROOT)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _last_error_line(self) -> str:
        self._err.seek(0)
        lines = [ln.strip() for ln in self._err.readlines() if ln.strip()]
        return lines[-1] if lines else "(nothing on stderr)"

    async def expect(self, rt: _Runtime, key: str, within: float) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"peer: no {key!r} within {within:.0f} s") from None
                await rt.sleep(0.02)
                continue
            if line is None:
                code = self.proc.wait(5)
                raise RuntimeError(f"peer exited ({code}): {self._last_error_line()}")
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "error" in msg:
                raise RuntimeError(f"peer: {msg['error']}")
            if key in msg:
                return dict(msg)

    def send(self, word: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()

    def cpu(self) -> float | None:
        return _proc_cpu(self.proc.pid)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._err.close()


@dataclass
class _Window:
    """CPU of this process, of the server and of the peer over a measurement window."""

    server_pid: int | None
    peer: _Peer | None
    t: float = 0.0
    own: float = 0.0
    server: float | None = None
    peer_cpu: float | None = None

    def __post_init__(self) -> None:
        self.t = time.perf_counter()
        self.own = _own_cpu()
        self.server = _proc_cpu(self.server_pid) if self.server_pid else None
        self.peer_cpu = self.peer.cpu() if self.peer else None

    def results(self, prefix: str, tracks: int) -> dict[str, float | str]:
        end = _Window(self.server_pid, self.peer)
        wall = end.t - self.t
        out: dict[str, float | str] = {
            f"{prefix}_cpu_pct": (end.own - self.own) / tracks / wall * 100,
            f"{prefix}_window_s": wall}
        if self.server is not None and end.server is not None:
            out[f"{prefix}_server_pct"] = (end.server - self.server) / tracks / wall * 100
        if self.peer_cpu is not None and end.peer_cpu is not None:
            out[f"{prefix}_peer_pct"] = (end.peer_cpu - self.peer_cpu) / tracks / wall * 100
        return out


@dataclass
class _Args:
    url: str
    tokens: dict[str, str]
    seconds: float
    tracks: int
    rss_seconds: float
    clicks: int
    server_pid: int | None


# -- the phases ----------------------------------------------------------------------------


async def phase_publish(impl: _Impl, rt: _Runtime, a: _Args) -> dict[str, float | str]:
    peer = _Peer("listen", a.url, [a.tokens["peer"]], a.tracks, a.seconds + 90)
    try:
        async with impl.connect(a.url, a.tokens["worker"]) as r, rt.tasks() as tasks:
            for f in _freqs(a.tracks):
                source = impl.audio_source(None)
                frames = [impl.audio_frame(pcm) for pcm in _tone_second(f)]
                tasks.start(impl.feed_audio, source, frames)
                await impl.publish(r, f"tone-{f:g}", source)
            await peer.expect(rt, "ready", SEE_TIMEOUT + 10)
            peer.send("start")
            window = _Window(a.server_pid, peer)
            await rt.sleep(a.seconds)
            out = window.results("pub", a.tracks)
            peer.send("stop")
            got = await peer.expect(rt, "result", 20)
        out.update(_audio_checks("pub", got["result"]["fps"], got["result"]["heard"]))
        return out
    finally:
        peer.close()


async def phase_subscribe(impl: _Impl, rt: _Runtime, a: _Args) -> dict[str, float | str]:
    async with impl.connect(a.url, a.tokens["worker"]) as r, rt.tasks() as tasks:
        peer = _Peer("talk", a.url, [a.tokens["peer"]], a.tracks, a.seconds + 90)
        try:
            await peer.expect(rt, "ready", SEE_TIMEOUT + 10)
            tallies = {}
            for name, track in await _tracks(rt, impl, r, a.tracks):
                tallies[str(name)] = tally = _Tally()
                tasks.start(impl.read_audio, track, tally)
            await _until(rt, lambda: all(t.count >= WARM_FRAMES for t in tallies.values()),
                         SEE_TIMEOUT, lambda: "frames on every subscribed track (have " +
                         ", ".join(f"{n} {t.count}" for n, t in tallies.items()) + ")")
            for t in tallies.values():
                t.start()
            window = _Window(a.server_pid, peer)
            await rt.sleep(a.seconds)
            out = window.results("sub", a.tracks)
            counts = {n: t.since_start() for n, t in tallies.items()}
            wall = float(out["sub_window_s"])
        finally:
            peer.close()
    out.update(_audio_checks("sub", {n: c / wall for n, c in counts.items()},
                             {n: t.frequency() for n, t in tallies.items()}))
    return out


class _Clicks:
    """The listener's side of the latency phase: finds each click's onset and matches it
    to the latest click captured before it."""

    def __init__(self, captured: list[float]) -> None:
        self.captured = captured  # perf_counter() of each click frame's capture
        self.quiet = 0
        self.first: float | None = None
        self.latencies: list[float] = []
        self.late = 0  # onsets more than one click period after their click (not counted)

    def __call__(self, data: memoryview) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        peak = int(np.abs(np.frombuffer(data, dtype=np.int16).astype(np.int32)).max())
        if peak <= CLICK_THRESHOLD:
            self.quiet += 1
            return
        if self.quiet >= QUIET_FRAMES and now > self.first + LATENCY_SKIP:
            i = bisect.bisect_right(self.captured, now) - 1
            if i >= 0:
                latency = now - self.captured[i]
                if latency < CLICK_EVERY / 100:
                    self.latencies.append(latency)
                else:
                    self.late += 1
        self.quiet = 0


async def _talk_clicks(impl: _Impl, rt: _Runtime, source: Any, captured: list[float]
                       ) -> None:
    """10 ms frames at wall-clock times: silence, a 1 kHz click every 500 ms."""
    click = impl.audio_frame(tone_pcm([1000.0], FRAME))
    silence = impl.audio_frame(bytes(FRAME * 2))
    started = time.perf_counter()
    k = 0
    while True:
        delay = started + k * 0.01 - time.perf_counter()
        if delay > 0:
            await rt.sleep(delay)
        if k % CLICK_EVERY == 0:
            captured.append(time.perf_counter())
            await impl.capture_audio(source, click)
        else:
            await impl.capture_audio(source, silence)
        k += 1


async def phase_latency(impl: _Impl, rt: _Runtime, a: _Args) -> dict[str, float | str]:
    async with impl.connect(a.url, a.tokens["listener"]) as listener, \
            impl.connect(a.url, a.tokens["talker"]) as talker, rt.tasks() as tasks:
        source = impl.audio_source(LATENCY_QUEUE_MS)
        captured: list[float] = []
        tasks.start(_talk_clicks, impl, rt, source, captured)
        await impl.publish(talker, "clicks", source)
        [(_, track)] = await _tracks(rt, impl, listener, 1)
        clicks = _Clicks(captured)
        tasks.start(impl.read_audio, track, clicks)
        budget = SEE_TIMEOUT + LATENCY_SKIP + a.clicks * CLICK_EVERY / 100 * 2
        try:
            await _until(rt, lambda: len(clicks.latencies) >= a.clicks, budget,
                         f"{a.clicks} clicks heard")
        except TimeoutError as exc:
            if len(clicks.latencies) < 5:
                raise TimeoutError(f"{exc}: {len(clicks.latencies)} heard of "
                                   f"{len(captured)} sent") from None
    lat = sorted(clicks.latencies[:a.clicks])
    out: dict[str, float | str] = {
        "lat_p50_ms": statistics.median(lat) * 1000,
        "lat_p95_ms": lat[max(math.ceil(0.95 * len(lat)) - 1, 0)] * 1000,
        "lat_min_ms": lat[0] * 1000, "lat_clicks": len(lat)}
    if clicks.late or len(lat) < a.clicks:
        out["lat_check"] = (f"{len(lat)} clicks heard of {a.clicks} wanted, {clicks.late} "
                            "onsets more than 500 ms after their click")
    return out


async def _show(impl: _Impl, rt: _Runtime, source: Any, frame: Any, fps: float) -> None:
    started = time.perf_counter()
    k = 0
    while True:
        impl.capture_video(source, frame)
        k += 1
        delay = started + k / fps - time.perf_counter()
        if delay > 0:
            await rt.sleep(delay)


async def phase_rss(impl: _Impl, rt: _Runtime, a: _Args) -> dict[str, float | str]:
    width, height, fps = VIDEO
    picture = quadrants_rgba(width, height)
    async with impl.connect(a.url, a.tokens["alice"]) as alice, \
            impl.connect(a.url, a.tokens["bob"]) as bob, rt.tasks() as tasks:
        for r, f in ((alice, 440.0), (bob, 660.0)):
            audio = impl.audio_source(None)
            tasks.start(impl.feed_audio, audio,
                        [impl.audio_frame(pcm) for pcm in _tone_second(f)])
            await impl.publish(r, f"tone-{f:g}", audio)
            video = impl.video_source(width, height)
            tasks.start(_show, impl, rt, video, impl.video_frame(width, height, picture), fps)
            await impl.publish(r, "picture", video)
        tallies: dict[str, _Tally] = {}
        for who, r in (("alice", alice), ("bob", bob)):
            [(_, heard)] = await _tracks(rt, impl, r, 1)
            [(_, seen)] = await _tracks(rt, impl, r, 1, video=True)
            tallies[f"{who} audio"] = tally = _Tally()
            tasks.start(impl.read_audio, heard, tally)
            tallies[f"{who} video"] = tally = _Tally()
            tasks.start(impl.read_video, seen, tally)
        await _until(rt, lambda: all(t.count for t in tallies.values()), SEE_TIMEOUT,
                     lambda: "frames on all four streams (have " + ", ".join(
                         f"{n} {t.count}" for n, t in tallies.items()) + ")")
        started = time.perf_counter()
        samples: list[tuple[float, float]] = []
        k = 1
        while k * RSS_EVERY <= a.rss_seconds:
            await rt.sleep(max(started + k * RSS_EVERY - time.perf_counter(), 0))
            samples.append((time.perf_counter(), _rss_mib()))
            if k == 1:
                for t in tallies.values():
                    t.start(keep=False)
            k += 1
        rates = {n: t.since_start() / (samples[-1][0] - samples[0][0])
                 for n, t in tallies.items()} if len(samples) > 1 else {}
    if len(samples) < 2:
        raise ValueError(f"--rss-seconds {a.rss_seconds:g} gives fewer than 2 samples")
    (t0, start), (t1, end) = samples[0], samples[-1]
    out: dict[str, float | str] = {
        "rss_start": start, "rss_end": end, "rss_peak": max(s for _, s in samples),
        "rss_growth": end - start, "rss_per_min": (end - start) / (t1 - t0) * 60,
        "rss_audio_fps": min(v for n, v in rates.items() if "audio" in n),
        "rss_video_fps": min(v for n, v in rates.items() if "video" in n),
        "rss_samples": " ".join(f"{s:.0f}" for _, s in samples) + " MiB"}
    return out


_Result = dict[str, float | str]
PHASE_FNS: dict[str, Callable[[_Impl, _Runtime, _Args], Coroutine[Any, Any, _Result]]] = {
    "publish": phase_publish, "subscribe": phase_subscribe, "latency": phase_latency,
    "rss": phase_rss}


# -- the peer (official SDK, both CPU phases) -----------------------------------------------


async def _peer(impl: _Impl, rt: _Runtime, role: str, url: str, tokens: list[str],
                tracks: int) -> None:
    """``talk``: publish ``tracks`` tones (spread over one participant per token);
    ``listen``: one participant reading ``tracks`` tones."""
    words: queue.Queue[str | None] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            words.put(line.strip())
        words.put(None)
    threading.Thread(target=read_stdin, daemon=True).start()

    async def next_word() -> str | None:
        while True:
            try:
                return words.get_nowait()
            except queue.Empty:
                await rt.sleep(0.02)

    def say(**msg: Any) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    if role == "talk":
        async with contextlib.AsyncExitStack() as stack:
            rooms = [await stack.enter_async_context(impl.connect(url, t)) for t in tokens]
            tasks = await stack.enter_async_context(rt.tasks())
            for i, f in enumerate(_freqs(tracks)):
                r = rooms[i % len(rooms)]
                source = impl.audio_source(None)
                tasks.start(impl.feed_audio, source,
                            [impl.audio_frame(pcm) for pcm in _tone_second(f)])
                await impl.publish(r, f"tone-{f:g}", source)
            say(ready=True)
            while await next_word() not in (None, "stop"):
                pass
        return
    async with impl.connect(url, tokens[0]) as r, rt.tasks() as tasks:
        tallies = {}
        for name, track in await _tracks(rt, impl, r, tracks):
            tallies[str(name)] = tally = _Tally()
            tasks.start(impl.read_audio, track, tally)
        await _until(rt, lambda: all(t.count >= WARM_FRAMES for t in tallies.values()),
                     SEE_TIMEOUT, lambda: "frames on every track (have " +
                     ", ".join(f"{n} {t.count}" for n, t in tallies.items()) + ")")
        say(ready=True)
        while (word := await next_word()) not in (None, "start"):
            pass
        if word is None:
            return
        for t in tallies.values():
            t.start()
        started = time.perf_counter()
        while await next_word() not in (None, "stop"):
            pass
        wall = time.perf_counter() - started
        say(result={"fps": {n: t.since_start() / wall for n, t in tallies.items()},
                    "heard": {n: t.frequency() for n, t in tallies.items()}})


def _run_peer(args: argparse.Namespace) -> None:
    """The listener is the official SDK, the talker is `room` (asyncio). The talker was
    chosen while the dev server received only the first m-line of a kind in each of an
    official-SDK publisher's offers (aiortc's balanced bundle policy, fixed in 1fce129);
    it stays the same for every column so that the columns compare."""
    code = 0
    try:
        if args.peer == "listen":
            impl, rt = _official()

            async def bounded() -> None:
                await asyncio.wait_for(_peer(impl, rt, args.peer, args.url, args.token,
                                             args.tracks), args.max_seconds)
            asyncio.run(bounded())
        else:
            import anyio

            impl, rt = _room()

            async def bounded_anyio() -> None:
                with anyio.fail_after(args.max_seconds):
                    await _peer(impl, rt, args.peer, args.url, args.token, args.tracks)
            anyio.run(bounded_anyio)
    except BaseException as exc:
        sys.stdout.write(json.dumps({"error": _describe(exc)}) + "\n")
        code = 1
    sys.stdout.flush()
    os._exit(code)


# -- the worker: one JSON line (the format of bench._harness.worker_line) --------------------


def _run_worker(args: argparse.Namespace) -> None:
    a = _Args(args.url, json.loads(args.tokens), args.seconds, args.tracks, args.rss_seconds,
              args.clicks, args.server_pid)
    fn = PHASE_FNS[args.phase]
    line: dict[str, Any]
    try:
        if args.worker == "official":
            impl, rt = _official()
            result = asyncio.run(fn(impl, rt, a))
        else:
            import anyio

            impl, rt = _room()
            result = anyio.run(fn, impl, rt, a, backend=args.backend)
        line = {"ok": True, "result": result}
    except BaseException as exc:  # said in the JSON line, no traceback
        line = {"ok": False, "error": _describe(exc)}
    line["waited"] = _waited()
    sys.stdout.write("\n" + json.dumps(line) + "\n")
    sys.stdout.flush()
    os._exit(0 if line["ok"] else 1)  # no lingering threads at interpreter exit


# -- the orchestrator ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    label: str
    unit: str
    key: str
    digits: int = 1
    ratio: bool = True


ROWS = (
    _Row("CPU per published audio track", "% core", "pub_cpu_pct", 2),
    _Row("  peer got, per track (min)", "frames/s", "pub_fps_min", 1, False),
    _Row("  peer heard the tone, worst error", "%", "pub_freq_err_pct", 2, False),
    _Row("  server CPU per track meanwhile", "% core", "pub_server_pct", 2, False),
    _Row("CPU per subscribed audio track", "% core", "sub_cpu_pct", 2),
    _Row("  frames read, per track (min)", "frames/s", "sub_fps_min", 1, False),
    _Row("  tone heard, worst error", "%", "sub_freq_err_pct", 2, False),
    _Row("  server CPU per track meanwhile", "% core", "sub_server_pct", 2, False),
    _Row("mouth-to-ear latency p50", "ms", "lat_p50_ms", 1),
    _Row("mouth-to-ear latency p95", "ms", "lat_p95_ms", 1),
    _Row("  clicks measured", "", "lat_clicks", 0, False),
    _Row("RSS 5 s into the call", "MiB", "rss_start", 1),
    _Row("RSS at the end", "MiB", "rss_end", 1),
    _Row("RSS growth", "MiB", "rss_growth", 1, False),
    _Row("RSS growth per minute", "MiB/min", "rss_per_min", 2, False),
    _Row("  audio read, per stream (min)", "frames/s", "rss_audio_fps", 1, False),
    _Row("  video read, per stream (min)", "frames/s", "rss_video_fps", 1, False),
)


def _table(columns: Sequence[Column], rows: Sequence[_Row]) -> str:
    """One line per row, one cell per column, then room/official ratios (rows where a
    ratio means something: the measurements, not their checks)."""
    official = next((c for c in columns if c.name == "official" and c.result), None)
    rooms = [c for c in columns if c.name != "official"] if official else []
    header = ["", "unit", *(c.name for c in columns),
              *(f"{c.name.split('/')[-1]}/official" for c in rooms)]
    body: list[list[str]] = []
    for row in rows:
        cells = [row.label, row.unit]
        for c in columns:
            v = c.result.get(row.key) if c.result else None
            cells.append("-" if v is None else f"{v:,.{row.digits}f}")
        for c in rooms:
            a = c.result.get(row.key) if c.result else None
            b = official.result.get(row.key) if official and official.result else None
            cells.append("" if not row.ratio else
                         "-" if not a or not b else f"{a / b:.2f}x")
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
                     for r in [header, *body])


def _why(error: str) -> str:
    """The first line of a worker's error; for a timeout or a missing line, with the last
    line of its stderr (the harness appends a tail of it)."""
    first, *rest = error.splitlines()
    kept = [ln.strip() for ln in rest if ln.strip()]
    if kept and (first.startswith("timed out") or first.startswith("no result line")):
        return f"{first}: {kept[-1][:200]}"
    return first


def _merge(name: str, phases: dict[str, Column]) -> Column:
    from bench._harness import Column

    merged = Column(name, result={})
    errors = []
    for phase, col in phases.items():
        if col.result:
            assert merged.result is not None
            merged.result.update(col.result)
        merged.notes.update(col.notes)
        if col.error is not None:
            errors.append(f"{phase}: {_why(col.error)}")
    merged.error = "; ".join(errors) or None
    return merged


def _took(c: Column) -> str:
    parts = []
    for who, cpu, wait in (("worker", c.worker_cpu, c.worker_wait),
                           ("server", c.server_cpu, c.server_wait)):
        if cpu is not None:
            parts.append(f"{who} {cpu:.1f}" + (f" +{wait:.1f} waiting" if wait else ""))
    return f"{c.name} {c.seconds:.0f} s" + (f" (CPU s: {', '.join(parts)})" if parts else "")


def _run(server: str, columns: list[tuple[str, str, str]], a: argparse.Namespace,
         budget: float) -> tuple[dict[str, dict[str, Column]], str]:
    """Every phase for every column through one server in a fresh namespace: the columns
    by phase, then by name, and a "where" line."""
    from bench._harness import Column as Col
    from bench._harness import cpu_seconds as server_cpu
    from bench._harness import (
        livekit_in,
        mint,
        run_worker,
        server_in,
        waited_seconds,
    )
    from tests.netns import netns

    deadline = time.monotonic() + budget
    timeouts = {"publish": a.seconds + 90, "subscribe": a.seconds + 90,
                "latency": SEE_TIMEOUT + LATENCY_SKIP + a.clicks + 60,
                "rss": a.rss_seconds + SEE_TIMEOUT + 60}
    out: dict[str, dict[str, Column]] = {}
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(netns())
        if server == "livekit":
            from tests.livekit import LIVEKIT_VERSION

            srv = stack.enter_context(livekit_in(ns, timeout=20))
            assert srv.proc is not None
            url, pid = srv.url, srv.proc.pid
            where = f"livekit-server {LIVEKIT_VERSION} at {url}"
        else:
            url, pid = stack.enter_context(server_in(ns, timeout=15))
            where = f"dev server `python -m room serve` (asyncio) at {url}"
        for phase in PHASES:
            out[phase] = {}
            for name, kind, backend in columns:
                left = deadline - time.monotonic()
                if left < 10:
                    out[phase][name] = Col(name, error="skipped: out of time budget")
                    continue
                room_name = f"{phase}-{name.replace('/', '-')}"
                tokens = {who: mint(who, room_name) for who in IDENTITIES[phase]}
                argv = ["--worker", kind, url, "--phase", phase, "--backend", backend,
                        "--seconds", str(a.seconds), "--tracks", str(a.tracks),
                        "--rss-seconds", str(a.rss_seconds), "--clicks", str(a.clicks),
                        "--server-pid", str(pid), "--tokens", json.dumps(tokens)]
                before = server_cpu(pid), waited_seconds(pid)
                col = run_worker(ns, "bench.media", name, argv, min(timeouts[phase], left))
                after = server_cpu(pid), waited_seconds(pid)
                if before[0] is not None and after[0] is not None:
                    col.server_cpu = after[0] - before[0]
                if before[1] is not None and after[1] is not None:
                    col.server_wait = max(after[1] - before[1], 0.0)
                out[phase][name] = col
                print(f"  {phase:9} {_took(col)}" + (f" -- {_why(col.error)}" if col.error
                                                     else ""), file=sys.stderr, flush=True)
        where += f" in network namespace {ns.name}"
    return out, where


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--server", choices=("dev", "livekit"), default="dev",
                        help="the server the clients meet through, in a network namespace: "
                             "dev = `python -m room serve` (default), livekit = the pinned "
                             "livekit-server (tests/livekit.py)")
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both",
                        help="the AnyIO backend(s) for the room columns (default: both)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="CPU window of the publish and subscribe phases (20)")
    parser.add_argument("--tracks", type=int, default=4, help="audio tracks (4)")
    parser.add_argument("--rss-seconds", type=float, default=60.0,
                        help="length of the RSS call (60)")
    parser.add_argument("--clicks", type=int, default=20, help="clicks timed (20)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds for all workers together (default: from the others)")
    parser.add_argument("--worker", choices=["room", "official"], help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--peer", choices=["listen", "talk"], help=argparse.SUPPRESS)
    parser.add_argument("--token", action="append", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=120.0, help=argparse.SUPPRESS)
    parser.add_argument("url", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer is not None:
        _run_peer(args)
    if args.worker is not None:
        if args.backend == "both":
            args.backend = "asyncio"
        _run_worker(args)
    if args.tracks < 1 or args.seconds <= 0 or args.rss_seconds < 2 * RSS_EVERY:
        parser.error("--tracks >= 1, --seconds > 0, --rss-seconds >= 10")

    from bench._harness import why_no_namespace, why_no_server

    cannot = why_no_server(args.server, False) or why_no_namespace(False)
    if cannot is not None:
        print(f"bench.media --server {args.server} cannot run: {cannot}")
        sys.exit(2)
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    columns = [(f"room/{b}", "room", b) for b in backends] + [("official", "official",
                                                               "asyncio")]
    per_column = (2 * args.seconds + args.rss_seconds + LATENCY_SKIP + args.clicks / 2
                  + 4 * 40)
    budget = args.timeout if args.timeout is not None else per_column * len(columns) + 60
    started = time.monotonic()
    print(f"bench.media --server {args.server}: {len(PHASES)} phases x {len(columns)} "
          f"columns, at most {budget:.0f} s", file=sys.stderr, flush=True)
    try:
        by_phase, where = _run(args.server, columns, args, budget)
    except Exception as exc:
        print(f"bench.media --server {args.server} failed to set up: {_describe(exc)}")
        sys.exit(1)
    merged = [_merge(name, {p: by_phase[p][name] for p in PHASES}) for name, _, _ in columns]

    print(f"media, {args.tracks} x 48 kHz mono tone tracks for {args.seconds:g} s per CPU "
          f"phase, {args.clicks} clicks, a {args.rss_seconds:g} s call of audio + "
          f"{VIDEO[0]}x{VIDEO[1]}@{VIDEO[2]:g} video both ways")
    print(f"through one {where}; one worker subprocess per phase and column")
    print()
    print(_table(merged, ROWS))
    print()
    print("CPU = the worker process's CPU time (all threads) per track per second of the "
          "window, % of one core; the peer (publish: an official-SDK subscriber; subscribe: "
          "a room/asyncio publisher) is another process, not counted. "
          "ratio = room / official: lower is better.")
    for c in merged:
        if c.error is not None:
            print(f"{c.name} failed: {c.error}")
        for key, why in c.notes.items():
            print(f"{c.name} {key}: {why}")
    for phase in PHASES:
        cols = by_phase[phase].values()
        peers = [f"{c.name} {c.result[k]:.2f}" for c in cols if c.result
                 for k in (f"{phase[:3]}_peer_pct",) if k in c.result]
        extra = f"; peer CPU per track, % core: {', '.join(peers)}" if peers else ""
        print(f"{phase}: {'; '.join(_took(c) for c in cols)}{extra}")
    print(f"total {time.monotonic() - started:.0f} s (worker CPU includes its peer's)")


if __name__ == "__main__":
    main()
