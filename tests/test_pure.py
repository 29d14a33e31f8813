"""Unit tests for the I/O-free pieces: keepalive, URL building and the event hub."""

from __future__ import annotations

import gc
import logging
import weakref
from typing import cast
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.lowlevel
import pytest
from livekit.protocol import models, rtc

import room
from room.events import (
    ConnectionQualityChanged,
    Disconnected,
    EventHub,
    ParticipantConnected,
    ParticipantDisconnected,
    RoomEvent,
    RoomMetadataChanged,
    Subscription,
)
from room.participant import RemoteParticipant
from room.transport.keepalive import Keepalive
from room.transport.url import PROTOCOL_VERSION, signal_params, signal_url, validate_url
from room.types import ConnectionQuality, DisconnectReason

# -- keepalive ------------------------------------------------------------------------------


def test_keepalive_ping_message() -> None:
    ka = Keepalive(interval=5.0, timeout=15.0, now=100.0)
    req = ka.ping(123.456)
    assert req.WhichOneof("message") == "ping_req"
    assert req.ping_req.timestamp == 123456  # milliseconds of the clock passed in
    assert req.ping_req.rtt == 0  # no round trip measured yet
    assert (ka.interval, ka.timeout) == (5.0, 15.0)


def test_keepalive_rtt_from_pong_and_sent_in_next_ping() -> None:
    ka = Keepalive(interval=5.0, timeout=15.0, now=100.0)
    ping = ka.ping(100.0).ping_req
    ka.pong(100.25, rtc.Pong(last_ping_timestamp=ping.timestamp, timestamp=999))
    assert ka.rtt_ms == 250
    assert ka.ping(105.0).ping_req.rtt == 250


def test_keepalive_pong_edge_cases() -> None:
    ka = Keepalive(interval=5.0, timeout=15.0, now=10.0)
    ka.pong(10.5, rtc.Pong(last_ping_timestamp=10_000))
    assert ka.rtt_ms == 500
    ka.pong(11.0, rtc.Pong())  # no ping timestamp echoed: rtt unchanged, still alive
    assert ka.rtt_ms == 500
    assert ka.deadline() == 26.0
    ka.pong(12.0, rtc.Pong(last_ping_timestamp=99_000))  # from the future: never negative
    assert ka.rtt_ms == 0


def test_keepalive_expires_timeout_after_last_message() -> None:
    ka = Keepalive(interval=5.0, timeout=15.0, now=0.0)
    assert ka.deadline() == 15.0
    assert not ka.expired(15.0)
    assert ka.expired(15.001)
    ka.alive(10.0)  # any server message counts
    assert ka.deadline() == 25.0
    assert not ka.expired(20.0)
    assert ka.expired(25.5)
    ka.alive(3.0)  # an older timestamp never moves the deadline back
    assert ka.deadline() == 25.0
    ka.ping(24.0)  # sending a ping proves nothing about the server
    assert ka.expired(25.5)
    ka.pong(25.0, rtc.Pong(last_ping_timestamp=24_000))
    assert ka.deadline() == 40.0
    assert not ka.expired(39.9)
    assert ka.expired(40.1)


@pytest.mark.parametrize(("interval", "timeout"), [(0, 15), (5, 0), (-1, 15), (5, -2)])
def test_keepalive_rejects_non_positive_settings(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError):
        Keepalive(interval=interval, timeout=timeout, now=0.0)


# -- URLs -----------------------------------------------------------------------------------

PARAMS = {"sdk": "python", "protocol": "16"}


