"""Teardown, cancellation and keepalive: nothing hangs, nothing leaks, departures are seen."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

import anyio
import pytest
from livekit.protocol import rtc

import room
from room.devserver import DevServer
from room.events import Disconnected, ParticipantAttributesChanged, ParticipantDisconnected
from room.transport.signal import connect_signal
from room.transport.url import signal_params
from tests.helpers import client_tasks, next_event

pytestmark = pytest.mark.anyio


async def test_leaving_the_block_stops_every_task(livekit_server: DevServer) -> None:
    srv = livekit_server
    before = client_tasks()
    async with room.Room.connect(srv.url, srv.token("a", room="r")):
        assert len(client_tasks()) > len(before)
    assert client_tasks() == before == []


async def test_cancel_from_outside_leaves_nothing_and_others_see_departure_promptly(
        livekit_server: DevServer) -> None:
    srv = livekit_server
    async with room.Room.connect(srv.url, srv.token("watcher", room="r")) as watcher:
        events = watcher.events(ParticipantDisconnected)
        with anyio.move_on_after(0.5) as scope:
            async with room.Room.connect(srv.url, srv.token("quitter", room="r")):
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert client_tasks() != []  # only the watcher's
        started = time.monotonic()
        ev = await next_event(events, ParticipantDisconnected, timeout=2.0)
        assert ev.participant.identity == "quitter"
        assert ev.participant.disconnect_reason is room.DisconnectReason.CLIENT_INITIATED
        assert time.monotonic() - started < 1.0
    assert client_tasks() == []


async def test_vanished_client_is_dropped_after_the_ping_timeout() -> None:
    """A client that keeps its socket open but stops pinging is dropped by the server."""
    async with DevServer(ping_interval=1, ping_timeout=2) as srv, \
            room.Room.connect(srv.url, srv.token("watcher", room="r")) as watcher:
        events = watcher.events(ParticipantDisconnected)
        async with AsyncExitStack() as stack:
            # A bare signal connection: joined, but no keepalive task.
            await connect_signal(stack, srv.url, srv.token("ghost", room="r"),
                                 signal_params(auto_subscribe=True))
            assert "ghost" in srv.participants("r")
            started = time.monotonic()
            ev = await next_event(events, ParticipantDisconnected, timeout=5.0)
            waited = time.monotonic() - started
            assert ev.participant.identity == "ghost"
            assert ev.participant.disconnect_reason is room.DisconnectReason.CONNECTION_TIMEOUT
            assert 1.5 < waited < 4.0, waited
        # The watcher itself pinged throughout and is still there.
        assert watcher.isconnected()
        assert srv.participants("r") == ["watcher"]


async def test_missing_pongs_end_the_room_with_a_reason() -> None:
    async with DevServer(ping_interval=1, ping_timeout=2) as srv, \
            room.Room.connect(srv.url, srv.token("me", room="r")) as r:
        events = r.events()
        await srv.simulate_partition("r", "me")  # the server goes silent, socket open
        started = time.monotonic()
        got = [ev async for ev in events]
        assert isinstance(got[-1], Disconnected)
        assert got[-1].reason is room.DisconnectReason.SIGNAL_CLOSE
        assert "no pong" in got[-1].message
        assert 1.5 < time.monotonic() - started < 4.0
        assert not r.isconnected()
        await anyio.sleep(0.05)
        assert client_tasks() == []  # the room's tasks ended with it
    assert client_tasks() == []


async def test_slow_consumer_is_cut_off_but_the_room_stays_alive() -> None:
    async with DevServer(ping_interval=1, ping_timeout=2) as srv:
        opts = room.RoomOptions(event_buffer_size=4)
        async with room.Room.connect(srv.url, srv.token("a", room="r"), options=opts) as a, \
                room.Room.connect(srv.url, srv.token("b", room="r")) as b:
            slow = a.events(ParticipantAttributesChanged)  # never read until the end
            fast = a.events(ParticipantAttributesChanged)
            seen = 0
            for i in range(10):
                await b.local_participant.set_attributes({"n": str(i)})
                seen += len([await next_event(fast, ParticipantAttributesChanged)])
            await anyio.sleep(3.0)  # longer than the ping timeout
            assert a.isconnected() and seen == 10
            got: list[ParticipantAttributesChanged] = []
            with pytest.raises(room.EventStreamOverflowError):
                async for ev in slow:
                    assert isinstance(ev, ParticipantAttributesChanged)
                    got.append(ev)
            assert [e.changed_attributes["n"] for e in got] == ["0", "1", "2", "3"]


async def test_dev_server_survives_garbage(livekit_server: DevServer) -> None:
    srv = livekit_server
    host, port = "127.0.0.1", srv.port
    async with room.Room.connect(srv.url, srv.token("a", room="r")) as a:
        # Not HTTP at all.
        async with await anyio.connect_tcp(host, port) as s:
            await s.send(b"\x00\xff garbage\r\n\r\n")
            assert (await s.receive()).startswith(b"HTTP/1.1 400")
        # A joined client sending junk frames, text frames and unknown requests.
        async with AsyncExitStack() as stack:
            conn, _join = await connect_signal(stack, srv.url, srv.token("junk", room="r"),
                                               signal_params(auto_subscribe=True))
            ws = conn._ws
            await ws.send_bytes(b"\xff\xfe\xfd not protobuf")
            await ws.send_text("text frame")
            await conn.send(rtc.SignalRequest(simulate=rtc.SimulateScenario(speaker_update=1)))
            await conn.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=42)))
            while True:  # still served: the ping is answered
                msg = await conn.receive()
                if msg is not None and msg.WhichOneof("message") == "pong_resp":
                    assert msg.pong_resp.last_ping_timestamp == 42
                    break
        await a.local_participant.set_metadata("still fine")
        assert a.isconnected()


async def test_http_endpoints(livekit_server: DevServer) -> None:
    import httpx

    srv = livekit_server
    base = f"http://127.0.0.1:{srv.port}"
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{base}/rtc/v1")
        assert r.status_code == 404  # official SDKs then fall back to /rtc
        r = await client.get(f"{base}/rtc/validate")
        assert r.status_code == 401
        tok = srv.token("v", room="r")
        r = await client.get(f"{base}/rtc/validate", headers={"Authorization": f"Bearer {tok}"})
        assert (r.status_code, r.text) == (200, "success")
        r = await client.get(f"{base}/rtc/validate", params={"access_token": tok})
        assert r.status_code == 200
        r = await client.get(f"{base}/rtc", params={"access_token": tok})
        assert r.status_code == 400


async def test_cancelling_nested_rooms_still_says_goodbye_for_each(
        livekit_server: DevServer) -> None:
    srv = livekit_server
    async with room.Room.connect(srv.url, srv.token("watcher", room="r")) as watcher:
        events = watcher.events(ParticipantDisconnected)
        with anyio.move_on_after(0.3) as scope:
            async with room.Room.connect(srv.url, srv.token("alice", room="r")), \
                    room.Room.connect(srv.url, srv.token("bob", room="r")):
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        gone = [await next_event(events, ParticipantDisconnected, timeout=1.0)
                for _ in range(2)]
        assert sorted(ev.participant.identity for ev in gone) == ["alice", "bob"]
        assert {ev.participant.disconnect_reason for ev in gone} == {
            room.DisconnectReason.CLIENT_INITIATED}
    assert client_tasks() == []


@pytest.mark.parametrize("how", ["exit", "cancel"])
async def test_server_shutdown_is_announced_to_clients(how: str) -> None:
    srv = DevServer()
    stop = anyio.Event()
    server_scope = anyio.CancelScope()

    async def run_server(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with server_scope:
            async with srv:
                task_status.started()
                await stop.wait()

    async with anyio.create_task_group() as tg:
        await tg.start(run_server)
        async with room.Room.connect(srv.url, srv.token("a", room="r")) as a:
            events = a.events(Disconnected)
            if how == "exit":
                stop.set()
            else:
                server_scope.cancel()
            ev = await next_event(events, Disconnected, timeout=3.0)
            assert ev.reason is room.DisconnectReason.SERVER_SHUTDOWN
            assert not a.isconnected()
