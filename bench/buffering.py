"""Slow readers: what a subscriber busy for a second costs under each buffering policy.

    python -m bench.buffering [--burst 2000] [--size 1024] [--busy 1.0] [--rate 4000]
                              [--backend asyncio|trio|both] [--rooms] [--events 20000]

Three parts, each a table; compare within one run (ratios), not across machines.

1. **A burst to a busy reader**, in this process, no network. ``--burst`` data events of
   ``--size`` payload bytes are published at ``--rate`` events per second (16 at a time,
   as the data channel hands packets over in batches; the default is above the 1 KiB
   rates `bench.data` measures through either server) to two subscribers: one keeps up,
   the other takes the first event, is then busy (awaiting something else) for
   ``--busy`` seconds, then drains. Policies:

   - ``old 1,024 events``: the hub as it was before the byte budget (reimplemented here
     as it was: one anyio memory-object stream per subscriber, cut off at 1,024 pending);
   - ``new 16 MiB``: `EventHub` with its defaults (a byte budget, each event charged
     `room.events.hub.event_cost`);
   - ``backpressure 1,024``: a bounded stream per subscriber whose publisher *waits* for
     room, which is what backpressure onto the data channel would amount to.

   Columns: events delivered to the busy reader and lost to it (cut off); the most memory
   held above the start of the run (tracemalloc's peak, in a second run of the same
   scenario) and, for the new hub, the subscription's peak accounted bytes; the time the
   publisher was held up (longest single publish, and in total); the longest the *other*
   subscriber waited between two events.
2. **Publish cost per event**: ``--events`` 1 KiB data events published to 1, 4 and 16
   subscribers that do not read meanwhile (limits large enough), nanoseconds per event and
   subscriber for the old hub, the new hub and bare ``send_nowait`` on anyio memory
   streams (the floor), best of 3; then the new/old ratio.
3. ``--rooms``: the burst through real rooms (an in-process dev server on 127.0.0.1), the
   old policy (``RoomOptions(event_buffer_size=1024)`` reproduces it) against the
   defaults: delivered, lost, the most events pending, the peak accounted bytes.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import room
from room.data import DataPacket
from room.devserver import DevServer
from room.errors import EventStreamOverflowError
from room.events import DataReceived, EventHub, RoomEvent
from room.types import DataPacketKind

_PER_TURN = 16  # events published at a time in the in-process burst
_OLD_LIMIT = 1024


def _event(i: int, size: int) -> DataReceived:
    payload = i.to_bytes(4, "big") + bytes(max(size - 4, 0))
    return DataReceived(DataPacket(payload, DataPacketKind.RELIABLE, None, None, "tx"))


# -- the policies, behind one small interface -------------------------------------------------


class _Sub(Protocol):
    async def get(self) -> RoomEvent | None: ...  # None: the end; raises on overflow

    def accounted_peak(self) -> int | None: ...


class _Hub(Protocol):
    async def publish(self, event: RoomEvent) -> None: ...

    def subscribe(self) -> _Sub: ...

    def close(self) -> None: ...


class _Overflowed(Exception):
    pass


class _OldSub:
    """The former `Subscription`: a memory-object stream, cut off at ``limit`` pending."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.send: MemoryObjectSendStream[RoomEvent]
        self.receive: MemoryObjectReceiveStream[RoomEvent]
        self.send, self.receive = anyio.create_memory_object_stream[RoomEvent](limit + 1)
        self.types: tuple[type[RoomEvent], ...] = (DataReceived,)
        self.overflowed = False

    def offer(self, event: RoomEvent) -> bool:
        if self.types and not isinstance(event, self.types):
            return True
        stats = self.send.statistics()
        if stats.open_receive_streams == 0:
            self.send.close()
            return False
        if stats.current_buffer_used >= self.limit:
            self.overflowed = True
            self.send.close()
            return False
        self.send.send_nowait(event)
        return True

    async def get(self) -> RoomEvent | None:
        try:
            return await self.receive.receive()
        except anyio.EndOfStream:
            if self.overflowed:
                raise _Overflowed from None
            return None

    def accounted_peak(self) -> int | None:
        return None


class _OldHub:
    def __init__(self, limit: int = _OLD_LIMIT) -> None:
        self.limit = limit
        self.subs: list[weakref.ref[_OldSub]] = []

    async def publish(self, event: RoomEvent) -> None:
        self.publish_nowait(event)

    def publish_nowait(self, event: RoomEvent) -> None:
        alive = []
        for ref in self.subs:
            sub = ref()
            if sub is not None and sub.offer(event):
                alive.append(ref)
        self.subs = alive

    def subscribe(self) -> _OldSub:
        sub = _OldSub(self.limit)
        self.subs.append(weakref.ref(sub))
        return sub

    def close(self) -> None:
        for ref in self.subs:
            if (sub := ref()) is not None:
                sub.send.close()


