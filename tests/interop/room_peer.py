"""The `room` counterpart of official_peer.py: same JSON-lines protocol, our client.

    python tests/interop/room_peer.py URL TOKEN [--backend asyncio|trio]
        [--reconnect-base-delay S] [--reconnect-max-delay S] [--log-level LEVEL]

Events on stdout, commands on stdin, exactly as official_peer.py (see its docstring), so
one test can drive either side. ``reconnecting``, ``reconnected`` and ``disconnected``
carry ``t``: ``time.monotonic()`` when the peer saw them (comparable across processes on
one machine), for tests that time repairs. ``--reconnect-*`` change the room's
`room.ReconnectPolicy` (default: room's defaults).
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
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

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
    SipDTMFReceived,
)

LISTENERS: TaskGroup  # where stream readers run (the peer's task group)


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def watch(r: room.Room) -> None:
    async for ev in r.events():
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
            case Reconnecting():
                emit("reconnecting", t=time.monotonic())
            case Reconnected():
                emit("reconnected", t=time.monotonic())
            case Disconnected(reason=reason):
                emit("disconnected", reason=reason.name, t=time.monotonic())


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
            emit("connected", identity=r.local_participant.identity,
                 participants=sorted(r.remote_participants))
            async with anyio.create_task_group() as tg:
                global LISTENERS
                LISTENERS = tg
                tg.start_soon(watch, r)
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
                    if cmd.get("cmd") == "perform_rpc":
                        tg.start_soon(run_command, r, cmd)  # calls may overlap
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
