"""The bounded subscription primitive (`room._bounded`) on its own, and the byte budgets
the event hub and the stream readers build on it: no network, both backends."""

from __future__ import annotations

import gc
import logging

import anyio
import anyio.lowlevel
import pytest
from livekit.protocol import models

import room
from room._bounded import BoundedBuffer, Fanout, Overflow
from room.data import DataPacket
from room.events import (
    DataReceived,
    Disconnected,
    EventHub,
    ParticipantConnected,
    RoomEvent,
)
from room.events.hub import EVENT_OVERHEAD, event_cost
from room.participant import RemoteParticipant
from room.types import DataPacketKind, DisconnectReason

pytestmark = pytest.mark.anyio


def _data(i: int, size: int = 1024) -> DataReceived:
    payload = i.to_bytes(4, "big") + bytes(size - 4)
    return DataReceived(DataPacket(payload, DataPacketKind.RELIABLE, None, None, "tx"))


def _index(event: RoomEvent) -> int:
    assert isinstance(event, DataReceived)
    return int.from_bytes(event.packet.data[:4], "big")


# -- the buffer ----------------------------------------------------------------------------


async def test_items_come_out_in_order_and_are_accounted_until_read() -> None:
    buf: BoundedBuffer[str] = BoundedBuffer(max_bytes=100)
    assert buf.put("a", 10) and buf.put("b", 20)
    stats = buf.statistics()
    assert (stats.items, stats.bytes, stats.max_bytes, stats.max_items) == (2, 30, 100, None)
    assert await buf.get() == "a"
    assert (buf.statistics().items, buf.statistics().bytes) == (1, 20)
    assert await buf.get() == "b"
    stats = buf.statistics()
    assert (stats.items, stats.bytes, stats.peak_items, stats.peak_bytes) == (0, 0, 2, 30)


