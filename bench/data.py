"""Data-channel throughput and connect time through the dev server, room and official SDK.

    python -m bench.data [--count 2000] [--count-15k 500] [--backend asyncio|trio|both]
                         [--loopback] [--timeout 110]

Measures, through ONE dev server in one run, for room→room (on asyncio and on trio) and
for official SDK→official SDK (PyPI ``livekit``, Rust/libwebrtc): the median time of 5
connects, and reliable 1 KiB and 15 KiB packets per second and MB/s from one sender to one
receiver in the same room, timed from the first send to the last receive, every packet
checked for order, size and count. Prints one table with the ratios room/official.

libwebrtc ignores loopback interfaces, so when a network namespace can be made (root and
``ip``, see tests/netns.py) everything runs inside one: the dev server
(``python -m room serve`` on the veth address) and, one after another, one worker
subprocess per column (``python -m bench.data --worker room|official URL ...``, each
printing one JSON line). Otherwise, or with ``--loopback``, only `room` is measured, in
this process, against an in-process `DevServer` on 127.0.0.1 (``measure()``), and the
table says why the official column is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio

import room
from room.devserver import DevServer
from room.devserver.auth import mint_token
from room.events import DataReceived

KEY, SECRET = "devkey", "secret"
PORT = 7880
SEE_TIMEOUT = 10.0  # both participants see each other
PACKETS_TIMEOUT = 60.0  # all packets of one size sent and received
SIZES = (1024, 15 * 1024)
ROOT = Path(__file__).resolve().parent.parent  # so that `-m bench.…` works in workers

Mint = Callable[[str, str], str]  # (identity, room name) -> token


def _mint(identity: str, room_name: str) -> str:
    return mint_token(KEY, SECRET, identity, room=room_name)


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


# -- workers: one JSON line ----------------------------------------------------------------


def worker_line(run: Callable[[], dict[str, float]]) -> int:
    """Print ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "..."}``."""
    try:
        result = run()
    except BaseException as exc:  # reported to the parent, which goes on with the others
        traceback.print_exc(file=sys.stderr)
        line: dict[str, Any] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        code = 1
    else:
        line = {"ok": True, "result": result}
        code = 0
    sys.stdout.write("\n" + json.dumps(line) + "\n")
    sys.stdout.flush()
    return code


def _worker(kind: str, url: str, backend: str, count: int, count_15k: int) -> int:
    if kind == "official":
        from bench.official_worker import run

        return worker_line(lambda: run(url, count, count_15k))
    return worker_line(lambda: anyio.run(
        lambda: measure_url(url, count, count_15k, prefix=f"room-{backend}"), backend=backend))


# -- the orchestrator ----------------------------------------------------------------------


@dataclass
class Column:
    name: str
    result: dict[str, float] | None = None
    error: str | None = None
    seconds: float = 0.0


def _stop(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


def _tail(f: IO[str], lines: int = 15) -> str:
    f.seek(0)
    # The official SDK warns on every connect that the dev server has no /rtc/v1: noise.
    kept = [ln for ln in f.readlines() if "v1 path" not in ln]
    return "".join(kept[-lines:]).rstrip()


@contextlib.contextmanager
def _server_in(ns: Any, timeout: float) -> Iterator[str]:
    """``python -m room serve`` on the namespace's server address; yields its URL."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = ns.popen([sys.executable, "-m", "room", "serve", "--host", ns.server_ip,
                         "--port", str(PORT), "--api-key", KEY, "--api-secret", SECRET],
                        stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True,
                        cwd=ROOT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                out.seek(0)
                if "ws://" in out.read():
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dev server did not start (exit {proc.poll()}):\n"
                                       f"{_tail(err)}")
                time.sleep(0.05)
            yield f"ws://{ns.server_ip}:{PORT}"
        finally:
            _stop(proc)


