"""The `room` counterpart of official_peer.py: same JSON-lines protocol, our client.

    python tests/interop/room_peer.py URL TOKEN [--backend asyncio|trio]
        [--reconnect-base-delay S] [--reconnect-max-delay S] [--log-level LEVEL]

Events on stdout, commands on stdin, exactly as official_peer.py (see its docstring), so
one test can drive either side. ``reconnecting``, ``reconnected`` and ``disconnected``
carry ``t``: ``time.monotonic()`` when the peer saw them (comparable across processes on
one machine), for tests that time repairs. ``--reconnect-*`` change the room's
`room.ReconnectPolicy` (default: room's defaults). Media events and commands too
(``publish_tone``, ``publish_video``, ``mute``, ``unmute``, ``unpublish``, ``listen``,
``watch``: see official_peer.py), with `room.AudioStream` / `room.VideoStream`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this tree's room, tests

import room
import room.rpc
from room.events import (
    DataReceived,
    Disconnected,
    ParticipantConnected,
    ParticipantDisconnected,
    ParticipantMetadataChanged,
    Reconnected,
    Reconnecting,
    RoomEvent,
    SipDTMFReceived,
    TrackMuted,
    TrackPublished,
    TrackSubscribed,
    TrackSubscriptionFailed,
    TrackUnmuted,
    TrackUnpublished,
    TrackUnsubscribed,
)
from tests.mediatools import (
    analyse_pcm,
    quadrants_rgba,
    rgba_quadrant_colours,
    tone_pcm,
)

LISTENERS: TaskGroup  # where stream readers run (the peer's task group)


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def watch(events: AsyncIterator[RoomEvent]) -> None:
    async for ev in events:
        match ev:
            case ParticipantConnected(participant=p):
                emit("participant_connected", identity=p.identity)
            case ParticipantDisconnected(participant=p):
                emit("participant_disconnected", identity=p.identity)
            case ParticipantMetadataChanged(participant=p, old_metadata=old, new_metadata=new):
                emit("participant_metadata_changed", identity=p.identity, old=old, new=new)
            case DataReceived(packet=pkt):
                emit("data_received", data_b64=base64.b64encode(pkt.data).decode(),
                     kind="lossy" if pkt.kind is room.DataPacketKind.LOSSY else "reliable",
                     topic=pkt.topic, **{"from": pkt.participant_identity or None})
            case SipDTMFReceived(dtmf=d):
                emit("sip_dtmf_received", code=d.code, digit=d.digit,
                     **{"from": d.participant_identity or None})
            case TrackPublished(publication=pub, participant=p):
                emit_track("track_published", pub, p)
            case TrackSubscribed(publication=pub, participant=p):
                emit_track("track_subscribed", pub, p)
            case TrackUnsubscribed(publication=pub, participant=p):
                emit_track("track_unsubscribed", pub, p)
            case TrackUnpublished(publication=pub, participant=p):
                emit_track("track_unpublished", pub, p)
            case TrackMuted(publication=pub, participant=p):
                emit_track("track_muted", pub, p)
            case TrackUnmuted(publication=pub, participant=p):
                emit_track("track_unmuted", pub, p)
            case TrackSubscriptionFailed(participant=p, track_sid=sid, error=error):
                emit("track_subscription_failed", identity=p.identity, track_sid=sid,
                     error=error)
            case Reconnecting():
                emit("reconnecting", t=time.monotonic())
            case Reconnected():
                emit("reconnected", t=time.monotonic())
            case Disconnected(reason=reason):
                emit("disconnected", reason=reason.name, t=time.monotonic())


def emit_track(name: str, publication: room.TrackPublication,
               participant: room.Participant) -> None:
    kind = "video" if publication.kind is room.TrackKind.VIDEO else "audio"
    emit(name, identity=participant.identity, track_sid=publication.sid, kind=kind)


async def run_command(r: room.Room, cmd: dict[str, Any]) -> None:
    cid = cmd.get("id")
    me = r.local_participant
    try:
        match cmd.get("cmd"):
            case "publish_data":
                await me.publish_data(base64.b64decode(cmd["data_b64"]),
                                      reliable=bool(cmd.get("reliable", True)),
                                      destination_identities=cmd.get("destinations") or (),
                                      topic=cmd.get("topic"))
            case "publish_dtmf":
                await me.publish_dtmf(code=int(cmd["code"]), digit=str(cmd["digit"]))
            case "set_metadata":
                await me.set_metadata(str(cmd["metadata"]))
            case "send_text":
                sid = await me.send_text(str(cmd["text"]), topic=str(cmd["topic"]))
                emit("ok", id=cid, stream_id=sid)
                return
            case "send_file":
                sid = await me.send_file(str(cmd["path"]), topic=str(cmd["topic"]))
                emit("ok", id=cid, stream_id=sid)
                return
            case "rtc_state":
                emit("ok", id=cid, **rtc_state(r))
                return
            case "publish_tone":
                emit("ok", id=cid, track_sid=await publish_tone(r, cmd))
                return
            case "publish_video":
                emit("ok", id=cid, track_sid=await publish_video(r, cmd))
                return
            case "mute" | "unmute" as what:
                track = me.track_publications[str(cmd["track_sid"])].track
                assert isinstance(track, room.LocalTrack), track
                track.mute() if what == "mute" else track.unmute()
            case "unpublish":
                sid = str(cmd["track_sid"])
                await me.unpublish_track(sid)
                if (feeder := FEEDERS.pop(sid, None)) is not None:
                    feeder.cancel()
            case "listen":
                emit("ok", id=cid, **await listen(r, cmd))
                return
            case "watch":
                emit("ok", id=cid, **await watch_video(r, cmd))
                return
            case "listen_text":
                LISTENERS.start_soon(read_texts, r.text_streams(str(cmd["topic"])))
            case "listen_bytes":
                LISTENERS.start_soon(read_bytes, r.byte_streams(str(cmd["topic"])))
            case "register_rpc":
                me.register_rpc_method(str(cmd["method"]), rpc_handler(str(cmd["behavior"])))
            case "perform_rpc":
                try:
                    result = await me.perform_rpc(
                        destination_identity=str(cmd["destination"]),
                        method=str(cmd["method"]), payload=str(cmd.get("payload", "")),
                        response_timeout=float(cmd.get("timeout", 10.0)))
                except room.RpcError as exc:
                    emit("failed", id=cid, message=exc.message, code=exc.code, data=exc.data)
                    return
                emit("ok", id=cid, result=result)
                return
            case other:
                raise ValueError(f"unknown command {other!r}")
    except Exception as exc:
        emit("failed", id=cid, message=f"{type(exc).__name__}: {exc}")
    else:
        emit("ok", id=cid)


def rtc_state(r: room.Room) -> dict[str, Any]:
    """What the peer connections carry (for tests): each media transceiver's negotiated
    direction, and whether its receiver decodes. Read from another thread: a snapshot."""
    out: dict[str, Any] = {"connection_state": r.connection_state.value}
    transport = r._rtc
    for name in ("publisher", "subscriber"):
        peer = getattr(transport, f"_{name}", None) if transport is not None else None
        out[name] = [] if peer is None else [
            {"kind": t.kind, "mid": t.mid, "direction": t.currentDirection,
             "receiving": bool(getattr(t.receiver, "_RTCRtpReceiver__started", False))}
            for t in peer.pc.getTransceivers()]
    return out


FEEDERS: dict[str, anyio.CancelScope] = {}  # track sid -> what feeds its source


async def feed_audio(source: room.AudioSource, freqs: list[float],
                     scope: anyio.CancelScope) -> None:
    """A tone per channel, in real time (the source's queue paces it)."""
    with scope:
        pos, n = 0, source.sample_rate // 100
        while True:
            pcm = tone_pcm(freqs, n, sample_rate=source.sample_rate, start=pos)
            pos += n
            await source.capture_frame(room.AudioFrame(pcm, source.sample_rate, len(freqs), n))


async def feed_video(source: room.VideoSource, fps: float, scope: anyio.CancelScope
                     ) -> None:
    """The four-quadrant picture, ``fps`` times a second."""
    frame = room.VideoFrame(source.width, source.height, room.VideoBufferType.RGBA,
                            quadrants_rgba(source.width, source.height))
    with scope:
        while True:
            source.capture_frame(frame)
            await anyio.sleep(1 / fps)


async def publish_tone(r: room.Room, cmd: dict[str, Any]) -> str:
    freq = cmd.get("frequency", 440.0)
    channels = int(cmd.get("channels") or (len(freq) if isinstance(freq, list) else 1))
    freqs = [float(f) for f in freq] if isinstance(freq, list) else [float(freq)] * channels
    assert len(freqs) == channels, (freqs, channels)
    source = room.AudioSource(48000, channels)
    track = room.LocalAudioTrack.create_audio_track(str(cmd.get("name", "tone")), source)
    scope = anyio.CancelScope()
    LISTENERS.start_soon(feed_audio, source, freqs, scope)
    try:
        pub = await r.local_participant.publish_track(
            track, room.TrackPublishOptions(source=room.TrackSource.MICROPHONE))
    except BaseException:
        scope.cancel()
        raise
    FEEDERS[pub.sid] = scope
    return pub.sid


async def publish_video(r: room.Room, cmd: dict[str, Any]) -> str:
    source = room.VideoSource(int(cmd.get("width", 320)), int(cmd.get("height", 240)))
    track = room.LocalVideoTrack.create_video_track(str(cmd.get("name", "quadrants")),
                                                    source)
    scope = anyio.CancelScope()
    LISTENERS.start_soon(feed_video, source, float(cmd.get("fps", 15)), scope)
    try:
        pub = await r.local_participant.publish_track(
            track, room.TrackPublishOptions(source=room.TrackSource.CAMERA))
    except BaseException:
        scope.cancel()
        raise
    FEEDERS[pub.sid] = scope
    return pub.sid


async def remote_track(r: room.Room, cmd: dict[str, Any], kind: room.TrackKind,
                       timeout: float = 20.0) -> room.RemoteTrack:
    """The subscribed ``kind`` track of participant ``cmd["from"]`` (that of
    ``cmd["track_sid"]`` if given), once there is one."""
    identity, sid = str(cmd["from"]), cmd.get("track_sid")
    with anyio.fail_after(timeout):
        while True:
            participant = r.remote_participants.get(identity)
            for pub in (participant.track_publications.values() if participant else ()):
                track = pub.track
                if (pub.kind is kind and isinstance(track, room.RemoteTrack)
                        and sid in (None, pub.sid)):
                    return track
            await anyio.sleep(0.05)


async def listen(r: room.Room, cmd: dict[str, Any]) -> dict[str, Any]:
    track = await remote_track(r, cmd, room.TrackKind.AUDIO)
    rate = int(cmd.get("sample_rate", 16000))
    channels = int(cmd.get("channels", 1))
    skip = int(rate * float(cmd.get("skip", 0.5)))
    want = int(rate * float(cmd.get("seconds", 2.0)))
    got: list[bytes] = []
    seen = frames = 0
    with anyio.fail_after(float(cmd.get("timeout", 20.0))):
        async with room.AudioStream(track, sample_rate=rate, num_channels=channels) as stream:
            async for frame in stream:
                assert (frame.sample_rate, frame.num_channels) == (rate, channels), frame
                frames += 1
                if seen >= skip:
                    got.append(bytes(frame.data))
                seen += frame.samples_per_channel
                if seen >= skip + want:
                    break
    per_channel = analyse_pcm(b"".join(got), rate, channels)
    return {"frequency": per_channel[0]["frequency"], "dbfs": per_channel[0]["dbfs"],
            "per_channel": per_channel, "frames": frames}


async def watch_video(r: room.Room, cmd: dict[str, Any]) -> dict[str, Any]:
    track = await remote_track(r, cmd, room.TrackKind.VIDEO)
    want = int(cmd.get("frames", 10))
    sizes: list[list[int]] = []
    last: room.VideoFrame | None = None
    with anyio.fail_after(float(cmd.get("timeout", 20.0))):
        async with room.VideoStream(track, format=room.VideoBufferType.RGBA) as stream:
            async for frame in stream:
                last = frame
                sizes.append([frame.width, frame.height])
                if len(sizes) == want:
                    break
    assert last is not None and last.type is room.VideoBufferType.RGBA
    return {"width": last.width, "height": last.height, "sizes": sizes,
            "colours": rgba_quadrant_colours(last.data, last.width, last.height)}


async def read_texts(readers: AsyncIterator[room.TextStreamReader]) -> None:
    async for reader in readers:
        text = await reader.read_all()
        emit("text_stream_received", topic=reader.info.topic, text=text,
             **{"from": reader.info.sender_identity})


async def read_bytes(readers: AsyncIterator[room.ByteStreamReader]) -> None:
    async for reader in readers:
        digest, size = hashlib.sha256(), 0
        async for chunk in reader:  # chunk by chunk: memory stays bounded
            digest.update(chunk)
            size += len(chunk)
        emit("byte_stream_received", topic=reader.info.topic, name=reader.info.name,
             size=size, sha256=digest.hexdigest(), **{"from": reader.info.sender_identity})


def rpc_handler(behavior: str) -> room.rpc.RpcHandler:
    """RPC test behaviours, the same in official_peer.py: echo, fail, crash, sleep."""
    async def handler(data: room.RpcInvocationData) -> str:
        if behavior == "fail":
            raise room.RpcError(4001, "refused", "why")
        if behavior == "crash":
            raise ValueError("secret internals")
        if behavior == "sleep":
            await anyio.sleep(30)
        return f"echo:{data.payload}:{data.caller_identity}"
    return handler


async def amain(url: str, token: str, options: room.RoomOptions | None = None) -> int:
    try:
        async with room.Room.connect(url, token, options=options) as r:
            # Subscribe before anything can happen unseen (docs/events.md), then say what
            # is there already: tracks subscribed while joining (their TrackSubscribed
            # went out before connect returned) are announced as the official SDK does.
            events = r.events()
            emit("connected", identity=r.local_participant.identity,
                 participants=sorted(r.remote_participants))
            for p in r.remote_participants.values():
                for pub in p.track_publications.values():
                    if pub.track is not None:
                        emit_track("track_subscribed", pub, p)
            async with anyio.create_task_group() as tg:
                global LISTENERS
                LISTENERS = tg
                tg.start_soon(watch, events)
                while True:
                    line = await anyio.to_thread.run_sync(sys.stdin.readline,
                                                          abandon_on_cancel=True)
                    if not line:
                        break  # stdin closed
                    if not line.strip():
                        continue
                    cmd = json.loads(line)
                    if cmd.get("cmd") == "quit":
                        emit("ok", id=cmd.get("id"))
                        break
                    if cmd.get("cmd") in ("perform_rpc", "listen", "watch"):
                        tg.start_soon(run_command, r, cmd)  # these may overlap
                    else:
                        # One after another, so packets keep the command order.
                        await run_command(r, cmd)
                tg.cancel_scope.cancel()
    except room.ConnectError as exc:
        emit("error", message=f"connect failed: {exc}")
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--reconnect-base-delay", type=float, default=None,
                        help="ReconnectPolicy.base_delay (seconds; default room's)")
    parser.add_argument("--reconnect-max-delay", type=float, default=None,
                        help="ReconnectPolicy.max_delay (seconds; default room's)")
    parser.add_argument("--log-level", default="WARNING", help="stderr logging level")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = None
    if args.reconnect_base_delay is not None or args.reconnect_max_delay is not None:
        default = room.ReconnectPolicy()
        policy = room.ReconnectPolicy(
            base_delay=(default.base_delay if args.reconnect_base_delay is None
                        else args.reconnect_base_delay),
            max_delay=(default.max_delay if args.reconnect_max_delay is None
                       else args.reconnect_max_delay))
        options = room.RoomOptions(reconnect=policy)
    sys.exit(anyio.run(amain, args.url, args.token, options, backend=args.backend))


if __name__ == "__main__":
    main()
