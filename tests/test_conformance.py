"""Differential conformance: one scripted session against both servers, same signalling.

The same script (two participants join, one changes its metadata, attributes and name,
the server API changes the room's metadata, one leaves) runs against `room`'s dev server
(with livekit-server's defaults) and against livekit-server. Each client records every
signal response it receives; the normalized sequences (message types, order, and the
fields a client acts on) must be equal. Timing-only traffic (keepalive, token refresh,
WebRTC negotiation, connection quality) is left out; room updates are compared by the
metadata they carry, since livekit-server also sends them when only the participant count
changes. The script waits past the presence batch interval (3 s) after every join and
leave, so the order does not depend on when a batch happens to go out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from livekit.protocol import models, rtc

import room.room
from room.engine import Engine
from tests.conftest import start_dev_server, start_livekit_server
from tests.servers import Server

pytestmark = pytest.mark.anyio

PRESENCE = 3.0  # livekit-server's presence batch interval, and the dev server's default
SETTLE = PRESENCE + 0.7

Record = dict[str, list[tuple[Any, ...]]]
_IGNORED = {"pong_resp", "pong", "refresh_token", "offer", "answer", "trickle",
            "connection_quality", "speakers_changed"}


def normalize(msg: rtc.SignalResponse) -> list[tuple[Any, ...]]:
    """The parts of ``msg`` a client acts on (nothing for timing-only traffic)."""
    which = msg.WhichOneof("message")
    if which in _IGNORED:
        return []
    if which == "join":
        j = msg.join
        return [("join", j.room.name, j.room.metadata, _who(j.participant),
                 sorted(p.identity for p in j.other_participants), j.subscriber_primary,
                 j.ping_interval, j.ping_timeout)]
    if which == "update":
        return [("update", *_who(p)) for p in msg.update.participants]
    if which == "room_update":
        return [("room_update", msg.room_update.room.metadata)]
    if which == "request_response":
        r = msg.request_response
        return [("request_response", rtc.RequestResponse.Reason.Name(r.reason), r.message)]
    if which == "leave":
        return [("leave", models.DisconnectReason.Name(msg.leave.reason),
                 rtc.LeaveRequest.Action.Name(msg.leave.action))]
    return [(which or "?",)]


def _who(p: models.ParticipantInfo) -> tuple[Any, ...]:
    state = models.ParticipantInfo.State.Name(p.state)
    reason = (models.DisconnectReason.Name(p.disconnect_reason)
              if p.state == models.ParticipantInfo.State.DISCONNECTED else "")
    return (p.identity, state, p.name, p.metadata, sorted(p.attributes.items()), reason)


def _dedupe_room_updates(seen: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Room updates that change nothing a client sees (the metadata) are left out."""
    out: list[tuple[Any, ...]] = []
    metadata = ""
    for item in seen:
        if item[0] == "join":
            metadata = item[2]
        if item[0] == "room_update":
            if item[1] == metadata:
                continue
            metadata = item[1]
        out.append(item)
    return out


async def play(server: Server, monkeypatch: pytest.MonkeyPatch) -> Record:
    """Run the script against ``server``; what each client received, normalized."""
    record: Record = {"alice": [], "bob": []}
    by_engine: dict[int, list[tuple[Any, ...]]] = {}  # a message may come before the join
    original = Engine._dispatch

    def tap(self: Engine, link: Any, msg: rtc.SignalResponse) -> None:
        by_engine.setdefault(id(self), []).extend(normalize(msg))
        original(self, link, msg)

    with monkeypatch.context() as patch:
        patch.setattr(Engine, "_dispatch", tap)
        # The join responses arrive before the tap can see them (they open the room).
        async with server.connect("alice", room="conf") as alice:
            record["alice"].append(_joined(alice))
            alice_seen = by_engine.setdefault(id(alice._engine), [])
            await anyio.sleep(SETTLE)
            async with server.connect("bob", room="conf", name="Bob", metadata="m0",
                                      attributes={"a": "1"}) as bob:
                record["bob"].append(_joined(bob))
                bob_seen = by_engine.setdefault(id(bob._engine), [])
                await anyio.sleep(SETTLE)
                me = bob.local_participant
                await me.set_metadata("m1")
                await me.set_attributes({"a": "", "b": "2"})
                await me.set_name("Robert")
                await server.update_room_metadata("conf", "topic")
                await anyio.sleep(1.0)
            await anyio.sleep(SETTLE)
    record["alice"] += alice_seen
    record["bob"] += bob_seen
    return {who: _dedupe_room_updates(seen) for who, seen in record.items()}


def _joined(r: room.room.Room) -> tuple[Any, ...]:
    me = r.local_participant
    keepalive = r._engine.keepalive
    assert keepalive is not None
    return ("join", r.name, r.metadata,
            (me.identity, "?", me.name, me.metadata, sorted(me.attributes.items()), ""),
            sorted(r.remote_participants), r._rtc is not None and r._rtc._subscriber_primary,
            int(keepalive.interval), int(keepalive.timeout))


@pytest.fixture
async def both(request: pytest.FixtureRequest, tmp_path: Path
               ) -> AsyncIterator[tuple[Server, Server]]:
    async with start_dev_server(request, presence_interval=PRESENCE) as dev, \
            start_livekit_server(request, tmp_path) as lk:
        yield dev, lk


# What the servers say does not depend on the client's backend (the client's handling of
# it runs on both backends everywhere else): one backend.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_one_session_gets_the_same_signalling_from_both_servers(
        both: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch) -> None:
    dev, lk = both
    from_dev = await play(dev, monkeypatch)
    from_livekit = await play(lk, monkeypatch)
    for who in ("alice", "bob"):
        assert from_dev[who] == from_livekit[who], (
            f"{who} was told differently:\n  dev:     {from_dev[who]}\n"
            f"  livekit: {from_livekit[who]}")
    # And it is the session the script played (so the comparison compares something).
    alice = from_livekit["alice"]
    assert ("update", "bob", "DISCONNECTED", "Robert", "m1", [("b", "2")],
            "CLIENT_INITIATED") in alice
    assert ("room_update", "topic") in alice
