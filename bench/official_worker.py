"""The official LiveKit SDK (``livekit.rtc``, Rust/libwebrtc) side of bench/data.py.

    python -m bench.official_worker URL [--count 2000] [--count-15k 500]

Connects to the server at URL (tokens minted with bench.data's API key and secret) and
measures exactly what bench.data measures for `room`: the median of 5 ``Room.connect``
calls, then reliable 1 KiB and 15 KiB packets per second from one sender to one receiver
in the same room, timed from the first ``publish_data`` to the last ``data_received``,
every packet checked for order, size and count. Prints one JSON line (see
``bench._harness.worker_line``). libwebrtc ignores loopback, so URL must not be 127.0.0.1;
bench.data runs this inside a network namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from livekit import rtc

from bench._harness import mint as _token

CONNECT_TIMEOUT = 20.0
SEE_TIMEOUT = 10.0  # both participants see each other
PACKETS_TIMEOUT = 60.0  # all packets of one size sent and received


async def _connect(url: str, identity: str, room: str) -> rtc.Room:
    r = rtc.Room()
    await asyncio.wait_for(r.connect(url, _token(identity, room)), CONNECT_TIMEOUT)
    return r


async def _disconnect(r: rtc.Room) -> None:
    await asyncio.wait_for(r.disconnect(), 10)


async def _connect_time(url: str, prefix: str, n: int = 5) -> float:
    times = []
    for i in range(n):
        r = rtc.Room()
        started = time.perf_counter()
        await asyncio.wait_for(r.connect(url, _token(f"c{i}", f"{prefix}-connect")),
                               CONNECT_TIMEOUT)
        times.append(time.perf_counter() - started)
        await _disconnect(r)
    return statistics.median(times)


def _met(a: rtc.Room, b: rtc.Room) -> bool:
    return (b.local_participant.identity in a.remote_participants
            and a.local_participant.identity in b.remote_participants)


async def _see_each_other(a: rtc.Room, b: rtc.Room) -> None:
    async def both() -> None:
        while not _met(a, b):  # noqa: ASYNC110 - polls two mappings, bounded
            await asyncio.sleep(0.01)
    await asyncio.wait_for(both(), SEE_TIMEOUT)


async def _throughput(url: str, prefix: str, size: int, count: int) -> float:
    """Seconds from the first send to the last receive of ``count`` ``size``-byte packets."""
    room_name = f"{prefix}-t{size}"
    rx = await _connect(url, "rx", room_name)
    tx: rtc.Room | None = None
    try:
        tx = await _connect(url, "tx", room_name)
        await _see_each_other(rx, tx)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[float] = loop.create_future()
        expected = 0

        def on_data(packet: rtc.DataPacket) -> None:
            nonlocal expected
            if done.done():
                return
            seq = int.from_bytes(packet.data[:4], "big")
            if seq != expected or len(packet.data) != size:
                done.set_exception(AssertionError(
                    f"packet {expected}: got #{seq} of {len(packet.data)} bytes"))
                return
            expected += 1
            if expected == count:
                done.set_result(time.perf_counter())

        rx.on("data_received", on_data)
        payloads = [i.to_bytes(4, "big") + bytes(size - 4) for i in range(count)]
        started = time.perf_counter()
        for p in payloads:
            await tx.local_participant.publish_data(p, reliable=True)
        try:
            finished = await asyncio.wait_for(done, PACKETS_TIMEOUT)
        except TimeoutError:
            raise TimeoutError(f"{size}-byte packets: {expected} of {count} received "
                               f"after {PACKETS_TIMEOUT} s") from None
        return finished - started
    finally:
        if tx is not None:
            await _disconnect(tx)
        await _disconnect(rx)


async def measure_official(url: str, count: int, count_15k: int,
                           prefix: str = "official") -> dict[str, float]:
    """Same keys as ``bench.data.measure``: connect_s, {size}_pps, {size}_MBps."""
    out = {"connect_s": await _connect_time(url, prefix)}
    for size, n in ((1024, count), (15 * 1024, count_15k)):
        secs = await _throughput(url, prefix, size, n)
        out[f"{size}_count"] = n
        out[f"{size}_pps"] = n / secs
        out[f"{size}_MBps"] = n * size / secs / 1e6
    return out


def run(url: str, count: int, count_15k: int) -> dict[str, float]:
    return asyncio.run(measure_official(url, count, count_15k))


def main(argv: list[str] | None = None) -> None:
    from bench._harness import worker_line  # the one JSON line format, shared

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--count-15k", type=int, default=500)
    args = parser.parse_args(argv)
    sys.exit(worker_line(lambda: run(args.url, args.count, args.count_15k)))


if __name__ == "__main__":
    main()
