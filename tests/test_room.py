"""Two real `room` clients on the real dev server, over real sockets, on both backends."""

from __future__ import annotations

import pytest

import room
from room.events import (
    Disconnected,
    ParticipantAttributesChanged,
    ParticipantConnected,
    ParticipantDisconnected,
    ParticipantMetadataChanged,
    ParticipantNameChanged,
    RoomMetadataChanged,
)
from tests.helpers import client_tasks, collect, known, next_event, wait_until
from tests.servers import Server

pytestmark = pytest.mark.anyio


async def test_participants_see_each_other_join_and_leave(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice:
        assert alice.name == "r"
        assert alice.isconnected()
        assert alice.connection_state is room.ConnectionState.CONNECTED
        assert (await alice.sid()).startswith("RM_")
        assert alice.local_participant.identity == "alice"
        assert dict(alice.remote_participants) == {}
        events = alice.events()
        async with srv.connect("bob", name="Bob") as bob:
            # Participants already in the room are known when connect() returns.
            assert list(bob.remote_participants) == ["alice"]
            joined = await next_event(events, ParticipantConnected)
            assert joined.participant.identity == "bob"
            assert joined.participant.name == "Bob"
            assert alice.remote_participants["bob"] is joined.participant
        left = await next_event(events, ParticipantDisconnected)
        assert left.participant.identity == "bob"
        assert left.participant.disconnect_reason is room.DisconnectReason.CLIENT_INITIATED
        assert "bob" not in alice.remote_participants
        assert await srv.participants("r") == ["alice"]


async def test_metadata_name_and_attribute_changes_carry_old_and_new(
        server: Server) -> None:
    srv = server
    tok = srv.token("bob", room="r", name="Bob", metadata="m0", attributes={"a": "1", "b": "2"})
    async with srv.connect("alice") as alice, \
            room.Room.connect(srv.url, tok, options=srv.options()) as bob:
        await known(alice, "bob")
        events = alice.events(ParticipantMetadataChanged, ParticipantNameChanged,
                              ParticipantAttributesChanged)
        mine = bob.events(ParticipantMetadataChanged)
        me = bob.local_participant
        await me.set_metadata("m1")
        # Returns only once applied: the local state already shows it.
        assert me.metadata == "m1"
        await me.set_name("Robert")
        assert me.name == "Robert"
        await me.set_attributes({"a": "10", "b": "", "c": "3"})
        assert me.attributes == {"a": "10", "c": "3"}

        ev1 = await next_event(events, ParticipantMetadataChanged)
        assert (ev1.participant.identity, ev1.old_metadata, ev1.new_metadata) == (
            "bob", "m0", "m1")
        ev2 = await next_event(events, ParticipantNameChanged)
        assert (ev2.old_name, ev2.new_name) == ("Bob", "Robert")
        ev3 = await next_event(events, ParticipantAttributesChanged)
        assert ev3.changed_attributes == {"a": "10", "b": "", "c": "3"}
        remote_bob = alice.remote_participants["bob"]
        assert (remote_bob.name, remote_bob.metadata, remote_bob.attributes) == (
            "Robert", "m1", {"a": "10", "c": "3"})
        # The local participant gets the change events about itself too.
        own = await next_event(mine, ParticipantMetadataChanged)
        assert own.participant is me and own.new_metadata == "m1"


async def test_room_metadata_changes_reach_everyone(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice, \
            srv.connect("bob") as bob:
        subs = [alice.events(RoomMetadataChanged), bob.events(RoomMetadataChanged)]
        await srv.update_room_metadata("r", "first")
        await srv.update_room_metadata("r", "second")
        for sub in subs:
            a, b = await collect(sub, 2)
            assert isinstance(a, RoomMetadataChanged) and isinstance(b, RoomMetadataChanged)
            assert (a.old_metadata, a.new_metadata) == ("", "first")
            assert (b.old_metadata, b.new_metadata) == ("first", "second")
        assert alice.metadata == bob.metadata == "second"


async def test_every_subscriber_sees_the_same_order(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice, \
            srv.connect("bob") as bob:
        subs = [alice.events() for _ in range(3)]
        for i in range(20):
            await bob.local_participant.set_attributes({"i": str(i)})
        seen = [[repr(e) for e in await collect(s, 20)] for s in subs]
        assert seen[0] == seen[1] == seen[2]
        assert len(seen[0]) == 20


async def test_update_refused_without_permission(server: Server) -> None:
    srv = server
    tok = srv.token("bob", room="r", can_update_own_metadata=False)
    async with room.Room.connect(srv.url, tok, options=srv.options()) as bob:
        with pytest.raises(room.RequestRefusedError) as info:
            await bob.local_participant.set_metadata("nope")
        assert info.value.reason == "NOT_ALLOWED"
        assert bob.local_participant.metadata == ""
        assert bob.isconnected()


async def test_update_over_the_size_limit_is_refused(server: Server) -> None:
    srv = server
    async with srv.connect("bob") as bob:
        with pytest.raises(room.RequestRefusedError) as info:
            await bob.local_participant.set_metadata("x" * (512 * 1024 + 1))  # livekit's limit
        assert info.value.reason == "LIMIT_EXCEEDED"


async def test_bad_arguments_raise_before_sending(server: Server) -> None:
    srv = server
    async with srv.connect("bob") as bob:
        me = bob.local_participant
        with pytest.raises(TypeError):
            await me.set_metadata(5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await me.set_attributes({"a": 1})  # type: ignore[dict-item]
        with pytest.raises(TypeError):
            bob.events(int)  # type: ignore[arg-type]


async def test_removed_participant_gets_disconnected_with_reason(
        server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice, \
            srv.connect("bob") as bob:
        await known(alice, "bob")
        bob_events = bob.events()
        alice_events = alice.events(ParticipantDisconnected)
        await srv.remove_participant("r", "bob")
        got = [ev async for ev in bob_events]  # ends by itself after Disconnected
        assert isinstance(got[-1], Disconnected)
        assert got[-1].reason is room.DisconnectReason.PARTICIPANT_REMOVED
        assert not bob.isconnected()
        assert bob.disconnect_reason is room.DisconnectReason.PARTICIPANT_REMOVED
        with pytest.raises(room.ConnectionClosedError):
            await bob.local_participant.set_metadata("late")
        gone = await next_event(alice_events, ParticipantDisconnected,
                                timeout=srv.presence_delay + 2)
        assert gone.participant.disconnect_reason is room.DisconnectReason.PARTICIPANT_REMOVED
        # The room's background tasks are already gone, before the block ends.
        await wait_until(lambda: not any("bob" in t for t in client_tasks()))
    assert client_tasks() == []


async def test_duplicate_identity_replaces_the_older_session(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice:
        alice_events = alice.events(ParticipantConnected, ParticipantDisconnected)
        async with srv.connect("bob") as first:
            first_events = first.events(Disconnected)
            await next_event(alice_events, ParticipantConnected)
            async with srv.connect("bob") as second:
                ev = await next_event(first_events, Disconnected)
                assert ev.reason is room.DisconnectReason.DUPLICATE_IDENTITY
                gone = await next_event(alice_events, ParticipantDisconnected)
                back = await next_event(alice_events, ParticipantConnected)
                assert gone.participant.sid == first.local_participant.sid
                assert back.participant.sid == second.local_participant.sid
                assert alice.remote_participants["bob"].sid == second.local_participant.sid


async def test_hidden_participants_are_not_seen(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice:
        events = alice.events(ParticipantConnected)
        async with srv.connect("ghost", hidden=True), \
                srv.connect("bob"):
            ev = await next_event(events, ParticipantConnected)
            assert ev.participant.identity == "bob"
            assert sorted(alice.remote_participants) == ["bob"]
            assert await srv.participants("r") == ["alice", "bob", "ghost"]


async def test_disconnect_is_idempotent_and_ends_iterators(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as alice:
        events = alice.events()
        await alice.disconnect()
        await alice.disconnect()
        got = [ev async for ev in events]
        assert [type(e).__name__ for e in got] == ["ConnectionStateChanged", "Disconnected"]
        assert [e async for e in alice.events()] == []  # subscribed after the end
        assert not alice.isconnected()
    assert client_tasks() == []

    async def nobody_left() -> bool:
        return await srv.participants("r") == []

    await wait_until(nobody_left)


async def test_user_exception_propagates_unwrapped(server: Server) -> None:
    srv = server
    with pytest.raises(KeyError):
        async with srv.connect("alice"):
            raise KeyError("mine")
    assert client_tasks() == []
