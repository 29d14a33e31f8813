"""Data packets over real WebRTC data channels, through the dev server, on both backends."""

from __future__ import annotations

import anyio
import pytest
from livekit.protocol import models

import room
from room.devserver import DevServer
from room.events import DataReceived, SipDTMFReceived, TranscriptionReceived
from room.transport.rtc import RELIABLE
from tests.helpers import aiortc_tasks, client_tasks, next_event

pytestmark = pytest.mark.anyio


async def test_ten_thousand_reliable_packets_arrive_in_order_once(
        livekit_server: DevServer) -> None:
    srv = livekit_server
    n = 10_000
    async with room.Room.connect(srv.url, srv.token("rx", room="r")) as rx, \
            room.Room.connect(srv.url, srv.token("tx", room="r")) as tx:
        events = rx.events(DataReceived)
        got: list[int] = []

        async def receive() -> None:
            async for ev in events:
                assert isinstance(ev, DataReceived)
                assert ev.packet.participant is rx.remote_participants["tx"]
                assert ev.packet.kind is room.DataPacketKind.RELIABLE
                got.append(int(ev.packet.data))
                if len(got) == n:
                    return

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                for i in range(n):
                    await tx.local_participant.publish_data(str(i).encode())
        assert got == list(range(n))


async def test_lossy_packets_arrive(livekit_server: DevServer) -> None:
    srv = livekit_server
    async with room.Room.connect(srv.url, srv.token("rx", room="r")) as rx, \
            room.Room.connect(srv.url, srv.token("tx", room="r")) as tx:
        events = rx.events(DataReceived)
        for i in range(50):
            await tx.local_participant.publish_data(f"{i}", reliable=False, topic="lossy")
        ev = await next_event(events, DataReceived)
        assert ev.packet.kind is room.DataPacketKind.LOSSY
        assert ev.packet.topic == "lossy"
        assert 0 <= int(ev.packet.data) < 50


async def test_topics_and_destinations(livekit_server: DevServer) -> None:
    srv = livekit_server
    async with room.Room.connect(srv.url, srv.token("alice", room="r")) as alice, \
            room.Room.connect(srv.url, srv.token("bob", room="r")) as bob, \
            room.Room.connect(srv.url, srv.token("carol", room="r")) as carol:
        to_bob = bob.events(DataReceived)
        to_carol = carol.events(DataReceived)
        await alice.local_participant.publish_data("for bob", destination_identities=["bob"],
                                                   topic="private")
        await alice.local_participant.publish_data(b"for all")
        first = await next_event(to_bob, DataReceived)
        assert (first.packet.data, first.packet.topic) == (b"for bob", "private")
        assert first.packet.participant is not None
        assert first.packet.participant.identity == "alice"
        second = await next_event(to_bob, DataReceived)
        assert (second.packet.data, second.packet.topic) == (b"for all", None)
        only = await next_event(to_carol, DataReceived)
        assert only.packet.data == b"for all"  # carol never saw bob's packet
        # The sender does not get its own packets.
        mine = alice.events(DataReceived)
        await bob.local_participant.publish_data(b"ping")
        assert (await next_event(mine, DataReceived)).packet.data == b"ping"


async def test_dtmf_and_transcription(livekit_server: DevServer) -> None:
    srv = livekit_server
    async with room.Room.connect(srv.url, srv.token("alice", room="r")) as alice, \
            room.Room.connect(srv.url, srv.token("bob", room="r")) as bob:
        events = alice.events(SipDTMFReceived, TranscriptionReceived)
        await bob.local_participant.publish_dtmf(code=11, digit="#")
        dtmf = await next_event(events, SipDTMFReceived)
        assert (dtmf.dtmf.code, dtmf.dtmf.digit) == (11, "#")
        assert dtmf.dtmf.participant is alice.remote_participants["bob"]
        seg = room.TranscriptionSegment("s1", "hello there", 0, 900, True, "en")
        await bob.local_participant.publish_transcription([seg])
        tr = await next_event(events, TranscriptionReceived)
        assert tr.segments == [seg]
        assert tr.participant is alice.remote_participants["bob"]
        with pytest.raises(ValueError):
            await bob.local_participant.publish_dtmf(code=16, digit="x")


async def test_oversized_and_bad_payloads_fail_before_sending(livekit_server: DevServer) -> None:
    srv = livekit_server
    async with room.Room.connect(srv.url, srv.token("alice", room="r")) as alice, \
            room.Room.connect(srv.url, srv.token("bob", room="r")) as bob:
        events = alice.events(DataReceived)
        me = bob.local_participant
        with pytest.raises(room.PublishDataError, match="64000"):
            await me.publish_data(b"x" * 64_001)
        with pytest.raises(TypeError):
            await me.publish_data(12)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await me.publish_data(b"x", destination_identities="alice")
        await me.publish_data(b"x" * 60_000)  # the largest size passes
        ev = await next_event(events, DataReceived)
        assert len(ev.packet.data) == 60_000


async def test_publishing_on_a_closed_room_raises(livekit_server: DevServer) -> None:
    srv = livekit_server
    async with room.Room.connect(srv.url, srv.token("alice", room="r")) as alice:
        await alice.disconnect()
        with anyio.fail_after(2), pytest.raises(room.ConnectionClosedError):
            await alice.local_participant.publish_data(b"late")
        with anyio.fail_after(2), pytest.raises(room.ConnectionClosedError):
            await alice.local_participant.publish_dtmf(code=1, digit="1")
    assert client_tasks() == []
    with anyio.fail_after(5):  # the peer connections' own tasks wind down too
        while await aiortc_tasks():
            await anyio.sleep(0.05)


async def test_publish_permission_is_enforced_on_both_sides(livekit_server: DevServer) -> None:
    srv = livekit_server
    async with room.Room.connect(srv.url, srv.token("alice", room="r")) as alice, \
            room.Room.connect(srv.url, srv.token("bob", room="r")) as bob, \
            room.Room.connect(srv.url, srv.token("mute", room="r",
                                                 can_publish_data=False)) as muted:
        events = bob.events(DataReceived)
        with pytest.raises(room.PublishDataError, match="canPublishData"):
            await muted.local_participant.publish_data(b"no")
        # A client that ignores its permission is stopped by the server.
        muted.local_participant.can_publish_data = True
        await muted.local_participant.publish_data(b"sneaky")
        await alice.local_participant.publish_data(b"marker")  # the room still works
        seen = [(await next_event(events, DataReceived)).packet.data]
        with anyio.move_on_after(0.5):
            async for ev in events:
                assert isinstance(ev, DataReceived)
                seen.append(ev.packet.data)
        assert b"marker" in seen and b"sneaky" not in seen


async def test_server_stamps_the_sender_and_drops_junk(livekit_server: DevServer) -> None:
    srv = livekit_server
    async with room.Room.connect(srv.url, srv.token("alice", room="r")) as alice, \
            room.Room.connect(srv.url, srv.token("mallory", room="r")) as mallory:
        events = alice.events(DataReceived)
        rtc = mallory._rtc
        assert rtc is not None
        forged = models.DataPacket(participant_identity="alice", user=models.UserPacket(
            payload=b"it was alice", participant_identity="alice"))
        await rtc.send(RELIABLE, b"\xff\xff not a protobuf")
        await rtc.send(RELIABLE, forged.SerializeToString())
        ev = await next_event(events, DataReceived)
        assert ev.packet.data == b"it was alice"
        assert ev.packet.participant is alice.remote_participants["mallory"]
