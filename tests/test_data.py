"""Data packets over real WebRTC data channels, through both servers, on both backends."""

from __future__ import annotations

import time
import warnings

import anyio
import jwt
import pytest
from livekit.protocol import models

import room
from room.events import (
    DataReceived,
    ParticipantConnected,
    SipDTMFReceived,
    TranscriptionReceived,
)
from room.transport.rtc import RELIABLE
from tests.helpers import aiortc_tasks, client_tasks, known, next_event, wait_until
from tests.servers import Server

pytestmark = pytest.mark.anyio


async def test_ten_thousand_reliable_packets_arrive_in_order_once(
        server: Server) -> None:
    srv = server
    n = 10_000
    # Default options: through an SFU packets arrive in bursts that a reader sharing two
    # cores with the server can trail by more than 1,024 events (seen on livekit-server);
    # the default byte budget (16 MiB, about 57,000 such small events) absorbs them.
    async with srv.connect("rx") as rx, \
            srv.connect("tx") as tx:
        events = rx.events(DataReceived)
        got: list[int] = []

        async def receive() -> None:
            async for ev in events:
                assert isinstance(ev, DataReceived)
                # tx may not be announced to rx yet (livekit: up to 3 s): the packet still
                # says who sent it.
                assert ev.packet.participant_identity == "tx"
                assert ev.packet.participant in (None, rx.remote_participants.get("tx"))
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


def _numbered(i: int, size: int = 1024) -> bytes:
    return i.to_bytes(4, "big") + bytes(size - 4)


def _number(event: room.events.RoomEvent) -> int:
    assert isinstance(event, DataReceived)
    return int.from_bytes(event.packet.data[:4], "big")


async def test_a_burst_to_a_reader_busy_for_a_second_arrives_whole_and_in_order(
        server: Server) -> None:
    """2,000 reliable 1 KiB packets while the only reader is busy elsewhere: with the
    default options nothing is lost (the former limit, 1,024 events, cut such a reader
    off), memory stays within the subscription's byte budget, and the room stays up."""
    srv = server
    n = 2000
    async with srv.connect("rx") as rx, \
            srv.connect("tx") as tx:
        events = rx.events(DataReceived)

        async def send() -> None:
            for i in range(n):
                await tx.local_participant.publish_data(_numbered(i))

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                first = await next_event(events, DataReceived, timeout=30)
                # Busy for a second, and on until the whole burst waits in the buffer.
                await anyio.sleep(1.0)
                await wait_until(lambda: events.statistics().items >= n - 1, timeout=100)
                held = events.statistics()
                got = [first] + [await events.__anext__() for _ in range(n - 1)]
        assert [_number(e) for e in got] == list(range(n))
        assert held.items == n - 1 > 1024 and not held.overflowed
        budget = room.RoomOptions().event_buffer_bytes
        assert held.max_bytes == budget and held.peak_bytes <= budget
        assert rx.isconnected()


async def test_a_data_reader_that_never_reads_is_cut_off_at_its_budget_alone(
        server: Server) -> None:
    budget = 256 * 1024
    n = 600  # 1 KiB packets: about 780 kB of events, three times the budget
    opts = room.RoomOptions(event_buffer_bytes=budget)
    async with server.connect("rx", options=opts) as rx, \
            server.connect("tx") as tx:
        stuck = rx.events(DataReceived)
        reader = rx.events(DataReceived)
        got: list[int] = []

        async def receive() -> None:
            async for ev in reader:
                got.append(_number(ev))
                if len(got) == n:
                    return

        async def caught_up(count: int) -> None:
            await wait_until(lambda: len(got) >= count, timeout=30)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                for i in range(n):
                    await tx.local_participant.publish_data(_numbered(i))
                    if i % 50 == 49:  # the reader stays well within its own budget
                        await caught_up(i - 49)
        assert got == list(range(n))
        stats = stuck.statistics()
        assert stats.overflowed and 0 < stats.items == stats.peak_items < n
        assert stats.peak_bytes <= budget < stats.peak_bytes + 1500
        held: list[int] = []
        with anyio.fail_after(10), pytest.raises(room.EventStreamOverflowError,
                                                 match="bytes behind"):
            async for ev in stuck:
                held.append(_number(ev))
        assert held == list(range(stats.peak_items))  # everything it had, then the error
        # Neither the room nor the other subscriber noticed.
        await tx.local_participant.publish_data(b"after")
        assert (await next_event(reader, DataReceived)).packet.data == b"after"
        assert rx.isconnected() and reader.statistics().peak_bytes < budget


