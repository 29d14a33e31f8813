"""Where data throughput goes through a server: the SCTP side of bench.data, room only.

    python -m bench.sctp [--server dev|livekit] [--count 2000] [--count-15k 300]

A diagnostic for the figures of bench.data, not a comparison: one room (asyncio) sender
and one receiver in one room push ``--count`` reliable 1 KiB packets, then (a fresh pair)
``--count-15k`` 15 KiB packets, through the chosen server in a network namespace, as in
bench.data. The worker counts, on aiortc's own SCTP associations (its SCTP transport
class is wrapped in the worker process only), what happened on the wire while the packets
went through:

- the sender's association to the server: DATA chunks sent against distinct TSNs
  (retransmissions), SACKs received and the gap-ack blocks in them (losses the server
  reported), the smoothed RTT, congestion window and slow-start threshold at the end, and
  what the server announced: its receive window (a_rwnd of its INIT/INIT-ACK) and its
  maximum message size (SDP);
- the receiver's association from the server: DATA chunks received against distinct
  TSNs (duplicates the server resent), and the gap-ack blocks in its SACKs (chunks it
  found missing);
- UDP datagrams the kernel dropped for want of room in a socket's receive buffer
  (``/proc/net/udp`` of the namespace), on the server's sockets and on the worker's;
- CPU seconds, and seconds runnable but waiting for a core, of the worker's aiortc
  thread (``room-aiortc``, where all SCTP work of both rooms happens) and of the server
  process (the owner of the namespace's other UDP sockets), during the transfer only.

Each size is one worker subprocess (one column). aiortc puts one chunk in each datagram;
a 1 KiB packet is one DATA chunk, a 15 KiB packet fourteen.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

import room
from bench._harness import (
    Row,
    add_server_option,
    cpu_seconds,
    mint,
    print_footer,
    run_in_netns,
    table,
    waited_seconds,
    why_no_namespace,
    why_no_server,
    worker_line,
)
from bench.data import PACKETS_TIMEOUT, _see_each_other
from room.events import DataReceived

SIZES = (1024, 15 * 1024)


# -- counting on aiortc's SCTP associations -------------------------------------------------


@dataclass
class _Counts:
    """What one association sent and received (chunk type name -> count)."""

    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    received: collections.Counter[str] = field(default_factory=collections.Counter)
    tsns_sent: set[int] = field(default_factory=set)
    tsns_received: set[int] = field(default_factory=set)
    gap_blocks: int = 0  # in SACKs received: what the peer reported missing
    gap_blocks_sent: int = 0  # in SACKs sent: what we found missing
    peer_rwnd: int | None = None  # kept by `_restart_counts`


_counts: dict[int, tuple[Any, _Counts]] = {}  # id(transport) -> (transport, counts)


def _restart_counts() -> None:
    for key, (t, c) in list(_counts.items()):
        _counts[key] = (t, _Counts(peer_rwnd=c.peer_rwnd))


def _instrument() -> None:
    """Wrap aiortc's SCTP transport class (this process only) to count chunks."""
    from aiortc import rtcsctptransport as sctp

    cls = sctp.RTCSctpTransport
    init, receive, send = cls.__init__, cls._receive_chunk, cls._send_chunk

    def counted(t: Any) -> _Counts:
        return _counts.setdefault(id(t), (t, _Counts()))[1]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        counted(self)

    async def _receive_chunk(self: Any, chunk: Any) -> None:
        c = counted(self)
        c.received[type(chunk).__name__] += 1
        if isinstance(chunk, sctp.DataChunk):
            c.tsns_received.add(chunk.tsn)
        elif isinstance(chunk, sctp.SackChunk):
            c.gap_blocks += len(chunk.gaps)
        elif isinstance(chunk, sctp.InitChunk | sctp.InitAckChunk):
            c.peer_rwnd = chunk.advertised_rwnd
        await receive(self, chunk)

    async def _send_chunk(self: Any, chunk: Any) -> None:
        c = counted(self)
        c.sent[type(chunk).__name__] += 1
        if isinstance(chunk, sctp.DataChunk):
            c.tsns_sent.add(chunk.tsn)
        elif isinstance(chunk, sctp.SackChunk):
            c.gap_blocks_sent += len(chunk.gaps)
        await send(self, chunk)

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls._receive_chunk = _receive_chunk  # type: ignore[method-assign]
    cls._send_chunk = _send_chunk  # type: ignore[method-assign]


