"""Event fan-out cost: `room`'s EventHub against bare anyio memory streams, same run.

    python -m bench.events [--events 20000] [--subscribers 1 4 16]

For each subscriber count it publishes N events through an `EventHub` (one bounded buffer
per subscriber, type filter, byte accounting, overflow check) and, as the reference,
through one plain anyio memory-object stream per subscriber; all consumers drain
concurrently. Prints events per second for both and the hub/reference ratio, on asyncio
and trio. (What a slow consumer costs under each buffering policy: `bench.buffering`.)
"""

from __future__ import annotations

import argparse
import time

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from room.events import EventHub, ParticipantAttributesChanged, RoomEvent, Subscription
from room.participant import RemoteParticipant


def _event(i: int, who: RemoteParticipant) -> RoomEvent:
    return ParticipantAttributesChanged({"i": str(i)}, who)


async def _hub_run(n: int, subs: int) -> float:
    from livekit.protocol import models

    who = RemoteParticipant(models.ParticipantInfo(sid="PA_b", identity="bench"))
    hub = EventHub(buffer_size=n + 1)
    subscriptions: list[Subscription[RoomEvent]] = [hub.subscribe() for _ in range(subs)]

    async def drain(sub: Subscription[RoomEvent]) -> None:
        async for _ in sub:
            pass

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for sub in subscriptions:
            tg.start_soon(drain, sub)
        for i in range(n):
            hub.publish(_event(i, who))
            if i % 256 == 0:
                await anyio.lowlevel.checkpoint()
        hub.close()
    return time.perf_counter() - start


async def _reference_run(n: int, subs: int) -> float:
    from livekit.protocol import models

    who = RemoteParticipant(models.ParticipantInfo(sid="PA_b", identity="bench"))
    pairs = [anyio.create_memory_object_stream[RoomEvent](n + 1) for _ in range(subs)]

    async def drain(rx: MemoryObjectReceiveStream[RoomEvent]) -> None:
        async for _ in rx:
            pass

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _, rx in pairs:
            tg.start_soon(drain, rx)
        for i in range(n):
            ev = _event(i, who)
            for tx, _ in pairs:
                tx.send_nowait(ev)
            if i % 256 == 0:
                await anyio.lowlevel.checkpoint()
        for tx, _ in pairs:
            tx.close()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args(argv)
    n: int = args.events
    print(f"{'backend':8} {'subs':>4} {'hub ev/s':>12} {'reference ev/s':>15} {'ratio':>6}")
    for backend in ("asyncio", "trio"):
        for subs in args.subscribers:
            hub = min(anyio.run(_hub_run, n, subs, backend=backend) for _ in range(3))
            ref = min(anyio.run(_reference_run, n, subs, backend=backend) for _ in range(3))
            print(f"{backend:8} {subs:>4} {n / hub:>12,.0f} {n / ref:>15,.0f} "
                  f"{ref / hub:>6.2f}")


if __name__ == "__main__":
    main()
