"""RPC latency and rate, and byte-stream throughput, through one server: room vs official.

    python -m bench.rpc [--server dev|livekit] [--calls 500] [--concurrency 20]
                        [--concurrent-calls 1000] [--file-mb 5] [--backend asyncio|trio|both]
                        [--loopback] [--timeout 110]

Measures, through ONE server in one run (``--server dev``, the default: `room`'s dev
server; ``--server livekit``: the pinned real livekit-server), for room↔room (on asyncio
and on trio) and for official SDK↔official SDK (PyPI ``livekit``, Rust/libwebrtc), with a
caller and a callee in one room, the callee serving an ``echo`` method that returns its
payload:

- RPC round trip: p50 and p99 of ``--calls`` sequential ``perform_rpc`` calls with a
  64-byte payload (after 20 unmeasured warm-up calls), each reply checked;
- RPC rate: ``--concurrent-calls`` calls made by ``--concurrency`` concurrent tasks of the
  caller, calls per second from the first request to the last reply, each reply checked;
- byte stream: a ``--file-mb`` MB file of random bytes (incompressible, so the official
  SDK's optional deflate gains nothing) sent with ``send_file`` from the caller to the
  callee, MB/s (10^6 bytes) from the start of ``send_file`` to the whole file read on the
  callee (``byte_streams(topic)`` + ``read_all()`` in room,
  ``register_byte_stream_handler`` + iterating the reader in the official SDK), checked
  byte for byte.

Wire formats differ, as each SDK chooses: `room` speaks RPC v1 (request, ack, response
packets); two official SDKs (1.2) speak v2 to each other, because the server passes on
their ``client_protocol`` (request and response each one text-stream header with inline
content, plus a v1 ack). Three reliable packets per call either way. The file goes
uncompressed from both (`room` never compresses; the official SDK did not here, and random
bytes would not shrink anyway): header, 15,000-byte chunks, trailer.

A measurement that cannot be made (say, data streams not implemented yet) prints '-' and
the reason under the table; the others still run. As in bench/data.py (see
bench/_harness.py), everything runs inside a network namespace when one can be made: the
server (``python -m room serve``, or livekit-server) and, one after another, one worker
subprocess per column (``python -m bench.rpc --worker room|official URL ...``, each
printing one JSON line). Otherwise, or with ``--loopback``, only `room` is measured, in
this process, against an in-process `DevServer` on 127.0.0.1 (``--server livekit`` has no
such fallback). Caller and callee wait until each sees the other before anything is timed
(livekit-server announces a participant that publishes nothing up to 3 s late).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

import room
from bench._harness import (
    Column,
    Mint,
    Row,
    add_server_option,
    describe,
    leaf,
    percentile,
    print_footer,
    run_in_netns,
    run_in_process,
    table,
    why_no_namespace,
    why_no_server,
    worker_line,
)
from bench._harness import mint as _mint
from bench.data import _see_each_other
from room.devserver import DevServer

METHOD = "echo"
TOPIC = "bench-file"
PAYLOAD_SIZE = 64
WARMUP = 20
RESPONSE_TIMEOUT = 10.0  # one call


# Bounds of the three measurements, roomy for their work (today they take a fifth of it)
# and together, with two connects, well under the default --worker-timeout.
def latency_timeout(calls: int) -> float:
    return max(10.0, 0.03 * (WARMUP + calls))  # 15.6 s for 500


def rate_timeout(total: int) -> float:
    return max(10.0, 0.015 * total)  # 15 s for 1000


def stream_timeout(size: int) -> float:
    return max(10.0, 4e-6 * size)  # 20 s for 5 MB


def worker_timeout(calls: int, total: int, size: int) -> float:
    """The default --worker-timeout: the three bounds, plus time to connect and leave."""
    return latency_timeout(calls) + rate_timeout(total) + stream_timeout(size) + 15.0


# Result keys (shared with bench/official_rpc.py) and the rows of the table.
P50, P99, RATE, STREAM = "rtt_p50_s", "rtt_p99_s", "calls_per_s", "stream_MBps"


def payload(i: int) -> str:
    """The ``i``-th call's payload: distinct, so that a mixed-up reply is caught."""
    return f"{i:08d}".ljust(PAYLOAD_SIZE, ".")


def make_file(directory: str, size: int) -> tuple[Path, str]:
    """A file of ``size`` random bytes in ``directory``, and its SHA-256."""
    data = os.urandom(size)
    path = Path(directory) / f"bench-{size}.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def check_file(data: bytes, size: int, digest: str) -> None:
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise AssertionError(f"received {len(data)} bytes, not the {size} sent")