@pytest.mark.parametrize(("given", "expected"), [
    ("ws://localhost:7880", "ws://localhost:7880/rtc"),
    ("wss://lk.example.com", "wss://lk.example.com/rtc"),
    ("http://localhost:7880", "ws://localhost:7880/rtc"),
    ("https://lk.example.com", "wss://lk.example.com/rtc"),
    ("HTTPS://lk.example.com/", "wss://lk.example.com/rtc"),
    ("https://lk.example.com/prefix", "wss://lk.example.com/prefix/rtc"),
    ("wss://lk.example.com/a/b/", "wss://lk.example.com/a/b/rtc"),
    ("wss://lk.example.com/LiveKit", "wss://lk.example.com/LiveKit/rtc"),  # path case kept
    ("ws://[::1]:7880", "ws://[::1]:7880/rtc"),
])
def test_signal_url(given: str, expected: str) -> None:
    url = signal_url(given, PARAMS)
    base, _, query = url.partition("?")
    assert base == expected
    assert parse_qs(query) == {"sdk": ["python"], "protocol": ["16"]}


@pytest.mark.parametrize(("given", "expected"), [
    ("ws://localhost:7880", "http://localhost:7880/rtc/validate"),
    ("http://localhost:7880", "http://localhost:7880/rtc/validate"),
    ("wss://lk.example.com/prefix/", "https://lk.example.com/prefix/rtc/validate"),
    ("https://lk.example.com", "https://lk.example.com/rtc/validate"),
])
def test_validate_url(given: str, expected: str) -> None:
    url = validate_url(given, PARAMS)
    assert url.partition("?")[0] == expected
    assert parse_qs(urlsplit(url).query)["sdk"] == ["python"]


@pytest.mark.parametrize("bad", [
    "",
    "ftp://lk.example.com",
    "localhost:7880",
    "lk.example.com",
    "ws://",
    "ws://:7880",
    "ws://localhost:port",
    "ws://localhost:70000",
    "wss://localhost:-1",
])
def test_bad_urls_raise_connect_error(bad: str) -> None:
    with pytest.raises(room.ConnectError):
        signal_url(bad, PARAMS)
    with pytest.raises(room.ConnectError):
        validate_url(bad, PARAMS)


def test_non_str_url_raises_connect_error() -> None:
    with pytest.raises(room.ConnectError):
        signal_url(cast(str, None), PARAMS)
    assert issubclass(room.ConnectError, room.RoomError)


def test_signal_params() -> None:
    params = signal_params(auto_subscribe=True)
    assert params["sdk"] == "python"
    assert params["protocol"] == str(PROTOCOL_VERSION)
    assert params["auto_subscribe"] == "1"
    assert params["adaptive_stream"] == "0"
    assert {"version", "os", "os_version", "device_model"} <= params.keys()
    assert "reconnect" not in params and "sid" not in params
    assert signal_params(auto_subscribe=False, adaptive_stream=True)["auto_subscribe"] == "0"


def test_reconnect_params_in_url() -> None:
    params = signal_params(auto_subscribe=False, reconnect=True, participant_sid="PA_abc")
    assert params["reconnect"] == "1"
    assert params["sid"] == "PA_abc"
    query = parse_qs(urlsplit(signal_url("https://lk.example.com/p", params)).query)
    assert query["reconnect"] == ["1"]
    assert query["sid"] == ["PA_abc"]
    assert query["auto_subscribe"] == ["0"]


# -- the event hub --------------------------------------------------------------------------


def _participant(identity: str) -> RemoteParticipant:
    return RemoteParticipant(models.ParticipantInfo(sid=f"PA_{identity}", identity=identity))


def _events(n: int) -> list[RoomEvent]:
    """``n`` distinct events of a few types."""
    out: list[RoomEvent] = []
    for i in range(n):
        match i % 3:
            case 0:
                out.append(ParticipantConnected(_participant(f"p{i}")))
            case 1:
                out.append(RoomMetadataChanged(str(i - 1), str(i)))
            case _:
                out.append(ConnectionQualityChanged(_participant(f"p{i}"), ConnectionQuality.POOR))
    return out


def _subscribe(hub: EventHub) -> Subscription[RoomEvent]:
    """A subscription to every event."""
    return hub.subscribe()


async def _drain(sub: Subscription[RoomEvent]) -> list[RoomEvent]:
    return [e async for e in sub]


