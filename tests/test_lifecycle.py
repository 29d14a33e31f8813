"""Teardown, cancellation and keepalive: nothing hangs, nothing leaks, departures are seen."""

from __future__ import annotations

import contextlib
import time
from contextlib import AsyncExitStack

import anyio
import anyio.to_thread
import httpx
import pytest
from livekit.protocol import rtc

import room
from room.devserver import DevServer
from room.events import Disconnected, ParticipantAttributesChanged, ParticipantDisconnected
from room.transport.signal import SignalClosed, connect_signal
from room.transport.url import signal_params
from tests.conftest import livekit_once
from tests.helpers import client_tasks, known, next_event, wait_until
from tests.servers import Server

pytestmark = pytest.mark.anyio


async def test_leaving_the_block_stops_every_task(server: Server) -> None:
    before = client_tasks()
    async with server.connect("a"):
        assert len(client_tasks()) > len(before)
    assert client_tasks() == before == []


async def test_cancel_from_outside_leaves_nothing_and_others_see_departure_promptly(
        server: Server) -> None:
    async with server.connect("watcher") as watcher:
        events = watcher.events(ParticipantDisconnected)
        with anyio.CancelScope() as scope:
            async with server.connect("quitter"):
                await known(watcher, "quitter")
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert client_tasks() != []  # only the watcher's
        started = time.monotonic()
        # The server was told (LeaveRequest), so it announces the departure at its next
        # presence batch instead of after a ping timeout.
        ev = await next_event(events, ParticipantDisconnected,
                              timeout=server.presence_delay + 2.0)
        assert ev.participant.identity == "quitter"
        assert ev.participant.disconnect_reason is room.DisconnectReason.CLIENT_INITIATED
        assert time.monotonic() - started < server.presence_delay + 1.0
    assert client_tasks() == []


@pytest.mark.devserver(join_timeout=2)
async def test_a_participant_whose_webrtc_never_connects_is_removed(
        server: Server, anyio_backend: str) -> None:
    """Joined by signalling only, never connecting WebRTC: removed after the server's join
    timeout (livekit-server: 60 s; the dev server here: 2 s) with JOIN_FAILURE. Merely
    not pinging does not get a client dropped, on either server."""
    if server.livekit is not None and anyio_backend == "trio":
        pytest.skip("a server behaviour (livekit-server's 60 s join timeout): the "
                    "asyncio run covers it; the client side runs on both backends with "
                    "the dev server")
    timeout = server.dev.join_timeout if server.dev is not None else 60.0
    async with server.connect("watcher") as watcher:
        events = watcher.events(ParticipantDisconnected)
        async with AsyncExitStack() as stack:
            # A bare signal connection: joined, but no keepalive and no WebRTC.
            conn, _join = await connect_signal(stack, server.url,
                                               server.token("ghost", room="r"),
                                               signal_params(auto_subscribe=True))
            started = time.monotonic()
            told: list[rtc.LeaveRequest] = []

            async def read_ghost_signal() -> None:
                with contextlib.suppress(SignalClosed):
                    while True:
                        msg = await conn.receive()
                        if msg is not None and msg.WhichOneof("message") == "leave":
                            told.append(msg.leave)

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_ghost_signal)
                assert "ghost" in await server.participants("r")
                await known(watcher, "ghost")
                ev = await next_event(events, ParticipantDisconnected,
                                      timeout=timeout + server.presence_delay + 5.0)
                waited = time.monotonic() - started
                assert ev.participant.identity == "ghost"
                assert ev.participant.disconnect_reason is room.DisconnectReason.JOIN_FAILURE
                assert timeout - 1.0 < waited, waited
                # The ghost itself is told why.
                await wait_until(lambda: bool(told))
                assert room.DisconnectReason.from_wire(told[0].reason) is (
                    room.DisconnectReason.JOIN_FAILURE)
                tg.cancel_scope.cancel()
        # The watcher itself is still there.
        assert watcher.isconnected()
        assert await server.participants("r") == ["watcher"]


@pytest.mark.devserver(ping_interval=1, ping_timeout=2)
@livekit_once
async def test_missing_pongs_end_the_room_with_a_reason(server: Server) -> None:
    """The server goes silent with the socket open: the dev server by its partition hook
    (for this one participant), livekit-server by being stopped (SIGSTOP). Without a
    reconnect policy that ends the room (with one, see tests/test_reconnect.py)."""
    async with server.connect("me", options=room.RoomOptions(reconnect=None)) as r:
        events = r.events()
        if server.dev is not None:
            await server.dev.simulate_partition("r", "me")
        else:
            server.freeze()
        try:
            started = time.monotonic()
            with anyio.fail_after(server.ping_timeout + 5):
                got = [ev async for ev in events]
            assert isinstance(got[-1], Disconnected)
            assert got[-1].reason is room.DisconnectReason.SIGNAL_CLOSE
            assert "no pong" in got[-1].message
            waited = time.monotonic() - started
            assert server.ping_timeout - 1.5 < waited < server.ping_timeout + 2.0, waited
            assert not r.isconnected()
            # The room's tasks end with it, within the teardown bound (2 s): a server that
            # answers nothing cannot complete closing handshakes (WebSocket, TURN).
            await wait_until(lambda: client_tasks() == [], timeout=3.0)
        finally:
            if server.livekit is not None:
                server.thaw()
    assert client_tasks() == []