def _run_worker(ns: Any, name: str, argv: list[str], timeout: float) -> Column:
    col = Column(name)
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        proc = ns.popen([sys.executable, "-m", "bench.data", *argv], stdout=out, stderr=err,
                        stdin=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            col.error = f"timed out after {timeout:.0f} s"
        finally:
            _stop(proc)
        col.seconds = time.monotonic() - started
        if col.error is None:
            out.seek(0)
            lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
            try:
                line = json.loads(lines[-1])
            except (IndexError, ValueError):
                col.error = f"no result line (exit {proc.returncode})"
            else:
                if line.get("ok"):
                    col.result = {k: float(v) for k, v in line["result"].items()}
                else:
                    col.error = str(line.get("error"))
        if col.error is not None:
            tail = _tail(err, 8)
            if tail:
                col.error += "\n    " + tail.replace("\n", "\n    ")
    return col


def _run_netns(backends: list[str], count: int, count_15k: int, budget: float,
               per_worker: float) -> tuple[list[Column], str]:
    from tests.netns import netns

    deadline = time.monotonic() + budget
    columns = []
    with netns() as ns, _server_in(ns, timeout=15) as url:
        workers = [(f"room/{b}", ["--worker", "room", url, "--backend", b]) for b in backends]
        workers.append(("official", ["--worker", "official", url]))
        for name, argv in workers:
            left = deadline - time.monotonic()
            if left < 5:
                columns.append(Column(name, error="skipped: out of time budget"))
                continue
            argv += ["--count", str(count), "--count-15k", str(count_15k)]
            columns.append(_run_worker(ns, name, argv, min(per_worker, left)))
        where = (f"dev server `python -m room serve` (asyncio) at {url} in network namespace "
                 f"{ns.name}; workers run one after another as subprocesses there")
    return columns, where


def _run_loopback(backends: list[str], count: int, count_15k: int) -> list[Column]:
    columns = []
    for b in backends:
        col = Column(f"room/{b}")
        started = time.monotonic()
        try:
            col.result = anyio.run(measure, count, count_15k, backend=b)
        except Exception as exc:
            col.error = f"{type(exc).__name__}: {exc}"
        col.seconds = time.monotonic() - started
        columns.append(col)
    return columns


def _table(columns: list[Column]) -> str:
    official = next((c for c in columns if c.name == "official"), None)
    base = official.result if official is not None else None
    rooms = [c for c in columns if c.name != "official"]
    ratio_cols = [c for c in rooms if base is not None]
    rows: list[tuple[str, str, int]] = [("connect (median of 5)", "ms", 0)]
    for size in SIZES:
        rows.append((f"{size // 1024} KiB reliable", "pkt/s", size))
        rows.append((f"{size // 1024} KiB reliable", "MB/s", size))
    header = ["", "unit", *(c.name for c in columns),
              *(f"{c.name.split('/')[-1]}/official" for c in ratio_cols)]
    body: list[list[str]] = []
    for label, unit, size in rows:
        key = "connect_s" if unit == "ms" else f"{int(size)}_{'pps' if unit == 'pkt/s' else 'MBps'}"
        scale = 1000.0 if unit == "ms" else 1.0
        cells = [label, unit]
        for c in columns:
            v = c.result.get(key) if c.result else None
            cells.append("-" if v is None else f"{v * scale:.2f}" if unit == "MB/s"
                         else f"{v * scale:.1f}" if unit == "ms" else f"{v * scale:.0f}")
        for c in ratio_cols:
            a = c.result.get(key) if c.result else None
            b = base.get(key) if base else None
            cells.append("-" if not a or not b else f"{a / b:.2f}x")
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *body]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
    started = time.monotonic()
    if args.loopback:
        reason: str | None = "--loopback given"
    else:
        from tests.netns import netns_unavailable

        reason = netns_unavailable()
    if reason is None:
        columns, where = _run_netns(backends, args.count, args.count_15k, args.timeout,
                                    args.worker_timeout)
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
    for c in columns:
        if c.error is not None:
            print(f"{c.name} failed: {c.error}")
    print(f"columns took {', '.join(f'{c.name} {c.seconds:.1f} s' for c in columns)}; "
          f"total {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