@pytest.mark.anyio
async def test_hub_fans_out_in_order_to_every_subscriber() -> None:
    hub = EventHub(buffer_size=64)
    events = _events(40)
    results: dict[int, list[RoomEvent]] = {}

    async def consume(i: int, sub: Subscription[RoomEvent]) -> None:
        results[i] = await _drain(sub)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(consume, i, _subscribe(hub))
            await anyio.wait_all_tasks_blocked()
            for n, e in enumerate(events):
                hub.publish(e)
                if n % 7 == 0:
                    await anyio.lowlevel.checkpoint()  # let consumers run in between
            hub.publish(Disconnected(DisconnectReason.CLIENT_INITIATED))
            hub.close()
    expected = [*events, Disconnected(DisconnectReason.CLIENT_INITIATED)]
    assert results == {0: expected, 1: expected, 2: expected}
    for got in results.values():  # the very same objects, not copies
        assert all(a is b for a, b in zip(got, events, strict=False))


@pytest.mark.anyio
async def test_hub_only_sees_events_published_after_subscribing() -> None:
    hub = EventHub()
    early = _subscribe(hub)
    first, second = _events(2)
    hub.publish(first)
    late = _subscribe(hub)
    hub.publish(second)
    hub.close()
    with anyio.fail_after(5):
        assert await _drain(early) == [first, second]
        assert await _drain(late) == [second]


@pytest.mark.anyio
async def test_hub_type_filtering() -> None:
    hub = EventHub()
    connected = hub.subscribe(ParticipantConnected)
    either = hub.subscribe(RoomMetadataChanged, ConnectionQualityChanged)
    base = hub.subscribe(RoomEvent)
    everything = _subscribe(hub)
    events = _events(9)
    for e in events:
        hub.publish(e)
    hub.publish(Disconnected(DisconnectReason.SERVER_SHUTDOWN))
    hub.close()
    with anyio.fail_after(5):
        got_connected = [e async for e in connected]
        got_either = [e async for e in either]
        got_base = await _drain(base)
        got_everything = await _drain(everything)
    assert got_connected == [e for e in events if isinstance(e, ParticipantConnected)]
    assert all(type(e) is ParticipantConnected for e in got_connected)
    assert got_either == [e for e in events if not isinstance(e, ParticipantConnected)]
    assert got_base == got_everything == [*events, Disconnected(DisconnectReason.SERVER_SHUTDOWN)]


def test_hub_rejects_non_event_types() -> None:
    hub = EventHub()
    with pytest.raises(TypeError):
        hub.subscribe(int)  # type: ignore[type-var]
    with pytest.raises(TypeError):
        hub.subscribe(cast(type[RoomEvent], "ParticipantConnected"))
    with pytest.raises(ValueError):
        EventHub(buffer_size=0)


@pytest.mark.anyio
async def test_hub_overflow_raises_after_buffered_events() -> None:
    hub = EventHub(buffer_size=3)
    slow = _subscribe(hub)
    fast = _subscribe(hub)
    events = _events(6)
    fast_got: list[RoomEvent] = []
    with anyio.fail_after(5):
        for e in events:
            hub.publish(e)
            fast_got.append(await fast.__anext__())  # keeps up
        hub.publish(Disconnected(DisconnectReason.CLIENT_INITIATED))
        hub.close()
        got: list[RoomEvent] = []
        with pytest.raises(room.EventStreamOverflowError):
            async for e in slow:
                got.append(e)
        assert got == events[:3]  # everything it had buffered, in order, then the error
        assert [e async for e in slow] == []  # raised once; then simply over
        fast_got += await _drain(fast)
    assert fast_got == [*events, Disconnected(DisconnectReason.CLIENT_INITIATED)]


@pytest.mark.anyio
async def test_hub_overflow_not_reached_while_consumer_waits() -> None:
    """Events handed straight to a waiting consumer do not count against its buffer."""
    hub = EventHub(buffer_size=1)
    sub = _subscribe(hub)
    events = _events(5)
    got: list[RoomEvent] = []

    async def consume() -> None:
        got.extend(await _drain(sub))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for e in events:
                await anyio.wait_all_tasks_blocked()
                hub.publish(e)
            hub.close()
    assert got == events