@pytest.mark.devserver(ping_interval=1, ping_timeout=2)
@livekit_once
async def test_slow_consumer_is_cut_off_but_the_room_stays_alive(server: Server) -> None:
    opts = room.RoomOptions(event_buffer_size=4)
    async with server.connect("a", options=opts) as a, server.connect("b") as b:
        await known(a, "b")
        slow = a.events(ParticipantAttributesChanged)  # never read until the end
        fast = a.events(ParticipantAttributesChanged)
        seen = 0
        for i in range(10):
            await b.local_participant.set_attributes({"n": str(i)})
            seen += len([await next_event(fast, ParticipantAttributesChanged)])
        await anyio.sleep(server.ping_timeout + 1.0)  # longer than the ping timeout
        assert a.isconnected() and seen == 10
        got: list[ParticipantAttributesChanged] = []
        with pytest.raises(room.EventStreamOverflowError):
            async for ev in slow:
                assert isinstance(ev, ParticipantAttributesChanged)
                got.append(ev)
        assert [e.changed_attributes["n"] for e in got] == ["0", "1", "2", "3"]


async def test_dev_server_survives_garbage() -> None:
    """The dev server's own robustness (not a client behaviour: dev server only)."""
    async with DevServer() as srv, room.Room.connect(srv.url, srv.token("a", room="r")) as a:
        # Not HTTP at all.
        async with await anyio.connect_tcp("127.0.0.1", srv.port) as s:
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


async def test_http_endpoints(server: Server) -> None:
    """/rtc/validate answers alike on both servers, and a plain GET of the WebSocket paths
    is a 404 on both. (A WebSocket upgrade of /rtc/v1, single peer connection mode,
    differs on purpose: livekit-server serves it, the dev server answers 404 so that
    official SDKs fall back to /rtc; see tests/test_interop.py.)"""
    base = server.http_url
    tok = server.token("v", room="r")
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{base}/rtc/validate")
        assert r.status_code == 401
        r = await client.get(f"{base}/rtc/validate", headers={"Authorization": f"Bearer {tok}"})
        assert (r.status_code, r.text.strip()) == (200, "success")
        r = await client.get(f"{base}/rtc/validate", params={"access_token": tok})
        assert r.status_code == 200
        for path in ("/rtc", "/rtc/v1"):
            r = await client.get(f"{base}{path}", params={"access_token": tok})
            assert r.status_code == 404, (path, r.text)


async def test_cancelling_nested_rooms_still_says_goodbye_for_each(server: Server) -> None:
    async with server.connect("watcher") as watcher:
        events = watcher.events(ParticipantDisconnected)
        with anyio.CancelScope() as scope:
            async with server.connect("alice"), server.connect("bob"):
                await known(watcher, "alice", "bob")
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        gone = [await next_event(events, ParticipantDisconnected,
                                 timeout=server.presence_delay + 1.0) for _ in range(2)]
        assert sorted(ev.participant.identity for ev in gone) == ["alice", "bob"]
        assert {ev.participant.disconnect_reason for ev in gone} == {
            room.DisconnectReason.CLIENT_INITIATED}
    assert client_tasks() == []


async def test_server_shutdown_ends_the_room_promptly_with_a_reason(server: Server) -> None:
    """Stopping the server ends its clients' rooms at once. The dev server always says
    why (SERVER_SHUTDOWN). livekit-server's graceful stop (one SIGTERM) waits for its
    participants to leave by themselves, polling every 5 s, and tells them nothing; its
    forced stop (a second SIGTERM) closes the rooms, and its leave (SERVER_SHUTDOWN) may
    or may not be written before the process exits: the client sees either (without a
    reconnect policy; with one, a server gone for good is in tests/test_reconnect.py)."""
    async with server.connect("a", options=room.RoomOptions(reconnect=None)) as a:
        events = a.events(Disconnected)
        if server.dev is not None:
            await server.dev.shutdown()
            reasons = {room.DisconnectReason.SERVER_SHUTDOWN}
        else:
            assert server.livekit is not None
            await anyio.to_thread.run_sync(server.livekit.stop)  # SIGTERM, then forced
            reasons = {room.DisconnectReason.SERVER_SHUTDOWN,
                       room.DisconnectReason.SIGNAL_CLOSE}
        ev = await next_event(events, Disconnected, timeout=5.0)
        assert ev.reason in reasons, ev
        assert not a.isconnected()


@pytest.mark.parametrize("how", ["exit", "cancel"])
async def test_dev_server_announces_shutdown_even_when_cancelled(how: str) -> None:
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