async def test_lossy_packets_arrive(server: Server) -> None:
    srv = server
    async with srv.connect("rx") as rx, \
            srv.connect("tx") as tx:
        events = rx.events(DataReceived)
        for i in range(50):
            await tx.local_participant.publish_data(f"{i}", reliable=False, topic="lossy")
        ev = await next_event(events, DataReceived)
        assert ev.packet.kind is room.DataPacketKind.LOSSY
        assert ev.packet.topic == "lossy"
        assert 0 <= int(ev.packet.data) < 50


async def test_topics_and_destinations(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice, \
            srv.connect("bob") as bob, \
            srv.connect("carol") as carol:
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


async def test_dtmf_and_transcription(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice, \
            srv.connect("bob", kind="agent") as bob:  # servers forward agents' transcriptions
        await known(alice, "bob")
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


async def test_oversized_and_bad_payloads_fail_before_sending(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice, \
            srv.connect("bob") as bob:
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


async def test_publishing_on_a_closed_room_raises(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice:
        await alice.disconnect()
        with anyio.fail_after(2), pytest.raises(room.ConnectionClosedError):
            await alice.local_participant.publish_data(b"late")
        with anyio.fail_after(2), pytest.raises(room.ConnectionClosedError):
            await alice.local_participant.publish_dtmf(code=1, digit="1")
    assert client_tasks() == []
    with anyio.fail_after(5):  # the peer connections' own tasks wind down too
        while await aiortc_tasks():
            await anyio.sleep(0.05)


async def test_publish_permission_is_enforced_on_both_sides(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice, \
            srv.connect("bob") as bob, \
            srv.connect("mute",
                                                 can_publish_data=False) as muted:
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


async def test_server_stamps_the_sender_and_drops_junk(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice, \
            srv.connect("mallory") as mallory:
        events = alice.events(DataReceived)
        rtc = mallory._rtc
        assert rtc is not None
        forged = models.DataPacket(participant_identity="alice", user=models.UserPacket(
            payload=b"it was alice", participant_identity="alice"))
        await rtc.send(RELIABLE, b"\xff\xff not a protobuf")
        await rtc.send(RELIABLE, forged.SerializeToString())
        ev = await next_event(events, DataReceived)
        assert ev.packet.data == b"it was alice"
        assert ev.packet.participant_identity == "mallory"
        await known(alice, "mallory")
        assert ev.packet.participant in (None, alice.remote_participants["mallory"])


async def test_transcriptions_need_an_agent_token(server: Server) -> None:
    """LiveKit servers forward transcriptions only from agents: a standard participant's
    call fails before sending, and the server drops one sent regardless."""
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        events = alice.events(TranscriptionReceived, DataReceived)
        me = bob.local_participant
        seg = room.TranscriptionSegment("s1", "hello", 0, 900, True, "en")
        with pytest.raises(room.PublishDataError, match="agent"):
            await me.publish_transcription([seg])
        me._agent_grant = True  # a client that ignores the rule is stopped by the server
        await me.publish_transcription([seg])
        await me.publish_data(b"marker")
        got = await next_event(events, DataReceived)
        assert got.packet.data == b"marker"  # the transcription before it never came
        with anyio.move_on_after(0.5):
            async for ev in events:
                assert not isinstance(ev, TranscriptionReceived), ev


async def test_publishing_data_follows_can_publish_when_the_token_does_not_say(
        server: Server) -> None:
    """A token with ``canPublish: false`` and no ``canPublishData`` may not publish data
    (livekit-server's default), and the client says so before sending."""
    now = int(time.time())
    claims = {"iss": server.api_key, "sub": "viewer", "nbf": now, "exp": now + 600,
              "video": {"room": "r", "roomJoin": True, "canPublish": False}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dev secret is short on purpose
        token = jwt.encode(claims, server.api_secret, algorithm="HS256")
    async with room.Room.connect(server.url, token, options=server.options()) as viewer:
        assert viewer.local_participant.can_publish_data is False
        with pytest.raises(room.PublishDataError, match="canPublishData"):
            await viewer.local_participant.publish_data(b"no")


async def test_a_client_that_may_not_subscribe_still_receives_data(server: Server) -> None:
    """Without canSubscribe the server offers no subscriber connection (it is not the
    primary one): the client is usable as soon as its publisher connection is, and data
    for it arrives there."""
    async with server.connect("alice") as alice, \
            server.connect("watcher", can_subscribe=False) as watcher:
        events = watcher.events(DataReceived)
        await alice.local_participant.publish_data(b"to everyone", topic="t")
        ev = await next_event(events, DataReceived)
        assert (ev.packet.data, ev.packet.topic, ev.packet.participant_identity) == (
            b"to everyone", "t", "alice")
        mine = alice.events(DataReceived)
        await watcher.local_participant.publish_data(b"and back")
        assert (await next_event(mine, DataReceived)).packet.data == b"and back"


async def test_hidden_senders_are_anonymous(server: Server) -> None:
    async with server.connect("alice") as alice, \
            server.connect("ghost", hidden=True) as ghost:
        events = alice.events(DataReceived)
        await ghost.local_participant.publish_data(b"boo")
        ev = await next_event(events, DataReceived)
        assert (ev.packet.data, ev.packet.participant_identity, ev.packet.participant) == (
            b"boo", "", None)


async def test_the_packet_destinations_win_over_the_user_part(server: Server) -> None:
    """livekit-server's rule: a packet's own destination_identities, when it names any,
    replace those of its ``user`` part; otherwise the ``user`` part's apply."""
    async with server.connect("alice") as alice, server.connect("bob") as bob, \
            server.connect("carol") as carol:
        to_bob, to_carol = bob.events(DataReceived), carol.events(DataReceived)
        rtc = alice._rtc
        assert rtc is not None
        both = models.DataPacket(destination_identities=["bob"], user=models.UserPacket(
            payload=b"outer wins", destination_identities=["carol"]))
        inner = models.DataPacket(user=models.UserPacket(
            payload=b"inner applies", destination_identities=["carol"]))
        await rtc.send(RELIABLE, both.SerializeToString())
        await rtc.send(RELIABLE, inner.SerializeToString())
        await alice.local_participant.publish_data(b"end")
        bob_got = [(await next_event(to_bob, DataReceived)).packet.data for _ in range(2)]
        carol_got = [(await next_event(to_carol, DataReceived)).packet.data
                     for _ in range(2)]
        assert bob_got == [b"outer wins", b"end"]
        assert carol_got == [b"inner applies", b"end"]


async def test_a_message_over_the_server_limit_is_dropped_and_the_channel_goes_on(
        server: Server) -> None:
    """Past `room`'s own check (a client that skips it, or another SDK): a data channel
    message over 65,535 bytes is dropped by the server, without a word, and the sender's
    channel stays usable. Observed on livekit-server; the dev server does the same."""
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        events = alice.events(DataReceived)
        rtc = bob._rtc
        assert rtc is not None
        for size in (64_500, 70_000):
            packet = models.DataPacket(user=models.UserPacket(payload=b"x" * size))
            await rtc.send(RELIABLE, packet.SerializeToString())
        await bob.local_participant.publish_data(b"after")
        got = [len((await next_event(events, DataReceived)).packet.data) for _ in range(2)]
        assert got == [64_500, len(b"after")]


async def test_what_is_sent_to_a_newcomer_as_it_joins_reaches_it(server: Server) -> None:
    """A greeter sends each newcomer a packet, an RPC call and a text stream the moment
    it hears of them; that can reach the newcomer while it is still joining. Subscribed
    (and with its method registered) at the top of its ``async with``, before any
    ``await``, the newcomer gets all three, every time. (Found by the testing toolkit:
    the packet used to be published before anyone could subscribe, and was lost.)"""
    rounds = 3
    async with server.connect("greeter") as greeter, anyio.create_task_group() as tg:
        answers: list[str] = []

        async def greet() -> None:
            async for ev in greeter.events(ParticipantConnected):
                assert isinstance(ev, ParticipantConnected)
                who = ev.participant.identity
                await greeter.local_participant.publish_data(
                    f"hello {who}", topic="welcome", destination_identities=[who])
                await greeter.local_participant.send_text(
                    f"stream for {who}", topic="welcome", destination_identities=[who])
                answers.append(await greeter.local_participant.perform_rpc(
                    destination_identity=who, method="hi", payload=who))

        def hi(call: room.RpcInvocationData) -> str:
            return f"hi {call.payload}"

        tg.start_soon(greet)
        for n in range(rounds):
            who = f"newcomer-{n}"
            async with server.connect(who) as r:
                events = r.events(DataReceived)
                streams = r.text_streams("welcome")
                r.local_participant.register_rpc_method("hi", hi)
                with anyio.fail_after(server.presence_delay + 10):
                    ev = await next_event(events, DataReceived)
                    reader = await anext(aiter(streams))
                    text = await reader.read_all()
                assert ev.packet.data == f"hello {who}".encode()
                assert text == f"stream for {who}"
                await wait_until(lambda: len(answers) == n + 1, 10)  # noqa: B023
        assert answers == [f"hi newcomer-{n}" for n in range(rounds)]
        tg.cancel_scope.cancel()