class _NewSub:
    def __init__(self, sub: room.events.Subscription[RoomEvent]) -> None:
        self.sub = sub

    async def get(self) -> RoomEvent | None:
        try:
            return await self.sub.__anext__()
        except StopAsyncIteration:
            return None
        except EventStreamOverflowError:
            raise _Overflowed from None

    def accounted_peak(self) -> int | None:
        return self.sub.statistics().peak_bytes


class _NewHub:
    def __init__(self, **limits: int) -> None:
        self.hub = EventHub(**limits)

    async def publish(self, event: RoomEvent) -> None:
        self.hub.publish(event)

    def subscribe(self) -> _NewSub:
        return _NewSub(self.hub.subscribe(DataReceived))

    def close(self) -> None:
        self.hub.close()


class _BlockingSub:
    def __init__(self, limit: int) -> None:
        self.send: MemoryObjectSendStream[RoomEvent]
        self.receive: MemoryObjectReceiveStream[RoomEvent]
        self.send, self.receive = anyio.create_memory_object_stream[RoomEvent](limit)

    async def get(self) -> RoomEvent | None:
        try:
            return await self.receive.receive()
        except anyio.EndOfStream:
            return None

    def accounted_peak(self) -> int | None:
        return None


class _BlockingHub:
    """Backpressure: the publisher waits until every subscriber has room."""

    def __init__(self, limit: int = _OLD_LIMIT) -> None:
        self.limit = limit
        self.subs: list[_BlockingSub] = []

    async def publish(self, event: RoomEvent) -> None:
        for sub in self.subs:
            await sub.send.send(event)

    def subscribe(self) -> _BlockingSub:
        sub = _BlockingSub(self.limit)
        self.subs.append(sub)
        return sub

    def close(self) -> None:
        for sub in self.subs:
            sub.send.close()


_POLICIES: dict[str, Callable[[], _Hub]] = {
    f"old {_OLD_LIMIT:,} events": _OldHub,
    "new 16 MiB": _NewHub,
    f"backpressure {_OLD_LIMIT:,}": _BlockingHub,
}


# -- part 1: a burst to a busy reader -------------------------------------------------------


@dataclass
class _Burst:
    delivered: int = 0
    lost: int = 0
    accounted_peak: int | None = None
    longest_publish: float = 0.0
    publish_total: float = 0.0
    other_longest_wait: float = 0.0
    memory_peak: int = 0
    notes: list[str] = field(default_factory=list)


async def _burst(make: Callable[[], _Hub], n: int, size: int, busy: float, rate: float,
                 measure_memory: bool) -> _Burst:
    out = _Burst()
    hub = make()
    slow, fast = hub.subscribe(), hub.subscribe()
    if measure_memory:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]

    async def slow_reader() -> None:
        first = await slow.get()
        out.delivered += first is not None
        await anyio.sleep(busy)  # busy with something else; the room goes on
        try:
            while await slow.get() is not None:
                out.delivered += 1
        except _Overflowed:
            out.notes.append("cut off")

    async def fast_reader() -> None:
        last: float | None = None
        while await fast.get() is not None:
            now = time.perf_counter()
            if last is not None:
                out.other_longest_wait = max(out.other_longest_wait, now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_reader)
        tg.start_soon(fast_reader)
        await anyio.wait_all_tasks_blocked()
        for i in range(n):
            started = time.perf_counter()
            await hub.publish(_event(i, size))
            took = time.perf_counter() - started
            out.longest_publish = max(out.longest_publish, took)
            out.publish_total += took
            if i % _PER_TURN == _PER_TURN - 1:
                await anyio.sleep(_PER_TURN / rate)
        hub.close()
    out.accounted_peak = slow.accounted_peak()
    if measure_memory:
        out.memory_peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    out.lost = n - out.delivered
    return out


def _print_bursts(backend: str, n: int, size: int, busy: float, rate: float) -> None:
    print(f"\n1. {n:,} x {size:,} B events at {rate:,.0f}/s, one reader busy for {busy:g} s, "
          f"one keeping up ({backend})")
    print(f"{'policy':22} {'delivered':>9} {'lost':>6} {'memory peak':>12} "
          f"{'accounted':>10} {'publish max':>12} {'publish sum':>12} {'other waited':>13}")
    for name, make in _POLICIES.items():
        timed = anyio.run(_burst, make, n, size, busy, rate, False, backend=backend)
        mem = anyio.run(_burst, make, n, size, busy, rate, True, backend=backend)
        acc = "-" if timed.accounted_peak is None else f"{timed.accounted_peak / 1e6:.2f} MB"
        print(f"{name:22} {timed.delivered:>9,} {timed.lost:>6,} "
              f"{mem.memory_peak / 1e6:>9.2f} MB {acc:>10} "
              f"{timed.longest_publish * 1e3:>9.2f} ms {timed.publish_total * 1e3:>9.1f} ms "
              f"{timed.other_longest_wait * 1e3:>10.1f} ms")


