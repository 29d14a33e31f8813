"""A participant driven over JSON lines, built on the official LiveKit SDK (``livekit.rtc``).

Usage: ``python tests/interop/official_peer.py URL TOKEN [--connect-timeout S]
[--dual-pc] [--log-level LEVEL]``

It connects, then writes one JSON object per line to stdout (events) and reads one per line
from stdin (commands). Events: ``connected`` (identity, participants),
``participant_connected``, ``participant_disconnected``, ``participant_metadata_changed``
(identity, old, new), ``data_received`` (data_b64, kind reliable|lossy, topic, from),
``sip_dtmf_received`` (code, digit, from), ``reconnecting``, ``reconnected``,
``disconnected`` (reason), ``error`` (message); ``reconnecting``, ``reconnected`` and
``disconnected`` also carry ``t``, ``time.monotonic()`` when seen (for timing repairs);
every command is answered by ``ok`` (id) or ``failed`` (id, message). Commands (each
with an ``id``): ``publish_data`` (data_b64, reliable, topic, destinations),
``publish_dtmf`` (code, digit), ``set_metadata`` (metadata), ``quit``. It leaves the room
and exits on ``quit``, on stdin EOF and when the room disconnects; a failed connect prints
an ``error`` event and exits 1.

Media, the same in room_peer.py (analysis: tests/mediatools.py). Events: ``track_published``,
``track_subscribed``, ``track_unsubscribed``, ``track_unpublished``, ``track_muted``,
``track_unmuted`` (identity, track_sid, kind audio|video), ``track_subscription_failed``
(identity, track_sid, error). Commands: ``publish_tone`` (frequency: a number, or one per
channel; channels; name) -> track_sid, a tone at half full scale fed in real time until
unpublished; ``publish_video`` (width, height, fps, simulcast) -> track_sid, the
four-quadrant RGBA picture (red, green / blue, white); ``mute`` / ``unmute`` /
``unpublish`` (track_sid); ``listen`` (from, track_sid optional, seconds, sample_rate,
channels) -> frequency, dbfs (channel 0), per_channel, frames: waits for that
participant's subscribed audio track, reads it with an audio stream, skips its first
0.5 s; ``watch`` (from, track_sid optional, frames) -> width, height, colours (the mean RGB
of each quadrant's middle of the last frame), sizes (of every frame read).

Logs go to stderr (``--log-level DEBUG``; with ``LIVEKIT_RTC_DEBUG=1`` the SDK's Rust and
libwebrtc debug records are included).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from livekit import rtc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this tree's `tests`

from tests.mediatools import (
    analyse_pcm,
    quadrants_rgba,
    rgba_quadrant_colours,
    tone_pcm,
)


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _identity(participant: rtc.Participant | None) -> str | None:
    return participant.identity if participant is not None else None


def _read_stdin(loop: asyncio.AbstractEventLoop, commands: asyncio.Queue[str | None]) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(commands.put_nowait, line)
    loop.call_soon_threadsafe(commands.put_nowait, None)


def _watch(room: rtc.Room, gone: asyncio.Event) -> None:
    @room.on("participant_connected")
    def _(p: rtc.RemoteParticipant) -> None:
        emit("participant_connected", identity=p.identity)

    @room.on("participant_disconnected")
    def _(p: rtc.RemoteParticipant) -> None:
        emit("participant_disconnected", identity=p.identity)

    @room.on("participant_metadata_changed")
    def _(p: rtc.Participant, old: str, new: str) -> None:
        emit("participant_metadata_changed", identity=p.identity, old=old, new=new)

    @room.on("data_received")
    def _(packet: rtc.DataPacket) -> None:
        kind = "reliable" if packet.kind == rtc.DataPacketKind.KIND_RELIABLE else "lossy"
        emit("data_received", data_b64=base64.b64encode(packet.data).decode(), kind=kind,
             topic=packet.topic, **{"from": _identity(packet.participant)})

    @room.on("sip_dtmf_received")
    def _(dtmf: rtc.SipDTMF) -> None:
        emit("sip_dtmf_received", code=dtmf.code, digit=dtmf.digit,
             **{"from": _identity(dtmf.participant)})

    def track_event(name: str, publication: rtc.TrackPublication,
                    participant: rtc.Participant) -> None:
        kind = "video" if publication.kind == rtc.TrackKind.KIND_VIDEO else "audio"
        emit(name, identity=participant.identity, track_sid=publication.sid, kind=kind)

    @room.on("track_published")
    def _(pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        track_event("track_published", pub, p)

    @room.on("track_unpublished")
    def _(pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        track_event("track_unpublished", pub, p)

    @room.on("track_subscribed")
    def _(_: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        track_event("track_subscribed", pub, p)

    @room.on("track_unsubscribed")
    def _(_: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        track_event("track_unsubscribed", pub, p)

    @room.on("track_muted")
    def _(p: rtc.Participant, pub: rtc.TrackPublication) -> None:
        track_event("track_muted", pub, p)

    @room.on("track_unmuted")
    def _(p: rtc.Participant, pub: rtc.TrackPublication) -> None:
        track_event("track_unmuted", pub, p)

    @room.on("track_subscription_failed")
    def _(p: rtc.RemoteParticipant, track_sid: str, error: str) -> None:
        emit("track_subscription_failed", identity=p.identity, track_sid=track_sid,
             error=error)

    @room.on("reconnecting")
    def _() -> None:
        emit("reconnecting", t=time.monotonic())

    @room.on("reconnected")
    def _() -> None:
        emit("reconnected", t=time.monotonic())

    @room.on("disconnected")
    def _(reason: int) -> None:
        try:
            name = rtc.DisconnectReason.Name(reason)  # type: ignore[arg-type]
        except ValueError:
            name = str(reason)
        emit("disconnected", reason=name, t=time.monotonic())
        gone.set()


async def _run_command(room: rtc.Room, cmd: dict[str, Any]) -> None:
    cid = cmd.get("id")
    name = cmd.get("cmd")
    lp = room.local_participant
    try:
        if name == "publish_data":
            await lp.publish_data(
                base64.b64decode(cmd["data_b64"]),
                reliable=bool(cmd.get("reliable", True)),
                destination_identities=list(cmd.get("destinations") or []),
                topic=cmd.get("topic") or "",
            )
        elif name == "publish_dtmf":
            await lp.publish_dtmf(code=int(cmd["code"]), digit=str(cmd["digit"]))
        elif name == "set_metadata":
            await lp.set_metadata(str(cmd["metadata"]))
        elif name == "send_text":
            info = await lp.send_text(str(cmd["text"]), topic=str(cmd["topic"]))
            emit("ok", id=cid, stream_id=info.stream_id)
            return
        elif name == "send_file":
            file_info = await lp.send_file(str(cmd["path"]), topic=str(cmd["topic"]))
            emit("ok", id=cid, stream_id=file_info.stream_id)
            return
        elif name == "publish_media":
            sids = await _publish_media(room)
            emit("ok", id=cid, track_sids=sids)
            return
        elif name == "publish_tone":
            sid = await _publish_tone(room, cmd)
            emit("ok", id=cid, track_sid=sid)
            return
        elif name == "publish_video":
            sid = await _publish_video(room, cmd)
            emit("ok", id=cid, track_sid=sid)
            return
        elif name in ("mute", "unmute"):
            track = lp.track_publications[str(cmd["track_sid"])].track
            assert track is not None
            track.mute() if name == "mute" else track.unmute()
        elif name == "unpublish":
            sid = str(cmd["track_sid"])
            await lp.unpublish_track(sid)
            feeder = _feeders.pop(sid, None)
            if feeder is not None:
                feeder.cancel()
        elif name == "listen":
            emit("ok", id=cid, **await _listen(room, cmd))
            return
        elif name == "watch":
            emit("ok", id=cid, **await _watch_video(room, cmd))
            return
        elif name == "listen_text":
            room.register_text_stream_handler(str(cmd["topic"]), _on_text)
        elif name == "listen_bytes":
            room.register_byte_stream_handler(str(cmd["topic"]), _on_bytes)
        elif name == "register_rpc":
            lp.register_rpc_method(str(cmd["method"]), _rpc_handler(str(cmd["behavior"])))
        elif name == "perform_rpc":
            try:
                result = await lp.perform_rpc(
                    destination_identity=str(cmd["destination"]), method=str(cmd["method"]),
                    payload=str(cmd.get("payload", "")),
                    response_timeout=float(cmd.get("timeout", 10.0)))
            except rtc.RpcError as exc:
                emit("failed", id=cid, message=exc.message, code=exc.code, data=exc.data)
                return
            emit("ok", id=cid, result=result)
            return
        else:
            raise ValueError(f"unknown command {name!r}")
    except Exception as exc:
        emit("failed", id=cid, message=f"{type(exc).__name__}: {exc}")
    else:
        emit("ok", id=cid)


_readers: set[asyncio.Task[None]] = set()


async def _publish_media(room: rtc.Room) -> list[str]:
    """Publish a 440 Hz tone (microphone) and a grey picture (camera), fed forever."""
    audio = rtc.AudioSource(48000, 1)
    video = rtc.VideoSource(64, 48)
    tracks: list[rtc.LocalAudioTrack | rtc.LocalVideoTrack] = [
        rtc.LocalAudioTrack.create_audio_track("tone", audio),
        rtc.LocalVideoTrack.create_video_track("grey", video)]
    sources = [rtc.TrackSource.SOURCE_MICROPHONE, rtc.TrackSource.SOURCE_CAMERA]

    async def feed() -> None:
        n = 0
        picture = rtc.VideoFrame(64, 48, rtc.VideoBufferType.RGBA, bytes([128]) * 64 * 48 * 4)
        while True:
            frame = rtc.AudioFrame.create(48000, 1, 480)
            samples = memoryview(frame.data).cast("B").cast("h")
            for i in range(480):
                samples[i] = int(8000 * math.sin(2 * math.pi * 440 * (n + i) / 48000))
            n += 480
            await audio.capture_frame(frame)
            if n % 4800 == 0:
                video.capture_frame(picture)

    _spawn(feed())
    sids = []
    for track, source in zip(tracks, sources, strict=True):
        pub = await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=source))
        sids.append(pub.sid)
    return sids


def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.ensure_future(coro)
    _readers.add(task)
    task.add_done_callback(_readers.discard)
    return task


_feeders: dict[str, asyncio.Task[None]] = {}  # track sid -> what feeds its source


async def _publish_tone(room: rtc.Room, cmd: dict[str, Any]) -> str:
    """A tone per channel, fed in real time (the source's queue paces it) until the
    track is unpublished."""
    freq = cmd.get("frequency", 440.0)
    channels = int(cmd.get("channels") or (len(freq) if isinstance(freq, list) else 1))
    freqs = [float(f) for f in freq] if isinstance(freq, list) else [float(freq)] * channels
    assert len(freqs) == channels, (freqs, channels)
    rate, n = 48000, 480
    source = rtc.AudioSource(rate, channels)
    track = rtc.LocalAudioTrack.create_audio_track(str(cmd.get("name", "tone")), source)

    async def feed() -> None:
        pos = 0
        while True:
            frame = rtc.AudioFrame(tone_pcm(freqs, n, sample_rate=rate, start=pos),
                                   rate, channels, n)
            pos += n
            await source.capture_frame(frame)

    task = _spawn(feed())
    try:
        pub = await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    except BaseException:
        task.cancel()
        raise
    _feeders[pub.sid] = task
    return pub.sid


async def _publish_video(room: rtc.Room, cmd: dict[str, Any]) -> str:
    """The four-quadrant picture, ``fps`` times a second, until unpublished."""
    width, height = int(cmd.get("width", 320)), int(cmd.get("height", 240))
    fps = float(cmd.get("fps", 15))
    source = rtc.VideoSource(width, height)
    track = rtc.LocalVideoTrack.create_video_track(str(cmd.get("name", "quadrants")), source)
    picture = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA,
                             quadrants_rgba(width, height))

    async def feed() -> None:
        while True:
            source.capture_frame(picture)
            await asyncio.sleep(1 / fps)

    task = _spawn(feed())
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
    if "simulcast" in cmd:
        options.simulcast = bool(cmd["simulcast"])
    try:
        pub = await room.local_participant.publish_track(track, options)
    except BaseException:
        task.cancel()
        raise
    _feeders[pub.sid] = task
    return pub.sid


async def _remote_track(room: rtc.Room, cmd: dict[str, Any], kind: int,
                        timeout: float = 20.0) -> rtc.Track:
    """The subscribed ``kind`` track of participant ``cmd["from"]`` (that of
    ``cmd["track_sid"]`` if given), once there is one."""
    identity, sid = str(cmd["from"]), cmd.get("track_sid")
    deadline = time.monotonic() + timeout
    while True:
        participant = room.remote_participants.get(identity)
        for pub in (participant.track_publications.values() if participant else ()):
            if pub.kind == kind and pub.track is not None and sid in (None, pub.sid):
                return pub.track
        if time.monotonic() > deadline:
            raise TimeoutError(f"no subscribed track of {identity} ({sid}) in {timeout} s")
        await asyncio.sleep(0.05)


async def _listen(room: rtc.Room, cmd: dict[str, Any]) -> dict[str, Any]:
    track = await _remote_track(room, cmd, rtc.TrackKind.KIND_AUDIO)
    rate = int(cmd.get("sample_rate", 16000))
    channels = int(cmd.get("channels", 1))
    skip = int(rate * float(cmd.get("skip", 0.5)))
    want = int(rate * float(cmd.get("seconds", 2.0)))
    stream = rtc.AudioStream(track, sample_rate=rate, num_channels=channels)
    got: list[bytes] = []
    seen = frames = 0
    try:
        async with asyncio.timeout(float(cmd.get("timeout", 20.0))):
            async for event in stream:
                frame = event.frame
                assert (frame.sample_rate, frame.num_channels) == (rate, channels), frame
                frames += 1
                n = frame.samples_per_channel
                if seen >= skip:
                    got.append(bytes(frame.data))
                seen += n
                if seen >= skip + want:
                    break
    finally:
        await stream.aclose()
    per_channel = analyse_pcm(b"".join(got), rate, channels)
    return {"frequency": per_channel[0]["frequency"], "dbfs": per_channel[0]["dbfs"],
            "per_channel": per_channel, "frames": frames}


async def _watch_video(room: rtc.Room, cmd: dict[str, Any]) -> dict[str, Any]:
    track = await _remote_track(room, cmd, rtc.TrackKind.KIND_VIDEO)
    want = int(cmd.get("frames", 10))
    stream = rtc.VideoStream(track)
    sizes: list[list[int]] = []
    last: rtc.VideoFrame | None = None
    try:
        async with asyncio.timeout(float(cmd.get("timeout", 20.0))):
            async for event in stream:
                last = event.frame
                sizes.append([last.width, last.height])
                if len(sizes) == want:
                    break
    finally:
        await stream.aclose()
    assert last is not None
    rgba = last.convert(rtc.VideoBufferType.RGBA)
    return {"width": rgba.width, "height": rgba.height, "sizes": sizes,
            "colours": rgba_quadrant_colours(rgba.data, rgba.width, rgba.height)}


def _on_text(reader: rtc.TextStreamReader, sender: str) -> None:
    async def read() -> None:
        text = await reader.read_all()
        emit("text_stream_received", topic=reader.info.topic, text=text, **{"from": sender})
    _spawn(read())


def _on_bytes(reader: rtc.ByteStreamReader, sender: str) -> None:
    async def read() -> None:
        digest, size = hashlib.sha256(), 0
        async for chunk in reader:
            digest.update(chunk)
            size += len(chunk)
        emit("byte_stream_received", topic=reader.info.topic, name=reader.info.name,
             size=size, sha256=digest.hexdigest(), **{"from": sender})
    _spawn(read())


def _rpc_handler(behavior: str) -> Any:
    """RPC test behaviours, the same in room_peer.py: echo, fail, crash, sleep."""
    async def handler(data: rtc.RpcInvocationData) -> str:
        if behavior == "fail":
            raise rtc.RpcError(4001, "refused", "why")
        if behavior == "crash":
            raise ValueError("secret internals")
        if behavior == "sleep":
            await asyncio.sleep(30)
        return f"echo:{data.payload}:{data.caller_identity}"
    return handler


async def amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str | None] = asyncio.Queue()
    gone = asyncio.Event()
    room = rtc.Room()
    _watch(room, gone)
    options = rtc.RoomOptions(connect_timeout=args.connect_timeout)
    if args.dual_pc:
        options.single_peer_connection = False
    try:
        await room.connect(args.url, args.token, options)
    except Exception as exc:
        emit("error", message=f"connect failed: {type(exc).__name__}: {exc}")
        return 1
    emit("connected", identity=room.local_participant.identity,
         participants=sorted(room.remote_participants))

    threading.Thread(target=_read_stdin, args=(loop, commands), daemon=True).start()
    running: set[asyncio.Task[None]] = set()
    gone_wait = asyncio.ensure_future(gone.wait())
    while True:
        next_line = asyncio.ensure_future(commands.get())
        await asyncio.wait({next_line, gone_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not next_line.done():
            next_line.cancel()
            break  # the room disconnected
        line = next_line.result()
        if line is None:
            break  # stdin closed
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            if not isinstance(cmd, dict):
                raise ValueError("a command is a JSON object")
        except ValueError as exc:
            emit("error", message=f"bad command line: {exc}")
            continue
        if cmd.get("cmd") == "quit":
            emit("ok", id=cmd.get("id"))
            break
        # One task per command, started in order: the SDK queues each request before its
        # first await, so packets keep the order of the command lines.
        task = asyncio.create_task(_run_command(room, cmd))
        running.add(task)
        task.add_done_callback(running.discard)
    gone_wait.cancel()
    for task in running:
        task.cancel()
    if not gone.is_set():
        try:
            await asyncio.wait_for(room.disconnect(), 10)
        except Exception as exc:
            emit("error", message=f"disconnect failed: {type(exc).__name__}: {exc}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--connect-timeout", type=float, default=None,
                        help="seconds for each signal connection attempt (SDK default 5)")
    parser.add_argument("--dual-pc", action="store_true",
                        help="ask for two peer connections (skip /rtc/v1)")
    parser.add_argument("--log-level", default="WARNING", help="stderr logging level")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = asyncio.run(amain(args))
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