# -- what the kernel and the scheduler saw --------------------------------------------------


def _own_sockets() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    return inodes


def _udp_sockets() -> Iterator[tuple[str, int]]:
    """(inode, drops) of every UDP socket in this network namespace."""
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            yield fields[9], int(fields[12])


def _udp_drops() -> tuple[int, int]:
    """Datagrams dropped so far on (the worker's, the others') UDP sockets."""
    mine = _own_sockets()
    ours = others = 0
    for inode, drops in _udp_sockets():
        if inode in mine:
            ours += drops
        else:
            others += drops
    return ours, others


def _server_pid() -> int | None:
    """The process that owns this namespace's UDP sockets that are not ours."""
    theirs = {inode for inode, _ in _udp_sockets()} - _own_sockets()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:[") and link[len("socket:["):-1] in theirs:
                return int(entry.name)
    return None


def _thread_times(name: str) -> tuple[float, float]:
    """(CPU seconds, seconds runnable but waiting) of this process's Python threads called
    ``name`` (Python names no OS thread before 3.14: found by native id)."""
    run = wait = 0.0
    for thread in threading.enumerate():
        if thread.name != name or thread.native_id is None:
            continue
        try:
            ran, waited, _ = Path(f"/proc/self/task/{thread.native_id}/schedstat") \
                .read_text().split()
        except (OSError, ValueError):
            continue
        run += int(ran) / 1e9
        wait += int(waited) / 1e9
    return run, wait


def _process_times(pid: int | None) -> tuple[float, float]:
    if pid is None:
        return 0.0, 0.0
    return cpu_seconds(pid) or 0.0, waited_seconds(pid) or 0.0


# -- the worker ------------------------------------------------------------------------------


async def measure(url: str, size: int, count: int) -> dict[str, float | str]:
    room_name = f"sctp-{size}"
    async with room.Room.connect(url, mint("rx", room_name)) as rx, \
            room.Room.connect(url, mint("tx", room_name)) as tx:
        await _see_each_other(rx, tx)
        events = rx.events(DataReceived)
        payload = bytes(size)
        received = 0

        async def receive() -> None:
            nonlocal received
            async for ev in events:
                if isinstance(ev, DataReceived):
                    received += 1
                    if received == count:
                        return

        server = _server_pid()
        _restart_counts()
        drops0, thread0, server0 = _udp_drops(), _thread_times("room-aiortc"), \
            _process_times(server)
        started = time.perf_counter()
        with anyio.fail_after(PACKETS_TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                for _ in range(count):
                    await tx.local_participant.publish_data(payload)
        seconds = time.perf_counter() - started
        drops1, thread1, server1 = _udp_drops(), _thread_times("room-aiortc"), \
            _process_times(server)

        # The busiest sender and receiver of DATA chunks are tx's and rx's associations.
        counted = list(_counts.values())
        t_tx, c_tx = max(counted, key=lambda tc: tc[1].sent["DataChunk"])
        _, c_rx = max(counted, key=lambda tc: tc[1].received["DataChunk"])
        distinct_sent = len(c_tx.tsns_sent) or 1
        distinct_received = len(c_rx.tsns_received) or 1
        out: dict[str, float | str] = {
            "pps": count / seconds,
            "MBps": count * size / seconds / 1e6,
            "chunks": distinct_sent,
            "retransmitted_pct": 100 * (c_tx.sent["DataChunk"] - distinct_sent) / distinct_sent,
            "sacks_per_chunk": c_tx.received["SackChunk"] / distinct_sent,
            "gap_blocks": c_tx.gap_blocks,
            "srtt_ms": 1000 * (t_tx._srtt or 0.0),
            "cwnd_kB": t_tx._cwnd / 1000,
            "ssthresh_kB": t_tx._ssthresh / 1000,
            "peer_rwnd_kB": (c_tx.peer_rwnd or 0) / 1000,
            "peer_max_message": float(t_tx._remote_max_message_size),
            "duplicates_pct": 100 * (c_rx.received["DataChunk"] - distinct_received)
            / distinct_received,
            "rx_gap_blocks": c_rx.gap_blocks_sent,
            "drops_server": drops1[1] - drops0[1],
            "drops_worker": drops1[0] - drops0[0],
            "aiortc_cpu_s": thread1[0] - thread0[0],
            "aiortc_wait_s": thread1[1] - thread0[1],
            "server_cpu_s": server1[0] - server0[0],
            "server_wait_s": server1[1] - server0[1],
            "seconds": seconds,
        }
        if server is None:
            out["server_cpu_s"] = out["server_wait_s"] = "server process not found"
        return out


def _worker(url: str, size: int, count: int) -> int:
    _instrument()
    return worker_line(lambda: anyio.run(measure, url, size, count))


# -- the orchestrator ------------------------------------------------------------------------


ROWS = [
    Row("throughput", "pkt/s", "pps"),
    Row("throughput", "MB/s", "MBps", digits=2),
    Row("transfer", "s", "seconds", digits=2),
    Row("DATA chunks (distinct TSNs)", "", "chunks"),
    Row("sender: retransmitted", "%", "retransmitted_pct", digits=1),
    Row("sender: SACKs received per chunk", "", "sacks_per_chunk", digits=2),
    Row("sender: gap-ack blocks received", "", "gap_blocks"),
    Row("sender: smoothed RTT at the end", "ms", "srtt_ms", digits=1),
    Row("sender: cwnd at the end", "kB", "cwnd_kB"),
    Row("sender: ssthresh at the end", "kB", "ssthresh_kB"),
    Row("server's a_rwnd", "kB", "peer_rwnd_kB"),
    Row("server's max message size", "B", "peer_max_message"),
    Row("receiver: duplicate chunks", "%", "duplicates_pct", digits=1),
    Row("receiver: gap-ack blocks sent", "", "rx_gap_blocks"),
    Row("UDP drops, server sockets", "", "drops_server"),
    Row("UDP drops, worker sockets", "", "drops_worker"),
    Row("aiortc thread CPU", "s", "aiortc_cpu_s", digits=2),
    Row("aiortc thread waiting for a core", "s", "aiortc_wait_s", digits=2),
    Row("server CPU", "s", "server_cpu_s", digits=2),
    Row("server waiting for a core", "s", "server_wait_s", digits=2),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_server_option(parser)
    parser.add_argument("--count", type=int, default=2000, help="1 KiB packets (2000)")
    parser.add_argument("--count-15k", type=int, default=300, help="15 KiB packets (300)")
    parser.add_argument("--timeout", type=float, default=110.0,
                        help="seconds for both workers together (default 110)")
    parser.add_argument("--worker", choices=["room"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=1024, help=argparse.SUPPRESS)
    parser.add_argument("url", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        if args.url is None:
            parser.error("--worker needs the server URL")
        sys.exit(_worker(args.url, args.size, args.count))

    cannot = why_no_server(args.server, False) or why_no_namespace(False)
    if cannot is not None:
        parser.error(cannot)
    started = time.monotonic()
    workers = [(f"{size // 1024} KiB", ["room", "--size", str(size), "--count", str(n)])
               for size, n in zip(SIZES, (args.count, args.count_15k), strict=True)]
    columns, where = run_in_netns("bench.sctp", workers, args.timeout, 60.0, args.server)
    print(f"room (asyncio) → room reliable packets, {args.count} x 1 KiB and "
          f"{args.count_15k} x 15 KiB, one sender → one receiver per room; what the "
          "sender's and receiver's SCTP associations saw during the transfer")
    print(f"through one {where}")
    print()
    print(table(columns, ROWS))
    print()
    print_footer(columns, started)


if __name__ == "__main__":
    main()