# -- part 2: publish cost ----------------------------------------------------------------------


async def _publish_cost(policy: str, n: int, subs: int) -> float:
    """Nanoseconds per event and subscriber for ``n`` publishes to idle subscribers."""
    events = [_event(i, 1024) for i in range(n)]
    keep: list[object] = []
    publish: Callable[[RoomEvent], object]
    if policy == "old":
        old = _OldHub(limit=n + 1)
        keep = [old.subscribe() for _ in range(subs)]
        publish = old.publish_nowait
    elif policy == "new":
        new = EventHub(buffer_bytes=1 << 40)
        keep = [new.subscribe(DataReceived) for _ in range(subs)]
        publish = new.publish
    else:
        pairs = [anyio.create_memory_object_stream[RoomEvent](n) for _ in range(subs)]
        keep = list(pairs)

        def publish(event: RoomEvent) -> None:
            for send, _ in pairs:
                send.send_nowait(event)

    started = time.perf_counter_ns()
    for event in events:
        publish(event)
    elapsed = time.perf_counter_ns() - started
    del keep
    return elapsed / n / subs


def _print_costs(backend: str, n: int) -> None:
    print(f"\n2. publish cost, {n:,} events of 1 KiB, ns per event and subscriber, "
          f"best of 3 ({backend})")
    print(f"{'subscribers':>11} {'bare send_nowait':>17} {'old hub':>9} {'new hub':>9} "
          f"{'new/old':>8}")
    for subs in (1, 4, 16):
        best = {p: min(anyio.run(_publish_cost, p, n, subs, backend=backend)
                       for _ in range(3)) for p in ("bare", "old", "new")}
        print(f"{subs:>11} {best['bare']:>17,.0f} {best['old']:>9,.0f} {best['new']:>9,.0f} "
              f"{best['new'] / best['old']:>8.2f}")


# -- part 3: through real rooms ----------------------------------------------------------------


async def _room_burst(options: room.RoomOptions, n: int, size: int, busy: float
                      ) -> dict[str, float]:
    async with DevServer() as srv, \
            room.Room.connect(srv.url, srv.token("rx", room="b"), options=options) as rx, \
            room.Room.connect(srv.url, srv.token("tx", room="b")) as tx:
        with anyio.fail_after(10):
            while "tx" not in rx.remote_participants:  # noqa: ASYNC110 - bounded poll
                await anyio.sleep(0.01)
        events = rx.events(DataReceived)
        delivered = 0
        cut_off = False

        async def send() -> None:
            for i in range(n):
                await tx.local_participant.publish_data(
                    i.to_bytes(4, "big") + bytes(size - 4))

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            with anyio.fail_after(120):
                await events.__anext__()
                delivered = 1
                await anyio.sleep(busy)
                pending = events.statistics().items
                try:
                    while delivered < n:
                        await events.__anext__()
                        delivered += 1
                except EventStreamOverflowError:
                    cut_off = True
                    tg.cancel_scope.cancel()
        stats = events.statistics()
        return {"delivered": delivered, "lost": n - delivered if cut_off else 0,
                "pending_after_busy": pending, "peak_items": stats.peak_items,
                "peak_bytes": stats.peak_bytes, "connected": rx.isconnected(),
                "seconds": time.perf_counter() - started}


def _print_rooms(backend: str, n: int, size: int, busy: float) -> None:
    print(f"\n3. through rooms (in-process dev server, loopback): {n:,} x {size:,} B, "
          f"reader busy for {busy:g} s ({backend})")
    print(f"{'policy':22} {'delivered':>9} {'lost':>6} {'pending after busy':>19} "
          f"{'peak pending':>13} {'peak accounted':>15} {'connected':>10}")
    runs: list[tuple[str, room.RoomOptions]] = [
        (f"old {_OLD_LIMIT:,} events", room.RoomOptions(event_buffer_size=_OLD_LIMIT)),
        ("new 16 MiB", room.RoomOptions())]
    for name, options in runs:
        r = anyio.run(_room_burst, options, n, size, busy, backend=backend)
        print(f"{name:22} {r['delivered']:>9,.0f} {r['lost']:>6,.0f} "
              f"{r['pending_after_busy']:>19,.0f} {r['peak_items']:>13,.0f} "
              f"{r['peak_bytes'] / 1e6:>12.2f} MB {bool(r['connected'])!s:>10}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--busy", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=4000.0)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument("--rooms", action="store_true",
                        help="also run the burst through real rooms (dev server, loopback)")
    args = parser.parse_args(argv)
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    parts: list[Callable[[str], Awaitable[None] | None]] = [
        lambda b: _print_bursts(b, args.burst, args.size, args.busy, args.rate),
        lambda b: _print_costs(b, args.events)]
    if args.rooms:
        parts.append(lambda b: _print_rooms(b, args.burst, args.size, args.busy))
    for part in parts:
        for backend in backends:
            part(backend)


if __name__ == "__main__":
    main()
