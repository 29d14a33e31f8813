"""The official LiveKit SDK (``livekit.rtc``, Rust/libwebrtc) side of bench/rpc.py.

    python -m bench.official_rpc URL [--calls 500] [--concurrency 20]
                                     [--concurrent-calls 1000] [--file-mb 5]

Connects a caller and a callee to the server at URL and measures exactly what
bench.rpc measures for `room` (see its docstring): RPC round trip p50/p99 over sequential
calls of an ``echo`` method, RPC calls/s with concurrent callers, and MB/s of a random file
sent with ``send_file`` and read whole by a ``register_byte_stream_handler`` handler.
Prints one JSON line (``bench._harness.worker_line``). libwebrtc ignores loopback, so URL
must not be 127.0.0.1; bench.rpc runs this inside a network namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time

from livekit import rtc

from bench._harness import percentile, worker_line
from bench.official_worker import _connect, _disconnect, _see_each_other
from bench.rpc import (
    METHOD,
    P50,
    P99,
    RATE,
    RESPONSE_TIMEOUT,
    STREAM,
    TOPIC,
    WARMUP,
    attempt,
    check_file,
    latency_timeout,
    make_file,
    payload,
    rate_timeout,
    stream_timeout,
)


async def _echo(data: rtc.RpcInvocationData) -> str:
    return data.payload


async def _call(caller: rtc.Room, i: int) -> None:
    sent = payload(i)
    got = await caller.local_participant.perform_rpc(
        destination_identity="callee", method=METHOD, payload=sent,
        response_timeout=RESPONSE_TIMEOUT)
    if got != sent:
        raise AssertionError(f"call {i}: reply {got[:16]!r}..., not {sent[:16]!r}...")


async def _latency(caller: rtc.Room, calls: int) -> dict[str, float | str]:
    times: list[float] = []

    async def run() -> None:
        for i in range(WARMUP + calls):
            started = time.perf_counter()
            await _call(caller, i)
            if i >= WARMUP:
                times.append(time.perf_counter() - started)

    try:
        await asyncio.wait_for(run(), latency_timeout(calls))
    except TimeoutError:
        raise TimeoutError(f"{len(times)} of {calls} sequential calls made in "
                           f"{latency_timeout(calls):g} s") from None
    return {P50: percentile(times, 0.50), P99: percentile(times, 0.99)}


async def _rate(caller: rtc.Room, total: int, concurrency: int) -> dict[str, float | str]:
    counter = iter(range(total))
    done = 0

    async def one_caller() -> None:
        nonlocal done
        for i in counter:  # shared: each call is made by whichever task is free
            await _call(caller, i)
            done += 1

    async def run() -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(one_caller())

    started = time.perf_counter()
    try:
        await asyncio.wait_for(run(), rate_timeout(total))
    except TimeoutError:
        raise TimeoutError(f"{done} of {total} concurrent calls made in "
                           f"{rate_timeout(total):g} s") from None
    return {RATE: total / (time.perf_counter() - started)}


async def _stream(tx: rtc.Room, rx: rtc.Room, size: int) -> dict[str, float | str]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[float, bytes]] = loop.create_future()
    readers: set[asyncio.Task[None]] = set()  # strong references to the reading tasks

    async def read(reader: rtc.ByteStreamReader) -> None:
        try:
            data = b"".join([chunk async for chunk in reader])
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
        else:
            if not done.done():
                done.set_result((time.perf_counter(), data))

    def on_stream(reader: rtc.ByteStreamReader, sender: str) -> None:
        task = loop.create_task(read(reader))
        readers.add(task)
        task.add_done_callback(readers.discard)

    with tempfile.TemporaryDirectory() as tmp:
        path, digest = make_file(tmp, size)
        rx.register_byte_stream_handler(TOPIC, on_stream)
        try:
            async def run() -> tuple[float, bytes]:
                await tx.local_participant.send_file(str(path), topic=TOPIC)
                return await done

            started = time.perf_counter()
            finished, received = await asyncio.wait_for(run(), stream_timeout(size))
        except TimeoutError:
            raise TimeoutError(f"file not sent and read in {stream_timeout(size):g} s") \
                from None
        finally:
            rx.unregister_byte_stream_handler(TOPIC)
            for task in list(readers):
                task.cancel()
    check_file(received, size, digest)
    return {STREAM: size / (finished - started) / 1e6}


async def measure_official(url: str, calls: int, concurrency: int, concurrent_calls: int,
                           file_bytes: int, prefix: str = "official") -> dict[str, float | str]:
    """Same keys as ``bench.rpc.measure_url``."""
    room_name = f"{prefix}-rpc"
    out: dict[str, float | str] = {}
    callee = await _connect(url, "callee", room_name)
    try:
        caller = await _connect(url, "caller", room_name)
        try:
            await _see_each_other(caller, callee)
            callee.local_participant.register_rpc_method(METHOD, _echo)
            await attempt(out, "round trip", lambda: _latency(caller, calls))
            await attempt(out, "rate", lambda: _rate(caller, concurrent_calls, concurrency))
            await attempt(out, "byte stream", lambda: _stream(caller, callee, file_bytes))
        finally:
            await _disconnect(caller)
    finally:
        await _disconnect(callee)
    return out


def run(url: str, calls: int, concurrency: int, concurrent_calls: int,
        file_bytes: int) -> dict[str, float | str]:
    return asyncio.run(measure_official(url, calls, concurrency, concurrent_calls, file_bytes))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--concurrent-calls", type=int, default=1000)
    parser.add_argument("--file-mb", type=float, default=5.0)
    args = parser.parse_args(argv)
    sys.exit(worker_line(lambda: run(args.url, args.calls, args.concurrency,
                                     args.concurrent_calls, int(args.file_mb * 1_000_000))))


if __name__ == "__main__":
    main()