@pytest.mark.anyio
async def test_hub_disconnected_delivered_when_buffer_exactly_full() -> None:
    hub = EventHub(buffer_size=3)
    sub = _subscribe(hub)
    events = _events(3)
    for e in events:
        hub.publish(e)
    final = Disconnected(DisconnectReason.ROOM_DELETED, "room deleted")
    hub.publish(final)
    hub.close()
    with anyio.fail_after(5):
        assert await _drain(sub) == [*events, final]  # no EventStreamOverflowError


@pytest.mark.anyio
async def test_hub_iterators_end_after_close() -> None:
    hub = EventHub()
    waiting = _subscribe(hub)
    buffered = _subscribe(hub)
    ended: list[list[RoomEvent]] = []

    async def consume() -> None:
        ended.append(await _drain(waiting))

    (event,) = _events(1)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            hub.publish(event)
            await anyio.wait_all_tasks_blocked()
            hub.close()  # wakes the blocked consumer
        assert ended == [[event]]
        assert hub.closed
        hub.publish(ParticipantDisconnected(_participant("late")))  # ignored after close
        assert await _drain(buffered) == [event]  # what it had buffered, then the end
        with pytest.raises(StopAsyncIteration):
            await buffered.__anext__()


@pytest.mark.anyio
async def test_hub_subscribe_after_close_ends_immediately() -> None:
    hub = EventHub()
    hub.close()
    sub = _subscribe(hub)
    with anyio.fail_after(5):
        assert await _drain(sub) == []
    hub.close()  # idempotent


@pytest.mark.anyio
async def test_hub_subscriber_that_acloses_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    hub = EventHub(buffer_size=2)
    leaving = _subscribe(hub)
    leaving_full = _subscribe(hub)
    staying = _subscribe(hub)
    events = _events(8)
    got: list[RoomEvent] = []

    with anyio.fail_after(5):
        hub.publish(events[0])
        assert await leaving.__anext__() is events[0]
        hub.publish(events[1])  # leaving_full's buffer is now exactly full
        got += [await staying.__anext__(), await staying.__anext__()]
        await leaving.aclose()
        async with leaving_full:  # leaving the block unsubscribes too
            pass
        with caplog.at_level(logging.WARNING, logger="room.events.hub"):
            for e in events[2:]:  # more than the buffer holds
                hub.publish(e)
                got.append(await staying.__anext__())  # this one keeps up
        # Unsubscribing is not falling behind: no overflow, no "cut off" warning.
        assert not [r for r in caplog.records if r.name == "room.events.hub"]
        assert [e async for e in leaving] == []
        assert [e async for e in leaving_full] == []
        # The hub holds no reference to them any more.
        refs = [weakref.ref(leaving), weakref.ref(leaving_full)]
        del leaving, leaving_full
        gc.collect()
        assert [r() for r in refs] == [None, None]
        # The others are unaffected.
        hub.publish(Disconnected(DisconnectReason.CLIENT_INITIATED))
        hub.close()
        got += await _drain(staying)
    assert got == [*events, Disconnected(DisconnectReason.CLIENT_INITIATED)]


@pytest.mark.anyio
async def test_hub_breaking_out_of_async_for_unsubscribes(
        caplog: pytest.LogCaptureFixture) -> None:
    hub = EventHub(buffer_size=2)
    events = _events(4)
    keeper = _subscribe(hub)
    dropped = _subscribe(hub)
    hub.publish(events[0])
    async for _ in dropped:
        break  # the user walks away from this subscription...
    del dropped
    gc.collect()
    with caplog.at_level(logging.WARNING, logger="room.events.hub"):
        hub.publish(events[1])  # ...so it is unsubscribed: nothing is queued for it
    assert not [r for r in caplog.records if r.name == "room.events.hub"]
    assert len(hub._subs) == 1
    hub.close()
    assert await _drain(keeper) == events[:2]
