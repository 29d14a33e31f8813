"""Data-channel throughput and connect time through one server, room and official SDK.

    python -m bench.data [--server dev|livekit] [--count 2000] [--count-15k 500]
                         [--backend asyncio|trio|both] [--loopback] [--timeout 110]

Measures, through ONE server in one run (``--server dev``, the default: `room`'s dev
server; ``--server livekit``: the pinned real livekit-server), for room→room (on asyncio
and on trio) and for official SDK→official SDK (PyPI ``livekit``, Rust/libwebrtc): the
median time of 5 connects, and reliable 1 KiB and 15 KiB packets per second and MB/s from
one sender to one receiver in the same room, timed from the first send to the last
receive, every packet checked for order, size and count. Prints one table with the ratios
room/official.

libwebrtc ignores loopback interfaces, so when a network namespace can be made (root and
``ip``, see tests/netns.py) everything runs inside one: the server (``python -m room
serve``, or livekit-server from tests/livekit.py, on the veth address) and, one after
another, one worker subprocess per column (``python -m bench.data --worker room|official
URL ...``, each printing one JSON line; the machinery is shared with bench/rpc.py in
bench/_harness.py). Otherwise, or with ``--loopback``, only `room` is measured, in this
process, against an in-process `DevServer` on 127.0.0.1 (``measure()``), and the table
says why the official column is missing. ``--server livekit`` has no such fallback: it
stops with the reason.

livekit-server announces a participant that publishes nothing up to 3 s after it joins;
both sides wait for each other (within ``SEE_TIMEOUT``) before the clock starts, so that
wait is never measured.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import anyio

import room
from bench._harness import (
    Column,
    Mint,
    Row,
    add_server_option,
    print_footer,
    run_in_netns,
    run_in_process,
    table,
    why_no_namespace,
    why_no_server,
    worker_line,
)
from bench._harness import mint as _mint
from room.devserver import DevServer
from room.events import DataReceived

SEE_TIMEOUT = 10.0  # both participants see each other (livekit-server: up to 3 s)
PACKETS_TIMEOUT = 60.0  # all packets of one size sent and received
SIZES = (1024, 15 * 1024)


# -- room: the measurements ---------------------------------------------------------------


async def _connect_time(url: str, mint: Mint, prefix: str, n: int = 5) -> float:
    times = []
    for i in range(n):
        started = time.perf_counter()
        async with room.Room.connect(url, mint(f"c{i}", f"{prefix}-connect")):
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def _met(a: room.Room, b: room.Room) -> bool:
    return (b.local_participant.identity in a.remote_participants
            and a.local_participant.identity in b.remote_participants)


async def _see_each_other(a: room.Room, b: room.Room) -> None:
    with anyio.fail_after(SEE_TIMEOUT):
        while not _met(a, b):  # noqa: ASYNC110 - polls two mappings, bounded
            await anyio.sleep(0.01)


async def _throughput(url: str, mint: Mint, prefix: str, size: int, count: int) -> float:
    """Seconds from the first send to the last receive of ``count`` ``size``-byte packets."""
    room_name = f"{prefix}-t{size}"
    async with room.Room.connect(url, mint("rx", room_name)) as rx, \
            room.Room.connect(url, mint("tx", room_name)) as tx:
        await _see_each_other(rx, tx)
        events = rx.events(DataReceived)
        payloads = [i.to_bytes(4, "big") + bytes(size - 4) for i in range(count)]
        finished = 0.0
        expected = 0

        async def receive() -> None:
            nonlocal expected, finished
            async for ev in events:
                if not isinstance(ev, DataReceived):
                    continue
                data = ev.packet.data
                seq = int.from_bytes(data[:4], "big")
                if seq != expected or len(data) != size:
                    raise AssertionError(f"packet {expected}: got #{seq} of {len(data)} bytes")
                expected += 1
                if expected == count:
                    finished = time.perf_counter()
                    return

        try:
            with anyio.fail_after(PACKETS_TIMEOUT):
                started = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive)
                    for p in payloads:
                        await tx.local_participant.publish_data(p)
        except TimeoutError:
            raise TimeoutError(f"{size}-byte packets: {expected} of {count} received "
                               f"after {PACKETS_TIMEOUT} s") from None
        return finished - started


async def measure_url(url: str, count: int, count_15k: int | None = None, *,
                      mint: Mint = _mint, prefix: str = "room") -> dict[str, float]:
    """room→room through the server at ``url``: connect_s, {size}_count/_pps/_MBps."""
    out = {"connect_s": await _connect_time(url, mint, prefix)}
    for size in SIZES:
        n = count if size == 1024 else (count_15k or max(count // 4, 100))
        secs = await _throughput(url, mint, prefix, size, n)
        out[f"{size}_count"] = n
        out[f"{size}_pps"] = n / secs
        out[f"{size}_MBps"] = n * size / secs / 1e6
    return out


async def measure(count: int, count_15k: int | None = None) -> dict[str, float]:
    """room→room through an in-process `DevServer` on loopback."""
    async with DevServer() as srv:
        return await measure_url(srv.url, count, count_15k,
                                 mint=lambda identity, r: srv.token(identity, room=r))


# -- the worker: one JSON line (bench._harness.worker_line) --------------------------------


def _worker(kind: str, url: str, backend: str, count: int, count_15k: int) -> int:
    if kind == "official":
        from bench.official_worker import run

        return worker_line(lambda: run(url, count, count_15k))
    return worker_line(lambda: anyio.run(
        lambda: measure_url(url, count, count_15k, prefix=f"room-{backend}"), backend=backend))


# -- the orchestrator ----------------------------------------------------------------------


def _run_netns(backends: list[str], count: int, count_15k: int, budget: float,
               per_worker: float, server: str) -> tuple[list[Column], str]:
    workers = [(f"room/{b}", ["room", "--backend", b]) for b in backends]
    workers.append(("official", ["official"]))
    for _, argv in workers:
        argv += ["--count", str(count), "--count-15k", str(count_15k)]
    return run_in_netns("bench.data", workers, budget, per_worker, server)


def _run_loopback(backends: list[str], count: int, count_15k: int) -> list[Column]:
    return [run_in_process(f"room/{b}", functools.partial(anyio.run, measure, count, count_15k,
                                                          backend=b))
            for b in backends]


def _table(columns: list[Column]) -> str:
    rows = [Row("connect (median of 5)", "ms", "connect_s", scale=1000.0, digits=1)]
    for size in SIZES:
        rows.append(Row(f"{size // 1024} KiB reliable", "pkt/s", f"{size}_pps"))
        rows.append(Row(f"{size // 1024} KiB reliable", "MB/s", f"{size}_MBps", digits=2))
    return table(columns, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_server_option(parser)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both",
                        help="the AnyIO backend(s) for the room columns (default: both)")
    parser.add_argument("--count", type=int, default=2000, help="1 KiB packets (2000)")
    parser.add_argument("--count-15k", type=int, default=500, help="15 KiB packets (500)")
    parser.add_argument("--loopback", action="store_true",
                        help="room only, in process, on 127.0.0.1 (no namespace)")
    parser.add_argument("--timeout", type=float, default=110.0,
                        help="seconds for all workers together (default 110)")
    parser.add_argument("--worker-timeout", type=float, default=60.0,
                        help="seconds for one worker subprocess (default 60)")
    parser.add_argument("--worker", choices=["room", "official"], help=argparse.SUPPRESS)
    parser.add_argument("url", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        if args.url is None:
            parser.error("--worker needs the server URL")
        backend = "asyncio" if args.backend == "both" else args.backend
        sys.exit(_worker(args.worker, args.url, backend, args.count, args.count_15k))

    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    cannot = why_no_server(args.server, args.loopback)
    if cannot is not None:
        parser.error(f"--server livekit: {cannot}")
    started = time.monotonic()
    reason = why_no_namespace(args.loopback)
    if reason is None:
        columns, where = _run_netns(backends, args.count, args.count_15k, args.timeout,
                                    args.worker_timeout, args.server)
    else:
        columns = _run_loopback(backends, args.count, args.count_15k)
        where = "in-process DevServer on 127.0.0.1 (loopback)"
    print(f"reliable data, one sender → one receiver per room, {args.count} x 1 KiB and "
          f"{args.count_15k} x 15 KiB, first send to last receive, order and count checked")
    print(f"through one {where}")
    print()
    print(_table(columns))
    print()
    if any(c.name == "official" and c.result for c in columns):
        print("ratio = room ÷ official: for connect lower is better, for throughput higher is.")
    if reason is not None:
        print(f"official SDK column missing: {reason} -- libwebrtc ignores loopback "
              "interfaces, so the official SDK needs a network namespace (root and `ip`).")
    print_footer(columns, started)


if __name__ == "__main__":
    main()