# -- room: the measurements ---------------------------------------------------------------


async def _echo(data: room.RpcInvocationData) -> str:
    return data.payload


async def _call(caller: room.Room, i: int) -> None:
    sent = payload(i)
    got = await caller.local_participant.perform_rpc(
        destination_identity="callee", method=METHOD, payload=sent,
        response_timeout=RESPONSE_TIMEOUT)
    if got != sent:
        raise AssertionError(f"call {i}: reply {got[:16]!r}..., not {sent[:16]!r}...")


async def _latency(caller: room.Room, calls: int) -> dict[str, float | str]:
    times = []
    try:
        with anyio.fail_after(latency_timeout(calls)):
            for i in range(WARMUP + calls):
                started = time.perf_counter()
                await _call(caller, i)
                if i >= WARMUP:
                    times.append(time.perf_counter() - started)
    except TimeoutError:
        raise TimeoutError(f"{len(times)} of {calls} sequential calls made in "
                           f"{latency_timeout(calls):g} s") from None
    return {P50: percentile(times, 0.50), P99: percentile(times, 0.99)}


async def _rate(caller: room.Room, total: int, concurrency: int) -> dict[str, float | str]:
    counter = iter(range(total))
    done = 0

    async def one_caller() -> None:
        nonlocal done
        for i in counter:  # shared: each call is made by whichever task is free
            await _call(caller, i)
            done += 1

    try:
        with anyio.fail_after(rate_timeout(total)):
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(one_caller)
            return {RATE: total / (time.perf_counter() - started)}
    except TimeoutError:
        raise TimeoutError(f"{done} of {total} concurrent calls made in "
                           f"{rate_timeout(total):g} s") from None


async def _stream(tx: room.Room, rx: room.Room, size: int) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        path, digest = make_file(tmp, size)
        # Subscribe before sending: a subscription sees only streams that start after it.
        streams = rx.byte_streams(TOPIC)
        received = b""
        finished = 0.0

        async def receive() -> None:
            nonlocal received, finished
            async for reader in streams:
                received = await reader.read_all()
                finished = time.perf_counter()
                return

        try:
            with anyio.fail_after(stream_timeout(size)):
                started = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive)
                    await tx.local_participant.send_file(path, topic=TOPIC)
        except TimeoutError:
            raise TimeoutError(f"file not sent and read in {stream_timeout(size):g} s") \
                from None
        check_file(received, size, digest)
        return {STREAM: size / (finished - started) / 1e6}


async def attempt(out: dict[str, float | str], what: str,
                  measure: Callable[[], Awaitable[dict[str, float | str]]]) -> None:
    """Run one measurement; if it fails, note why under ``what`` and go on."""
    try:
        out.update(await measure())
    except Exception as exc:
        why = describe(exc)
        if isinstance(leaf(exc), NotImplementedError):
            why += " (not implemented yet in this SDK)"
        out[what] = why


async def measure_url(url: str, calls: int, concurrency: int, concurrent_calls: int,
                      file_bytes: int, *, mint: Mint = _mint,
                      prefix: str = "room") -> dict[str, float | str]:
    """room↔room through the server at ``url``; the keys P50, P99, RATE, STREAM, or for
    a measurement that failed a key naming it, with the reason."""
    room_name = f"{prefix}-rpc"
    out: dict[str, float | str] = {}
    async with room.Room.connect(url, mint("callee", room_name)) as callee, \
            room.Room.connect(url, mint("caller", room_name)) as caller:
        await _see_each_other(caller, callee)
        callee.local_participant.register_rpc_method(METHOD, _echo)
        await attempt(out, "round trip", lambda: _latency(caller, calls))
        await attempt(out, "rate", lambda: _rate(caller, concurrent_calls, concurrency))
        await attempt(out, "byte stream", lambda: _stream(caller, callee, file_bytes))
    return out


async def measure(calls: int, concurrency: int, concurrent_calls: int,
                  file_bytes: int) -> dict[str, float | str]:
    """room↔room through an in-process `DevServer` on loopback."""
    async with DevServer() as srv:
        return await measure_url(url=srv.url, calls=calls, concurrency=concurrency,
                                 concurrent_calls=concurrent_calls, file_bytes=file_bytes,
                                 mint=lambda identity, r: srv.token(identity, room=r))


