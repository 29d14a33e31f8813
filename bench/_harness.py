"""What the through-a-server benchmarks (bench/data.py, bench/rpc.py, bench/sctp.py) share.

A benchmark runs one server inside a network namespace (tests/netns.py) -- ``--server
dev``: `room`'s own ``python -m room serve``; ``--server livekit``: the pinned real
livekit-server (tests/livekit.py) -- and, one after another, one worker subprocess per
column (``python -m bench.<module> --worker ...``), each printing one JSON line
(`worker_line`); `run_in_netns` collects the lines into `Column`s and `table` prints them
side by side with ratios against the ``official`` column.

Only the standard library and the dev server's token minting are imported here, so that
the official-SDK workers do not pull in anyio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from room.devserver.auth import mint_token

__all__ = ["KEY", "PORT", "ROOT", "SECRET", "SERVERS", "Column", "Mint", "Row",
           "add_server_option", "cpu_seconds", "describe", "leaf", "livekit_in", "mint",
           "percentile", "print_footer", "run_in_netns", "run_in_process", "run_worker",
           "server_in", "stop", "table", "tail", "waited_seconds", "why_no_server",
           "worker_line"]

KEY, SECRET = "devkey", "secret"  # also livekit-server's (tests/livekit.py)
PORT = 7880
SERVERS = ("dev", "livekit")  # --server
ROOT = Path(__file__).resolve().parent.parent  # so that `-m bench.…` works in workers

Mint = Callable[[str, str], str]  # (identity, room name) -> token


def mint(identity: str, room_name: str) -> str:
    return mint_token(KEY, SECRET, identity, room=room_name)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-quantile (0 < q <= 1) of ``values``."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def leaf(exc: BaseException) -> BaseException:
    """``exc``, or the one exception that (nested) exception groups hold."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    """``Type: message`` of ``leaf(exc)``."""
    exc = leaf(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- workers: one JSON line ----------------------------------------------------------------


def worker_line(run: Callable[[], Mapping[str, float | str]]) -> int:
    """Print ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "..."}``, plus
    ``"waited"``: `waited_seconds` of this process at the end.

    In a result, numbers are measurements and strings say why one was not made (the key
    names the measurement; the parent keeps them in `Column.notes`)."""
    try:
        result = dict(run())
    except BaseException as exc:  # reported to the parent, which goes on with the others
        traceback.print_exc(file=sys.stderr)
        line: dict[str, Any] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        code = 1
    else:
        line = {"ok": True, "result": result}
        code = 0
    line["waited"] = waited_seconds()
    sys.stdout.write("\n" + json.dumps(line) + "\n")
    sys.stdout.flush()
    return code


# -- the orchestrator ----------------------------------------------------------------------


@dataclass
class Column:
    name: str
    result: dict[str, float] | None = None
    error: str | None = None
    seconds: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)  # measurement key -> why it is missing
    worker_cpu: float | None = None  # CPU seconds of the worker process (all its threads)
    server_cpu: float | None = None  # CPU seconds the server spent while the worker ran
    worker_wait: float | None = None  # seconds runnable but without a core (`waited_seconds`)
    server_wait: float | None = None  # the same for the server, while the worker ran


def _split(result: Mapping[str, float | str], col: Column) -> None:
    col.result = {k: float(v) for k, v in result.items() if not isinstance(v, str)}
    col.notes = {k: v for k, v in result.items() if isinstance(v, str)}


def run_in_process(name: str, run: Callable[[], Mapping[str, float | str]]) -> Column:
    """A column measured in this process (the loopback fallback)."""
    col = Column(name)
    started = time.monotonic()
    try:
        _split(run(), col)
    except Exception as exc:
        col.error = f"{type(exc).__name__}: {exc}"
    col.seconds = time.monotonic() - started
    return col


def stop(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    from tests.netns import stop_process

    stop_process(proc, grace)


def why_no_namespace(loopback: bool) -> str | None:
    """Why the run stays on loopback (room only), or None to use a network namespace."""
    if loopback:
        return "--loopback given"
    from tests.netns import netns_unavailable

    return netns_unavailable()


def add_server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", choices=SERVERS, default="dev",
                        help="the server the clients meet through, in a network namespace: "
                             "dev = `python -m room serve` (default), livekit = the pinned "
                             "livekit-server (tests/livekit.py)")


def why_no_server(server: str, loopback: bool) -> str | None:
    """Why ``--server livekit`` cannot run (it needs a namespace, and the binary), or None.

    The dev server falls back to loopback instead (`why_no_namespace`)."""
    if server != "livekit":
        return None
    if loopback:
        return "--loopback runs the in-process dev server only"
    from tests.livekit import livekit_unavailable

    return livekit_unavailable()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (all threads), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name (field 2) may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def waited_seconds(pid: int | str = "self") -> float | None:
    """Seconds the live threads of process ``pid`` have spent runnable but waiting for a
    core (``/proc/<pid>/task/*/schedstat``): how much other work held them back."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    total = 0.0
    for task in tasks:
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that ended
            total += int((task / "schedstat").read_text().split()[1]) / 1e9
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tail(f: IO[str], lines: int = 15) -> str:
    f.seek(0)
    # The official SDK warns on every connect that the dev server has no /rtc/v1: noise.
    kept = [ln for ln in f.readlines() if "v1 path" not in ln]
    return "".join(kept[-lines:]).rstrip()


@contextlib.contextmanager
def server_in(ns: Any, timeout: float) -> Iterator[tuple[str, int]]:
    """``python -m room serve`` on the namespace's server address; yields its URL and
    PID."""
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
                                       f"{tail(err)}")
                time.sleep(0.05)
            yield f"ws://{ns.server_ip}:{PORT}", proc.pid
        finally:
            stop(proc)


@contextlib.contextmanager
def livekit_in(ns: Any, timeout: float) -> Iterator[Any]:
    """The pinned livekit-server on the namespace's server address (its config and log in a
    temporary directory); yields the running `tests.livekit.LiveKitServer`."""
    from tests.livekit import LiveKitServer

    with tempfile.TemporaryDirectory(prefix="bench-livekit-") as tmp:
        srv = LiveKitServer(ns, log_dir=Path(tmp))
        try:
            srv.start(timeout)
            yield srv
        finally:
            srv.stop()


def run_worker(ns: Any, module: str, name: str, argv: list[str], timeout: float) -> Column:
    """``python -m module *argv`` inside ``ns``, killed after ``timeout`` s; its JSON line."""
    col = Column(name)
    started = time.monotonic()
    cpu_before = _children_cpu()  # the worker is our child (`ip netns exec` execs it)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        proc = ns.popen([sys.executable, "-m", module, *argv], stdout=out, stderr=err,
                        stdin=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            col.error = f"timed out after {timeout:.0f} s"
        finally:
            stop(proc)
        col.seconds = time.monotonic() - started
        col.worker_cpu = _children_cpu() - cpu_before
        if col.error is None:
            out.seek(0)
            lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
            try:
                line = json.loads(lines[-1])
            except (IndexError, ValueError):
                col.error = f"no result line (exit {proc.returncode})"
            else:
                if isinstance(line.get("waited"), float):
                    col.worker_wait = line["waited"]
                if line.get("ok"):
                    _split(line["result"], col)
                else:
                    col.error = str(line.get("error"))
        if col.error is not None:
            text = tail(err, 8)
            if text:
                col.error += "\n    " + text.replace("\n", "\n    ")
    return col


def _run_workers(ns: Any, url: str, server_pid: int, module: str,
                 workers: Sequence[tuple[str, list[str]]], deadline: float,
                 per_worker: float) -> list[Column]:
    columns = []
    for name, (kind, *rest) in workers:
        left = deadline - time.monotonic()
        if left < 5:
            columns.append(Column(name, error="skipped: out of time budget"))
            continue
        argv = ["--worker", kind, url, *rest]
        before = cpu_seconds(server_pid), waited_seconds(server_pid)
        col = run_worker(ns, module, name, argv, min(per_worker, left))
        after = cpu_seconds(server_pid), waited_seconds(server_pid)
        if before[0] is not None and after[0] is not None:
            col.server_cpu = after[0] - before[0]
        if before[1] is not None and after[1] is not None:
            col.server_wait = max(after[1] - before[1], 0.0)
        columns.append(col)
    return columns


def run_in_netns(module: str, workers: Sequence[tuple[str, list[str]]], budget: float,
                 per_worker: float, server: str = "dev") -> tuple[list[Column], str]:
    """One server (``server``: "dev" or "livekit") in a fresh namespace, then each ``(name,
    argv)`` worker in turn as ``python -m module --worker argv[0] URL *argv[1:]``; the
    columns and a "where" line. With livekit-server, a failed column's error ends with the
    server's last log lines."""
    from tests.netns import netns

    deadline = time.monotonic() + budget
    after = "workers run one after another as subprocesses there"
    if server == "livekit":
        from tests.livekit import LIVEKIT_VERSION

        with netns() as ns, livekit_in(ns, timeout=20) as srv:
            assert srv.proc is not None
            columns = _run_workers(ns, srv.url, srv.proc.pid, module, workers, deadline,
                                   per_worker)
            for c in columns:
                if c.error is not None and not c.error.startswith("skipped"):
                    log = srv.log_tail(10).replace("\n", "\n    ")
                    c.error += f"\n    livekit-server log tail:\n    {log}"
            where = (f"livekit-server {LIVEKIT_VERSION} at {srv.url} in network namespace "
                     f"{ns.name}; {after}")
        return columns, where
    with netns() as ns, server_in(ns, timeout=15) as (url, pid):
        columns = _run_workers(ns, url, pid, module, workers, deadline, per_worker)
        where = (f"dev server `python -m room serve` (asyncio) at {url} in network namespace "
                 f"{ns.name}; {after}")
    return columns, where


# -- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    unit: str
    key: str
    scale: float = 1.0
    digits: int = 0


def table(columns: Sequence[Column], rows: Sequence[Row]) -> str:
    """One line per row, one cell per column, then room/official ratios if there is an
    ``official`` column with a result."""
    official = next((c for c in columns if c.name == "official"), None)
    base = official.result if official is not None else None
    rooms = [c for c in columns if c.name != "official"]
    ratio_cols = [c for c in rooms if base is not None]
    header = ["", "unit", *(c.name for c in columns),
              *(f"{c.name.split('/')[-1]}/official" for c in ratio_cols)]
    body: list[list[str]] = []
    for row in rows:
        cells = [row.label, row.unit]
        for c in columns:
            v = c.result.get(row.key) if c.result else None
            cells.append("-" if v is None else f"{v * row.scale:.{row.digits}f}")
        for c in ratio_cols:
            a = c.result.get(row.key) if c.result else None
            b = base.get(row.key) if base else None
            cells.append("-" if not a or not b else f"{a / b:.2f}x")
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *body]]
    return "\n".join(lines)


def print_footer(columns: Sequence[Column], started: float) -> None:
    """Why columns or cells are missing, and how long each column took: with the CPU
    seconds of its worker process and of the server meanwhile, and how long each was
    runnable but waiting for a core (the two share the machine with whatever else runs)."""
    for c in columns:
        if c.error is not None:
            print(f"{c.name} failed: {c.error}")
        for key, why in c.notes.items():
            print(f"{c.name} {key}: {why}")

    def took(c: Column) -> str:
        parts = []
        for who, cpu, wait in (("worker", c.worker_cpu, c.worker_wait),
                               ("server", c.server_cpu, c.server_wait)):
            if cpu is not None:
                parts.append(f"{who} {cpu:.1f}" + (f" +{wait:.1f} waiting" if wait else ""))
        return f"{c.name} {c.seconds:.1f} s" + (f" (CPU s: {', '.join(parts)})" if parts else "")

    print(f"columns took {', '.join(took(c) for c in columns)}; "
          f"total {time.monotonic() - started:.1f} s")
