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
from typing import Any

from livekit import rtc


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


def _spawn(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _readers.add(task)
    task.add_done_callback(_readers.discard)


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
