"""The Trio bridge decision, measured: ways to call asyncio-only aiortc from AnyIO code.

    python -m bench.bridge [--calls 5000]

Round-trip cost of one call into an asyncio coroutine and back, per design:

- ``inline``: await it directly on the caller's loop (asyncio backend only; the reference)
- ``thread``: `room.transport.aio.AiortcLoop`, a dedicated asyncio loop thread (asyncio
  and Trio backends alike) -- what `room` uses
- ``trio-asyncio``: ``trio_asyncio.aio_as_trio`` inside ``trio_asyncio.open_loop()``
  (Trio only; needs the trio-asyncio package, skipped if absent)

and the throughput of posting fire-and-forget calls through the thread's batching mailbox.
Ratios are against ``inline`` measured in the same run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import anyio

from room.transport.aio import AiortcLoop


async def _noop() -> int:
    return 1


async def _time_calls(call: Callable[[], Awaitable[object]], n: int) -> float:
    for _ in range(100):  # warm up
        await call()
    started = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - started) / n


async def _inline(n: int) -> float:
    return await _time_calls(_noop, n)


async def _thread(n: int) -> float:
    loop = AiortcLoop()
    return await _time_calls(lambda: loop.run(_noop), n)


async def _posts(n: int) -> float:
    loop = AiortcLoop()
    done = anyio.Event()
    count = 0

    def hit() -> None:
        nonlocal count
        count += 1

    await loop.run(_noop)
    started = time.perf_counter()
    for _ in range(n):
        loop.call_soon(hit)
    await loop.run(_noop)  # FIFO: every post has run once this returns
    done.set()
    assert count == n
    return (time.perf_counter() - started) / n


_TRIO_ASYNCIO = """
import sys, trio, trio_asyncio
from bench.bridge import _noop, _time_calls
async def main():
    async with trio_asyncio.open_loop():
        return await _time_calls(lambda: trio_asyncio.aio_as_trio(_noop)(), int(sys.argv[1]))
print(trio.run(main))
"""


def _trio_asyncio(n: int) -> float | None:
    """In a child process: trio-asyncio replaces the asyncio event-loop policy globally."""
    proc = subprocess.run([sys.executable, "-c", _TRIO_ASYNCIO, str(n)],
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        return None  # not installed (or broken): reported as n/a
    return float(proc.stdout.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    n = parser.parse_args(argv).calls
    ref = anyio.run(_inline, n, backend="asyncio")
    rows: list[tuple[str, float | None]] = [
        ("inline (asyncio, reference)", ref),
        ("thread, asyncio caller", anyio.run(_thread, n, backend="asyncio")),
        ("thread, trio caller", anyio.run(_thread, n, backend="trio")),
        ("trio-asyncio, trio caller", _trio_asyncio(n)),
        ("thread mailbox post (asyncio)", anyio.run(_posts, n * 10, backend="asyncio")),
        ("thread mailbox post (trio)", anyio.run(_posts, n * 10, backend="trio")),
    ]
    print(f"{'design':32} {'per call':>12} {'vs inline':>10}")
    for name, secs in rows:
        if secs is None:
            print(f"{name:32} {'n/a':>12}")
        else:
            print(f"{name:32} {secs * 1e6:9.1f} µs {secs / ref:9.1f}x")


if __name__ == "__main__":
    main()