# -- the worker and the orchestrator -------------------------------------------------------


def _worker(kind: str, url: str, backend: str, args: argparse.Namespace) -> int:
    sizes = (args.calls, args.concurrency, args.concurrent_calls, _file_bytes(args))
    if kind == "official":
        from bench.official_rpc import run

        return worker_line(lambda: run(url, *sizes))
    return worker_line(lambda: anyio.run(
        lambda: measure_url(url, *sizes, prefix=f"room-{backend}"), backend=backend))


def _file_bytes(args: argparse.Namespace) -> int:
    return int(args.file_mb * 1_000_000)


def _table(columns: list[Column], concurrency: int, file_mb: float) -> str:
    return table(columns, [
        Row("RPC round trip p50", "ms", P50, scale=1000.0, digits=2),
        Row("RPC round trip p99", "ms", P99, scale=1000.0, digits=2),
        Row(f"RPC, {concurrency} concurrent", "calls/s", RATE),
        Row(f"byte stream {file_mb:g} MB", "MB/s", STREAM, digits=2),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_server_option(parser)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both",
                        help="the AnyIO backend(s) for the room columns (default: both)")
    parser.add_argument("--calls", type=int, default=500,
                        help="sequential calls for the round trip (500)")
    parser.add_argument("--concurrency", type=int, default=20,
                        help="concurrent callers for the rate (20)")
    parser.add_argument("--concurrent-calls", type=int, default=1000,
                        help="calls in all for the rate (1000)")
    parser.add_argument("--file-mb", type=float, default=5.0,
                        help="size of the byte stream, MB of 10^6 bytes (5)")
    parser.add_argument("--loopback", action="store_true",
                        help="room only, in process, on 127.0.0.1 (no namespace)")
    parser.add_argument("--timeout", type=float, default=110.0,
                        help="seconds for all workers together (default 110)")
    parser.add_argument("--worker-timeout", type=float,
                        help="seconds for one worker subprocess (default: the bounds of its "
                             "three measurements + 15; 66 for the defaults)")
    parser.add_argument("--worker", choices=["room", "official"], help=argparse.SUPPRESS)
    parser.add_argument("url", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("calls", "concurrency", "concurrent_calls", "file_mb"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.worker is not None:
        if args.url is None:
            parser.error("--worker needs the server URL")
        backend = "asyncio" if args.backend == "both" else args.backend
        sys.exit(_worker(args.worker, args.url, backend, args))

    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    sizes = [args.calls, args.concurrency, args.concurrent_calls, _file_bytes(args)]
    cannot = why_no_server(args.server, args.loopback)
    if cannot is not None:
        parser.error(f"--server livekit: {cannot}")
    started = time.monotonic()
    reason = why_no_namespace(args.loopback)
    if reason is None:
        common = ["--calls", str(args.calls), "--concurrency", str(args.concurrency),
                  "--concurrent-calls", str(args.concurrent_calls),
                  "--file-mb", str(args.file_mb)]
        workers = [(f"room/{b}", ["room", "--backend", b, *common]) for b in backends]
        workers.append(("official", ["official", *common]))
        per_worker = args.worker_timeout or worker_timeout(
            args.calls, args.concurrent_calls, _file_bytes(args))
        columns, where = run_in_netns("bench.rpc", workers, args.timeout, per_worker,
                                      args.server)
    else:
        columns = [run_in_process(f"room/{b}", functools.partial(anyio.run, measure, *sizes,
                                                                 backend=b))
                   for b in backends]
        where = "in-process DevServer on 127.0.0.1 (loopback)"
    print(f"RPC `{METHOD}` of a {PAYLOAD_SIZE}-byte payload: {args.calls} sequential calls "
          f"(after {WARMUP} warm-up), then {args.concurrent_calls} calls by "
          f"{args.concurrency} concurrent tasks of one caller; then a {args.file_mb:g} MB "
          "random file by send_file, caller → callee in one room, every byte checked")
    print(f"through one {where}")
    print()
    print(_table(columns, args.concurrency, args.file_mb))
    print()
    if any(c.name == "official" and c.result for c in columns):
        print("ratio = room ÷ official: for round trip lower is better, for calls/s and MB/s "
              "higher is.")
    if reason is not None:
        print(f"official SDK column missing: {reason} -- libwebrtc ignores loopback "
              "interfaces, so the official SDK needs a network namespace (root and `ip`).")
    print_footer(columns, started)


if __name__ == "__main__":
    main()