async def test_going_past_the_byte_budget_cuts_off_after_what_was_buffered(
        caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.bounded")
    buf: BoundedBuffer[int] = BoundedBuffer(max_bytes=100, what="the test reader", log=log)
    with caplog.at_level(logging.WARNING, logger="test.bounded"):
        assert all(buf.put(i, 30) for i in range(3))  # 90 bytes
        assert not buf.put(3, 30)  # 120 > 100: cut off, this item refused
        assert not buf.put(4, 1)  # and everything after it
    assert [r.getMessage() for r in caplog.records] == [
        "the test reader fell behind by 3 items (90 bytes); cutting it off"]
    assert buf.statistics().overflowed and buf.statistics().peak_bytes == 90
    assert [await buf.get() for _ in range(3)] == [0, 1, 2]
    for _ in range(2):  # and it keeps saying so
        with pytest.raises(Overflow) as info:
            await buf.get()
        assert (info.value.limit, info.value.items, info.value.max_bytes) == ("bytes", 3, 100)


async def test_an_item_count_limit_applies_too() -> None:
    buf: BoundedBuffer[int] = BoundedBuffer(max_items=2, max_bytes=10**6)
    assert buf.put(0, 1) and buf.put(1, 1)
    assert not buf.put(2, 1)
    assert [await buf.get(), await buf.get()] == [0, 1]
    with pytest.raises(Overflow) as info:
        await buf.get()
    assert (info.value.limit, info.value.max_items) == ("items", 2)


async def test_an_item_larger_than_the_budget_still_fits_an_empty_buffer() -> None:
    buf: BoundedBuffer[str] = BoundedBuffer(max_bytes=10)
    assert buf.put("big", 1000)
    assert not buf.put("next", 1)  # but nothing may queue behind it
    assert await buf.get() == "big"


async def test_items_handed_to_a_waiting_consumer_are_not_charged() -> None:
    buf: BoundedBuffer[int] = BoundedBuffer(max_items=1, max_bytes=10)
    got: list[int] = []

    async def consume() -> None:
        got.append(await buf.get())
        got.append(await buf.get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            # The first goes to the waiting consumer; the second, over the whole budget,
            # into the then empty buffer.
            assert buf.put(0, 5) and buf.put(1, 50)
            assert (buf.statistics().items, buf.statistics().bytes) == (1, 50)
    assert got == [0, 1] and not buf.statistics().overflowed


async def test_a_forced_item_fits_a_full_buffer_and_the_end_comes_after_it() -> None:
    buf: BoundedBuffer[str] = BoundedBuffer(max_items=1)
    assert buf.put("only", 1)
    assert buf.put("last", 10**9, force=True)
    buf.end()
    assert not buf.put("late")
    assert buf.statistics().bytes == 1  # forced items are not charged
    assert [await buf.get(), await buf.get()] == ["only", "last"]
    with pytest.raises(anyio.EndOfStream):
        await buf.get()


async def test_closing_discards_quietly_and_refuses_more(
        caplog: pytest.LogCaptureFixture) -> None:
    buf: BoundedBuffer[int] = BoundedBuffer(max_items=1)
    buf.put(1)
    with caplog.at_level(logging.WARNING):
        buf.close()
        assert not buf.put(2)  # the consumer left: no overflow, no warning
    assert not caplog.records and not buf.statistics().overflowed
    assert buf.statistics().items == 0
    with pytest.raises(anyio.EndOfStream):
        await buf.get()


async def test_a_cancelled_get_loses_nothing() -> None:
    buf: BoundedBuffer[int] = BoundedBuffer(max_items=4)
    with anyio.move_on_after(0.05):
        await buf.get()
    buf.put(7)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await buf.get()  # cancelled at its checkpoint, before taking the item
    assert await buf.get() == 7


async def test_types_filter_what_a_buffer_takes() -> None:
    buf: BoundedBuffer[object] = BoundedBuffer(max_items=1, types=(int,))
    assert buf.put("skipped") and buf.put(1) and buf.put("skipped too")
    assert buf.statistics().items == 1 and await buf.get() == 1


def test_limits_must_be_positive_ints() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            BoundedBuffer(max_bytes=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            BoundedBuffer(max_items=bad)  # type: ignore[arg-type]


# -- the fan-out ---------------------------------------------------------------------------


async def test_the_fanout_forgets_dropped_closed_and_cut_off_buffers() -> None:
    fan: Fanout[int] = Fanout()
    kept: BoundedBuffer[int] = BoundedBuffer(max_items=10)
    dropped: BoundedBuffer[int] = BoundedBuffer(max_items=10)
    closed: BoundedBuffer[int] = BoundedBuffer(max_items=10)
    small: BoundedBuffer[int] = BoundedBuffer(max_items=1)
    for buf in (kept, dropped, closed, small):
        fan.add(buf)
    del dropped
    gc.collect()
    closed.close()
    fan.publish(1)
    fan.publish(2)  # `small` overflows here
    assert fan.live() == [kept] and len(fan) == 1
    fan.end(3)
    assert len(fan) == 0
    assert [await kept.get() for _ in range(3)] == [1, 2, 3]
    with pytest.raises(anyio.EndOfStream):
        await kept.get()


# -- the event hub's byte budget -----------------------------------------------------------


def test_an_event_is_charged_its_payload_and_a_flat_overhead() -> None:
    assert event_cost(_data(0, 1024)) == EVENT_OVERHEAD + 1024 + len("tx")
    with_topic = DataReceived(DataPacket(b"x", DataPacketKind.LOSSY, None, "chat", "tx"))
    assert event_cost(with_topic) == EVENT_OVERHEAD + 1 + 2 + 4
    who = RemoteParticipant(models.ParticipantInfo(sid="PA_p", identity="p"))
    assert event_cost(ParticipantConnected(who)) == EVENT_OVERHEAD  # shared with the state


async def test_a_burst_waits_for_a_busy_subscriber_within_the_default_budget() -> None:
    """2,000 x 1 KiB arrive while the reader is busy: all of it is delivered, in order
    (the former limit of 1,024 events cut such a reader off)."""
    hub = EventHub()
    busy = hub.subscribe(DataReceived, Disconnected)
    for i in range(2000):
        hub.publish(_data(i))
    stats = busy.statistics()
    assert stats.items == 2000 and stats.bytes == 2000 * event_cost(_data(0))
    assert stats.max_bytes == 16 * 1024 * 1024 and stats.bytes < stats.max_bytes
    hub.publish(Disconnected(DisconnectReason.CLIENT_INITIATED))
    hub.close()
    with anyio.fail_after(10):
        got = [e async for e in busy]
    assert [_index(e) for e in got[:-1]] == list(range(2000))
    assert isinstance(got[-1], Disconnected)


async def test_a_subscriber_that_never_reads_is_cut_off_at_its_budget_alone() -> None:
    budget = 100 * 1024
    hub = EventHub(buffer_bytes=budget)
    stuck = hub.subscribe(DataReceived)
    reader = hub.subscribe(DataReceived)
    roomy = hub.subscribe(DataReceived, buffer_bytes=10 * budget)  # its own budget
    got: list[int] = []
    with anyio.fail_after(10):
        for i in range(500):
            hub.publish(_data(i))
            got.append(_index(await reader.__anext__()))
            assert stuck.statistics().bytes <= budget
        assert roomy.statistics().items == 500
        stats = stuck.statistics()
        assert stats.overflowed and stats.peak_bytes <= budget
        fit = budget // event_cost(_data(0))
        assert stats.peak_items == fit
        held = [_index(await stuck.__anext__()) for _ in range(fit)]
        with pytest.raises(room.EventStreamOverflowError, match="bytes behind"):
            await stuck.__anext__()
        assert [e async for e in stuck] == []  # raised once; then simply over
    assert held == list(range(fit))
    assert got == list(range(500))
