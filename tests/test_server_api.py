"""LiveKit's server API (Twirp ``RoomService``) and CORS, on both servers and both backends.

Every method is driven through ``livekit-api`` (as server-side code would) against the
``server`` fixture, the dev server and the real livekit-server, with real `room` clients
in the room observing the effects; refusals are checked for their Twirp code, HTTP status
and message, which the dev server words as livekit-server does. Raw HTTP (httpx) covers
what livekit-api never sends: JSON bodies, bad routes, missing tokens, CORS preflights.
Where the two servers legitimately differ, the test asserts the difference.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import httpx
import pytest
from livekit import api as lkapi
from livekit.protocol import models
from livekit.protocol import room as proto_room

import room
from room.devserver import DevServer
from room.events import (
    DataReceived,
    Disconnected,
    ParticipantAttributesChanged,
    ParticipantMetadataChanged,
    ParticipantNameChanged,
    RoomMetadataChanged,
)
from tests.helpers import collect, known, next_event, wait_until
from tests.livekit import LiveKitServer
from tests.netns import NetNs
from tests.servers import Server, in_asyncio, run_livekit_api

pytestmark = pytest.mark.anyio

T = TypeVar("T")
SERVICE = "/twirp/livekit.RoomService/"
ORIGIN = "http://app.example"


# -- helpers ---------------------------------------------------------------------------


def api_token(server: Server, **grants: Any) -> str:
    """A server API token for ``server`` with the given ``VideoGrants``."""
    tok = lkapi.AccessToken(server.api_key, server.api_secret)
    return tok.with_grants(lkapi.VideoGrants(**grants)).to_jwt()


async def with_token(server: Server, token: str,
                     call: Callable[[lkapi.LiveKitAPI], Awaitable[T]]) -> T:
    """``call(api)`` with a livekit-api client that sends ``token`` as it is."""
    async def go() -> T:
        async with lkapi.LiveKitAPI(server.http_url, token=token) as client:
            return await call(client)

    return await in_asyncio(go)


async def refusal(call: Awaitable[object]) -> lkapi.TwirpError:
    """The error livekit-api raised for ``call``."""
    with pytest.raises(lkapi.TwirpError) as info:
        await call
    return info.value


async def http(server: Server, method: str, path: str, *, body: bytes = b"",
               headers: Mapping[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=15) as client:
        return await client.request(method, path, content=body, headers=headers)


async def twirp_json(server: Server, method: str, doc: object, *,
                     token: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return await http(server, "POST", SERVICE + method, body=json.dumps(doc).encode(),
                      headers=headers)


async def create_room(server: Server, name: str, **fields: Any) -> models.Room:
    request = proto_room.CreateRoomRequest(name=name, **fields)
    return await server.api(lambda a: a.room.create_room(request))


async def room_names(server: Server) -> list[str]:
    resp = await server.api(lambda a: a.room.list_rooms(proto_room.ListRoomsRequest()))
    return sorted(r.name for r in resp.rooms)


# -- rooms -----------------------------------------------------------------------------


async def test_create_room_makes_an_empty_room_that_is_listed(server: Server) -> None:
    made = await server.api(lambda a: a.room.create_room(proto_room.CreateRoomRequest(
        name="lobby", metadata="m0", empty_timeout=60, departure_timeout=5,
        max_participants=7)))
    assert made.sid.startswith("RM_")
    assert (made.name, made.metadata, made.num_participants) == ("lobby", "m0", 0)
    assert (made.empty_timeout, made.departure_timeout, made.max_participants) == (60, 5, 7)
    listed = await server.api(lambda a: a.room.list_rooms(proto_room.ListRoomsRequest()))
    assert [(r.sid, r.metadata) for r in listed.rooms] == [(made.sid, "m0")]


async def test_create_room_returns_an_existing_room_unchanged(server: Server) -> None:
    first = await server.api(lambda a: a.room.create_room(
        proto_room.CreateRoomRequest(name="lobby", metadata="first")))
    again = await server.api(lambda a: a.room.create_room(
        proto_room.CreateRoomRequest(name="lobby", metadata="second", empty_timeout=9)))
    assert (again.sid, again.metadata, again.empty_timeout) == (first.sid, "first", 300)


async def test_default_timeouts_are_livekit_servers(server: Server) -> None:
    made = await server.api(lambda a: a.room.create_room(
        proto_room.CreateRoomRequest(name="lobby")))
    assert (made.empty_timeout, made.departure_timeout) == (300, 20)


async def test_participants_join_the_created_room(server: Server) -> None:
    made = await server.api(lambda a: a.room.create_room(
        proto_room.CreateRoomRequest(name="lobby", metadata="welcome")))
    async with server.connect("alice", room="lobby") as alice:
        assert alice.metadata == "welcome"
        assert await alice.sid() == made.sid


async def test_an_unjoined_room_ends_after_its_empty_timeout(server: Server) -> None:
    await server.api(lambda a: a.room.create_room(
        proto_room.CreateRoomRequest(name="brief", empty_timeout=1)))
    await server.api(lambda a: a.room.create_room(proto_room.CreateRoomRequest(name="stays")))

    async def brief_gone() -> bool:
        return await room_names(server) == ["stays"]

    await wait_until(brief_gone, timeout=6)


async def test_a_room_outlives_its_last_participant_for_its_departure_timeout(
        server: Server) -> None:
    await server.api(lambda a: a.room.create_room(
        proto_room.CreateRoomRequest(name="r", departure_timeout=1)))
    async with server.connect("alice"):
        pass
    listed = await server.api(lambda a: a.room.list_rooms(
        proto_room.ListRoomsRequest(names=["r"])))
    assert [r.name for r in listed.rooms] == ["r"]  # still there, empty

    async def gone() -> bool:
        return await room_names(server) == []

    await wait_until(gone, timeout=6)


async def test_list_rooms_can_name_the_rooms_wanted(server: Server) -> None:
    for name in ("a", "b", "c"):
        await create_room(server, name)
    listed = await server.api(lambda a: a.room.list_rooms(
        proto_room.ListRoomsRequest(names=["c", "a", "nope"])))
    assert sorted(r.name for r in listed.rooms) == ["a", "c"]


async def test_delete_room_disconnects_everyone_with_room_deleted(server: Server) -> None:
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        subs = [alice.events(Disconnected), bob.events(Disconnected)]
        await server.api(lambda a: a.room.delete_room(proto_room.DeleteRoomRequest(room="r")))
        for sub in subs:
            ev = await next_event(sub, Disconnected)
            assert ev.reason is room.DisconnectReason.ROOM_DELETED
        assert not alice.isconnected() and not bob.isconnected()
    assert "r" not in await room_names(server)


async def test_delete_room_ends_an_empty_room(server: Server) -> None:
    await server.api(lambda a: a.room.create_room(proto_room.CreateRoomRequest(name="gone")))
    await server.api(lambda a: a.room.delete_room(proto_room.DeleteRoomRequest(room="gone")))
    assert await room_names(server) == []


# -- participants ----------------------------------------------------------------------


async def test_list_and_get_participants_describe_everyone(server: Server) -> None:
    async with server.connect("alice", name="Alice", metadata="a-meta",
                              attributes={"k": "v"}) as alice, \
            server.connect("ghost", hidden=True):
        listed = await server.api(lambda a: a.room.list_participants(
            proto_room.ListParticipantsRequest(room="r")))
        assert sorted(p.identity for p in listed.participants) == ["alice", "ghost"]
        got = await server.api(lambda a: a.room.get_participant(
            proto_room.RoomParticipantIdentity(room="r", identity="alice")))
        assert got.sid == alice.local_participant.sid
        assert (got.name, got.metadata, dict(got.attributes)) == ("Alice", "a-meta", {"k": "v"})
        assert got.state == models.ParticipantInfo.State.ACTIVE
        assert got.permission.can_publish_data


async def test_list_participants_of_an_unknown_room_is_empty(server: Server) -> None:
    listed = await server.api(lambda a: a.room.list_participants(
        proto_room.ListParticipantsRequest(room="nowhere")))
    assert list(listed.participants) == []


async def test_remove_participant_disconnects_it_with_participant_removed(
        server: Server) -> None:
    async with server.connect("alice"), server.connect("bob") as bob:
        events = bob.events(Disconnected)
        await server.api(lambda a: a.room.remove_participant(
            proto_room.RoomParticipantIdentity(room="r", identity="bob")))
        ev = await next_event(events, Disconnected)
        assert ev.reason is room.DisconnectReason.PARTICIPANT_REMOVED

        async def bob_gone() -> bool:
            return await server.participants("r") == ["alice"]

        await wait_until(bob_gone)


async def test_update_participant_changes_what_everyone_sees(server: Server) -> None:
    async with server.connect("alice") as alice, \
            server.connect("bob", name="Bob", metadata="m0",
                           attributes={"a": "1", "b": "2"}) as bob:
        await known(alice, "bob")
        theirs = alice.events(ParticipantMetadataChanged, ParticipantNameChanged,
                              ParticipantAttributesChanged)
        own = bob.events(ParticipantMetadataChanged)
        info = await server.api(lambda a: a.room.update_participant(
            proto_room.UpdateParticipantRequest(
                room="r", identity="bob", name="Robert", metadata="m1",
                attributes={"a": "", "c": "3"})))
        # Empty values delete attributes; what is not mentioned stays.
        assert (info.name, info.metadata, dict(info.attributes)) == (
            "Robert", "m1", {"b": "2", "c": "3"})
        seen = {type(ev): ev for ev in await collect(theirs, 3)}
        meta = seen[ParticipantMetadataChanged]
        assert isinstance(meta, ParticipantMetadataChanged)
        assert (meta.participant.identity, meta.old_metadata, meta.new_metadata) == (
            "bob", "m0", "m1")
        name = seen[ParticipantNameChanged]
        assert isinstance(name, ParticipantNameChanged)
        assert (name.old_name, name.new_name) == ("Bob", "Robert")
        attrs = seen[ParticipantAttributesChanged]
        assert isinstance(attrs, ParticipantAttributesChanged)
        assert attrs.changed_attributes == {"a": "", "c": "3"}
        mine = await next_event(own, ParticipantMetadataChanged)
        assert mine.participant is bob.local_participant and mine.new_metadata == "m1"
        # livekit-server sends name, metadata and attributes as separate updates.
        await wait_until(lambda: bob.local_participant.attributes == {"b": "2", "c": "3"})


async def test_update_participant_with_empty_fields_changes_nothing(server: Server) -> None:
    async with server.connect("bob", name="Bob", metadata="m0"):
        info = await server.api(lambda a: a.room.update_participant(
            proto_room.UpdateParticipantRequest(room="r", identity="bob")))
        assert (info.name, info.metadata) == ("Bob", "m0")


async def test_revoking_can_publish_data_stops_the_participants_data(
        server: Server) -> None:
    def permission(can_publish_data: bool) -> models.ParticipantPermission:
        return models.ParticipantPermission(
            can_subscribe=True, can_publish=True, can_publish_data=can_publish_data,
            can_update_metadata=True)

    async with server.connect("alice") as alice, server.connect("bob") as bob:
        received = alice.events(DataReceived)
        info = await server.api(lambda a: a.room.update_participant(
            proto_room.UpdateParticipantRequest(room="r", identity="bob",
                                                permission=permission(False))))
        assert not info.permission.can_publish_data
        # A client that knows may refuse by itself; the server drops it anyway.
        with contextlib.suppress(room.RoomError):
            await bob.local_participant.publish_data(b"while revoked")
        await anyio.sleep(0.5)
        await server.api(lambda a: a.room.update_participant(
            proto_room.UpdateParticipantRequest(room="r", identity="bob",
                                                permission=permission(True))))
        await bob.local_participant.publish_data(b"allowed again")
        # One reliable, ordered channel from bob: had the first packet been relayed, it
        # would have arrived first.
        ev = await next_event(received, DataReceived)
        assert ev.packet.data == b"allowed again"


# -- room metadata and data ------------------------------------------------------------


async def test_update_room_metadata_reaches_everyone(server: Server) -> None:
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        subs = [alice.events(RoomMetadataChanged), bob.events(RoomMetadataChanged)]
        updated = await server.api(lambda a: a.room.update_room_metadata(
            proto_room.UpdateRoomMetadataRequest(room="r", metadata="news")))
        assert (updated.name, updated.metadata) == ("r", "news")
        for sub in subs:
            ev = await next_event(sub, RoomMetadataChanged)
            assert (ev.old_metadata, ev.new_metadata) == ("", "news")
        assert alice.metadata == bob.metadata == "news"


async def test_send_data_reaches_everyone_with_no_sender(server: Server) -> None:
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        subs = [alice.events(DataReceived), bob.events(DataReceived)]
        await server.send_data("r", b"from the server", topic="news")
        for sub in subs:
            ev = await next_event(sub, DataReceived)
            pkt = ev.packet
            assert (pkt.data, pkt.topic, pkt.kind) == (
                b"from the server", "news", room.DataPacketKind.RELIABLE)
            assert pkt.participant is None and pkt.participant_identity == ""


async def test_send_data_goes_only_to_its_destinations(server: Server) -> None:
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        to_alice, to_bob = alice.events(DataReceived), bob.events(DataReceived)
        await server.send_data("r", b"for bob", destination_identities=["bob"])
        await server.send_data("r", b"for all")
        assert (await next_event(to_bob, DataReceived)).packet.data == b"for bob"
        # Same reliable channel, in order: alice's first packet is the second one.
        assert (await next_event(to_alice, DataReceived)).packet.data == b"for all"


async def test_send_data_can_be_lossy(server: Server) -> None:
    async with server.connect("alice") as alice:
        received = alice.events(DataReceived)
        for _ in range(10):
            await server.send_data("r", b"lossy", reliable=False)
        ev = await next_event(received, DataReceived)
        assert ev.packet.kind is room.DataPacketKind.LOSSY


async def test_send_data_larger_than_a_client_packet_is_delivered(server: Server) -> None:
    async with server.connect("alice") as alice:
        received = alice.events(DataReceived)
        await server.send_data("r", b"x" * 100_000)
        ev = await next_event(received, DataReceived)
        assert len(ev.packet.data) == 100_000


async def test_send_data_with_a_repeated_nonce_is_dropped(server: Server) -> None:
    nonce = base64.b64encode(uuid.uuid4().bytes).decode()
    token = api_token(server, room_admin=True, room="r")
    async with server.connect("alice") as alice:
        received = alice.events(DataReceived)
        for payload, with_nonce in ((b"first", True), (b"repeat", True), (b"last", False)):
            doc = {"room": "r", "data": base64.b64encode(payload).decode()}
            if with_nonce:
                doc["nonce"] = nonce
            assert (await twirp_json(server, "SendData", doc, token=token)).status_code == 200
        assert (await next_event(received, DataReceived)).packet.data == b"first"
        assert (await next_event(received, DataReceived)).packet.data == b"last"


async def test_send_data_nonce_must_have_16_bytes(server: Server) -> None:
    await server.api(lambda a: a.room.create_room(proto_room.CreateRoomRequest(name="r")))
    resp = await twirp_json(server, "SendData", {"room": "r", "data": "aGk=", "nonce": "AAEC"},
                            token=api_token(server, room_admin=True, room="r"))
    assert resp.status_code == 400
    assert resp.json() == {"code": "invalid_argument",
                           "msg": "nonce should be 16-bytes or not present, got: 3 bytes"}


# -- tracks ----------------------------------------------------------------------------


async def test_muting_a_track_the_server_does_not_know_answers_without_a_track(
        server: Server) -> None:
    async with server.connect("alice"):
        resp = await server.api(lambda a: a.room.mute_published_track(
            proto_room.MuteRoomTrackRequest(room="r", identity="alice", track_sid="TR_none",
                                            muted=True)))
        assert not resp.HasField("track")


async def test_remote_unmute_is_refused(server: Server) -> None:
    async with server.connect("alice"):
        err = await refusal(server.api(lambda a: a.room.mute_published_track(
            proto_room.MuteRoomTrackRequest(room="r", identity="alice", track_sid="TR_x",
                                            muted=False))))
    assert (err.status, err.code, err.message) == (
        412, "failed_precondition", "twirp error unknown: remote unmute not enabled")


# -- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(("grants", "call"), [
    ({"room_admin": True, "room": "r"}, "list_rooms"),
    ({"room_list": True}, "create_room"),
    ({"room_admin": True, "room": "r"}, "delete_room"),
    ({"room_admin": True, "room": "other"}, "list_participants"),
    ({"room_admin": True}, "get_participant"),
    ({"room_create": True, "room_list": True, "room": "r"}, "update_room_metadata"),
    ({"room_join": True, "room": "r"}, "send_data"),
])
async def test_calls_without_the_grant_they_need_are_unauthenticated(
        server: Server, grants: dict[str, Any], call: str) -> None:
    calls: dict[str, Callable[[lkapi.LiveKitAPI], Awaitable[object]]] = {
        "list_rooms": lambda a: a.room.list_rooms(proto_room.ListRoomsRequest()),
        "create_room": lambda a: a.room.create_room(proto_room.CreateRoomRequest(name="r")),
        "delete_room": lambda a: a.room.delete_room(proto_room.DeleteRoomRequest(room="r")),
        "list_participants": lambda a: a.room.list_participants(
            proto_room.ListParticipantsRequest(room="r")),
        "get_participant": lambda a: a.room.get_participant(
            proto_room.RoomParticipantIdentity(room="r", identity="x")),
        "update_room_metadata": lambda a: a.room.update_room_metadata(
            proto_room.UpdateRoomMetadataRequest(room="r", metadata="m")),
        "send_data": lambda a: a.room.send_data(
            proto_room.SendDataRequest(room="r", data=b"x")),
    }
    tok = lkapi.AccessToken(server.api_key, server.api_secret).with_identity("someone")
    token = tok.with_grants(lkapi.VideoGrants(**grants)).to_jwt()
    err = await refusal(with_token(server, token, calls[call]))
    assert (err.status, err.code, err.message) == (401, "unauthenticated", "permissions denied")


async def test_a_call_without_a_token_is_unauthenticated(server: Server) -> None:
    resp = await twirp_json(server, "ListRooms", {})
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"code": "unauthenticated", "msg": "permissions denied"}


async def test_a_bad_token_is_refused_before_twirp_in_plain_text(server: Server) -> None:
    resp = await twirp_json(server, "ListRooms", {}, token="not-a-jwt")
    assert (resp.status_code, resp.text) == (401, "invalid authorization token")
    assert resp.headers["content-type"].startswith("text/plain")
    other = lkapi.AccessToken("otherkey", "othersecret").with_grants(
        lkapi.VideoGrants(room_list=True)).to_jwt()
    resp = await twirp_json(server, "ListRooms", {}, token=other)
    assert (resp.status_code, resp.text) == (401, "invalid API key: otherkey")
    resp = await http(server, "POST", SERVICE + "ListRooms", body=b"{}", headers={
        "content-type": "application/json", "authorization": "Basic abc"})
    assert (resp.status_code, resp.text) == (
        401, "invalid authorization header. Must start with Bearer ")


async def test_unknown_participants_are_not_found(server: Server) -> None:
    await server.api(lambda a: a.room.create_room(proto_room.CreateRoomRequest(name="r")))
    for room_name in ("r", "nowhere"):
        for call in (
            lambda a, n=room_name: a.room.get_participant(
                proto_room.RoomParticipantIdentity(room=n, identity="nobody")),
            lambda a, n=room_name: a.room.remove_participant(
                proto_room.RoomParticipantIdentity(room=n, identity="nobody")),
            lambda a, n=room_name: a.room.update_participant(
                proto_room.UpdateParticipantRequest(room=n, identity="nobody", metadata="m")),
        ):
            err = await refusal(server.api(call))
            assert (err.status, err.code, err.message) == (
                404, "not_found", "twirp error unknown: participant does not exist")


async def test_unknown_rooms_are_not_found(server: Server) -> None:
    for call in (
        lambda a: a.room.delete_room(proto_room.DeleteRoomRequest(room="nowhere")),
        lambda a: a.room.update_room_metadata(
            proto_room.UpdateRoomMetadataRequest(room="nowhere", metadata="m")),
    ):
        err = await refusal(server.api(call))
        assert (err.status, err.code, err.message) == (
            404, "not_found", "twirp error unknown: requested room does not exist")


async def test_data_or_mutes_for_nobody_are_unavailable(server: Server) -> None:
    # livekit-server finds no node to hand them to (after its internal 3 s wait).
    for call in (
        lambda a: a.room.send_data(proto_room.SendDataRequest(room="nowhere", data=b"x")),
        lambda a: a.room.mute_published_track(proto_room.MuteRoomTrackRequest(
            room="nowhere", identity="nobody", track_sid="TR_x", muted=True)),
    ):
        err = await refusal(server.api(call))
        assert (err.status, err.code, err.message) == (
            503, "unavailable", "twirp error unknown: no response from servers")


async def test_limits_are_checked_before_the_grant(server: Server) -> None:
    resp = await twirp_json(server, "UpdateParticipant",
                            {"room": "r", "identity": "x", "name": "n" * 257})
    assert resp.status_code == 400
    assert resp.json() == {"code": "invalid_argument", "msg": "name length exceeds limits 256",
                           "meta": {"argument": "name length exceeds limits"}}
    resp = await twirp_json(server, "UpdateRoomMetadata",
                            {"room": "r", "metadata": "m" * (512 * 1024 + 1)})
    assert resp.json() == {"code": "invalid_argument",
                           "msg": "metadata size exceeds limits 524288",
                           "meta": {"argument": "metadata size exceeds limits"}}


async def test_room_names_are_limited(server: Server) -> None:
    err = await refusal(server.api(lambda a: a.room.create_room(
        proto_room.CreateRoomRequest(name="n" * 257))))
    assert (err.status, err.code, err.message) == (
        400, "invalid_argument",
        "twirp error unknown: room name length exceeds limits: max length 256")


# -- Twirp over HTTP ------------------------------------------------------------------


async def test_json_answers_use_proto_field_names_and_show_defaults(server: Server) -> None:
    token = api_token(server, room_create=True)
    # Requests may use either spelling.
    resp = await twirp_json(server, "CreateRoom", {"name": "j", "emptyTimeout": 40,
                                                   "departure_timeout": 9}, token=token)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    doc = resp.json()
    assert (doc["name"], doc["empty_timeout"], doc["departure_timeout"]) == ("j", 40, 9)
    assert (doc["metadata"], doc["num_participants"], doc["max_participants"]) == ("", 0, 0)
    assert isinstance(doc["creation_time"], str)  # int64 is a JSON string


async def test_json_requests_that_do_not_decode_are_malformed(server: Server) -> None:
    token = api_token(server, room_list=True)
    for body in (b"", b"null", b"[]", b"{bad", b'{"names": 5}'):
        resp = await http(server, "POST", SERVICE + "ListRooms", body=body, headers={
            "content-type": "application/json", "authorization": f"Bearer {token}"})
        assert resp.status_code == 400, body
        assert resp.json() == {"code": "malformed",
                               "msg": "the json request could not be decoded"}
    resp = await http(server, "POST", SERVICE + "ListRooms", body=b'{"zzz": 1} trailing',
                      headers={"content-type": "application/json",
                               "authorization": f"Bearer {token}"})
    assert resp.status_code == 200  # unknown fields and what follows the object: ignored


async def test_protobuf_requests_that_do_not_decode_are_malformed(server: Server) -> None:
    resp = await http(server, "POST", SERVICE + "ListRooms", body=b"\xff\xff", headers={
        "content-type": "application/protobuf",
        "authorization": f"Bearer {api_token(server, room_list=True)}"})
    assert resp.status_code == 400
    assert resp.json() == {"code": "malformed",
                           "msg": "the protobuf request could not be decoded"}


async def test_bad_routes_are_twirp_errors(server: Server) -> None:
    auth = {"authorization": f"Bearer {api_token(server, room_list=True)}"}
    json_type = {"content-type": "application/json", **auth}
    cases = [
        ("GET", SERVICE + "ListRooms", json_type,
         'unsupported method "GET" (only POST is allowed)'),
        ("POST", SERVICE + "Nope", json_type,
         'no handler for path "/twirp/livekit.RoomService/Nope"'),
        ("POST", SERVICE + "ListRooms", {"content-type": "text/plain", **auth},
         'unexpected Content-Type: "text/plain"'),
        ("POST", SERVICE + "ListRooms", auth, 'unexpected Content-Type: ""'),
    ]
    for method, path, headers, msg in cases:
        resp = await http(server, method, path, body=b"{}", headers=headers)
        assert resp.status_code == 404
        assert resp.json() == {"code": "bad_route", "msg": msg,
                               "meta": {"twirp_invalid_route": f"{method} {path}"}}


async def raw_exchange(server: Server, head: bytes, body: bytes = b"",
                       *, wait_for_continue: bool = False) -> bytes:
    """Send ``head`` (and then ``body``) on a fresh connection; everything answered."""
    url = httpx.URL(server.http_url)
    assert url.port is not None
    async with await anyio.connect_tcp(url.host, url.port) as stream:
        await stream.send(head)
        answer = b""
        if wait_for_continue:
            with anyio.fail_after(5):
                while b"\r\n\r\n" not in answer:
                    answer += await stream.receive()
            assert answer.startswith(b"HTTP/1.1 100 Continue\r\n"), answer
        await stream.send(body)
        with anyio.fail_after(10), contextlib.suppress(anyio.EndOfStream):
            while True:  # until the server closes (the request says Connection: close)
                answer += await stream.receive()
    return answer


async def test_a_chunked_body_is_read(server: Server) -> None:
    token = api_token(server, room_list=True)
    head = (f"POST {SERVICE}ListRooms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    answer = await raw_exchange(server, head, b"1\r\n{\r\n1\r\n}\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"rooms": []}


async def test_a_client_expecting_100_continue_gets_it(server: Server) -> None:
    token = api_token(server, room_list=True)
    head = (f"POST {SERVICE}ListRooms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            "Content-Length: 2\r\nExpect: 100-continue\r\n\r\n").encode()
    answer = await raw_exchange(server, head, b"{}", wait_for_continue=True)
    final = answer.split(b"\r\n\r\n", 1)[1]  # after the 100 Continue
    assert final.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(final.split(b"\r\n\r\n", 1)[1]) == {"rooms": []}


async def test_a_body_over_the_limit_is_refused_by_the_dev_server_only(
        server: Server) -> None:
    body = proto_room.ListRoomsRequest(names=["x" * (5 * 1024 * 1024)]).SerializeToString()
    resp = await http(server, "POST", SERVICE + "ListRooms", body=body, headers={
        "content-type": "application/protobuf",
        "authorization": f"Bearer {api_token(server, room_list=True)}"})
    # livekit-server reads bodies of any size; the dev server stops at 4 MiB.
    if server.kind == "dev":
        assert (resp.status_code, resp.text) == (413, "request body too large")
    else:
        assert resp.status_code == 200


# -- CORS ------------------------------------------------------------------------------


def cors_headers(resp: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items()
            if k.startswith("access-control-") or k == "vary"}


async def test_answers_let_any_origin_read_them(server: Server) -> None:
    for method, path in (("GET", "/rtc/v1"), ("GET", "/nope"), ("POST", SERVICE + "ListRooms")):
        resp = await http(server, method, path, headers={"origin": ORIGIN})
        assert cors_headers(resp) == {"access-control-allow-origin": ORIGIN,
                                      "access-control-expose-headers": "*",
                                      "vary": "Origin"}, path


async def test_answers_without_an_origin_only_vary_on_it(server: Server) -> None:
    resp = await http(server, "GET", "/rtc/v1")
    assert resp.status_code == 404  # what makes clients fall back to /rtc
    assert cors_headers(resp) == {"vary": "Origin"}


async def test_join_checks_allow_every_origin(server: Server) -> None:
    for path in ("/rtc/validate", "/rtc/v1/validate"):
        resp = await http(server, "GET", path)
        assert cors_headers(resp) == {"access-control-allow-origin": "*", "vary": "Origin"}
        resp = await http(server, "GET", path, headers={"origin": ORIGIN})
        assert cors_headers(resp) == {"access-control-allow-origin": "*",
                                      "access-control-expose-headers": "*",
                                      "vary": "Origin"}
    # livekit-client falls back to /rtc on a 404 here; livekit-server serves /rtc/v1.
    assert resp.status_code == (404 if server.kind == "dev" else 401)


async def test_preflight_for_a_twirp_call_allows_what_it_asks(server: Server) -> None:
    resp = await http(server, "OPTIONS", SERVICE + "ListRooms", headers={
        "origin": ORIGIN, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type"})
    assert resp.status_code == 204 and resp.content == b""
    assert cors_headers(resp) == {
        "access-control-allow-origin": ORIGIN,
        "access-control-allow-methods": "POST",
        "access-control-allow-headers": "authorization,content-type",
        "access-control-max-age": "86400",
        "vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }


async def test_preflight_for_a_method_not_allowed_allows_nothing(server: Server) -> None:
    resp = await http(server, "OPTIONS", SERVICE + "ListRooms", headers={
        "origin": ORIGIN, "access-control-request-method": "PUT"})
    assert resp.status_code == 204
    assert cors_headers(resp) == {
        "vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}


async def test_a_browser_can_call_the_api_cross_origin(server: Server) -> None:
    resp = await http(server, "POST", SERVICE + "ListRooms", body=b"{}", headers={
        "origin": ORIGIN, "content-type": "application/json",
        "authorization": f"Bearer {api_token(server, room_list=True)}"})
    assert resp.status_code == 200 and resp.json() == {"rooms": []}
    assert resp.headers["access-control-allow-origin"] == ORIGIN


# The same requests to both servers at once: every CORS header must match.
CORS_PROBES: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/", {}),
    ("GET", "/", {"origin": ORIGIN}),
    ("GET", "/rtc/v1", {"origin": ORIGIN}),
    ("GET", "/rtc/validate", {}),
    ("GET", "/rtc/validate", {"origin": ORIGIN}),
    ("GET", "/rtc/v1/validate", {"origin": ORIGIN}),
    ("OPTIONS", "/rtc/validate", {}),
    ("OPTIONS", "/rtc/validate", {"origin": ORIGIN}),
    ("GET", "/nope", {"origin": ORIGIN}),
    ("PUT", "/nope", {"origin": ORIGIN}),
    ("POST", SERVICE + "ListRooms", {"content-type": "application/json"}),
    ("POST", SERVICE + "ListRooms", {"content-type": "application/json", "origin": ORIGIN}),
    ("POST", SERVICE + "ListRooms", {"authorization": "Basic x", "origin": ORIGIN}),
    ("OPTIONS", SERVICE + "ListRooms", {"origin": ORIGIN,
                                        "access-control-request-method": "POST",
                                        "access-control-request-headers":
                                            "authorization,content-type,x-twirp"}),
    ("OPTIONS", "/rtc/validate", {"origin": ORIGIN, "access-control-request-method": "GET"}),
    ("OPTIONS", "/rtc", {"origin": ORIGIN, "access-control-request-method": "DELETE"}),
    ("OPTIONS", "/", {"origin": ORIGIN, "access-control-request-method": "PUT"}),
    ("OPTIONS", "/", {"access-control-request-method": "POST"}),
]


async def test_cors_answers_match_livekit_server(
        livekit_netns: NetNs, tmp_path: Path) -> None:
    lk = LiveKitServer(livekit_netns, log_dir=tmp_path)
    await anyio.to_thread.run_sync(lk.start)
    try:
        async with DevServer() as dev:
            servers = {"dev": Server.of_dev(dev), "livekit": Server.of_livekit(lk)}
            for method, path, headers in CORS_PROBES:
                answers = {kind: await http(srv, method, path, body=b"{}" if method == "POST"
                                            else b"", headers=headers)
                           for kind, srv in servers.items()}
                what = f"{method} {path} {headers}"
                assert cors_headers(answers["dev"]) == cors_headers(answers["livekit"]), what
                if path != "/rtc/v1/validate":  # served by livekit-server only
                    assert answers["dev"].status_code == answers["livekit"].status_code, what
    finally:
        await anyio.to_thread.run_sync(lk.stop)


# -- the dev server's own controls -----------------------------------------------------


async def test_dev_server_controls_see_what_the_api_does() -> None:
    async with DevServer(presence_interval=0) as dev:
        await run_livekit_api(dev.url, dev.api_key, dev.api_secret, lambda a: a.room.create_room(
            proto_room.CreateRoomRequest(name="made", metadata="m")))
        assert dev.rooms() == ["made"]
        assert dev.participants("made") == []
        await dev.update_room_metadata("made", "changed")
        listed = await run_livekit_api(dev.url, dev.api_key, dev.api_secret,
                                       lambda a: a.room.list_rooms(proto_room.ListRoomsRequest()))
        assert [r.metadata for r in listed.rooms] == ["changed"]
        with pytest.raises(LookupError):
            await dev.remove_participant("made", "nobody")
        with pytest.raises(LookupError):
            await dev.update_room_metadata("nowhere", "m")
        with pytest.raises(ValueError, match="metadata size exceeds limits"):
            await dev.update_room_metadata("made", "m" * (512 * 1024 + 1))
