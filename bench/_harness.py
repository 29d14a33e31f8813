"""What the through-the-dev-server benchmarks (bench/data.py, bench/rpc.py) share.

A benchmark runs ``python -m room serve`` inside a network namespace (tests/netns.py) and,
one after another, one worker subprocess per column (``python -m bench.<module> --worker
...``), each printing one JSON line (`worker_line`); `run_in_netns` collects the lines into
`Column`s and `table` prints them side by side with ratios against the ``official`` column.

Only the standard library and the dev server's token minting are imported here, so that
the official-SDK workers do not pull in anyio.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
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

__all__ = ["KEY", "PORT", "ROOT", "SECRET", "Column", "Mint", "Row", "describe", "leaf", "mint",
           "percentile", "print_footer", "run_in_netns", "run_in_process", "run_worker",
           "server_in", "stop", "table", "tail", "worker_line"]

KEY, SECRET = "devkey", "secret"
PORT = 7880
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
    """Print ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "..."}``.

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


def tail(f: IO[str], lines: int = 15) -> str:
    f.seek(0)
    # The official SDK warns on every connect that the dev server has no /rtc/v1: noise.
    kept = [ln for ln in f.readlines() if "v1 path" not in ln]
    return "".join(kept[-lines:]).rstrip()


@contextlib.contextmanager
def server_in(ns: Any, timeout: float) -> Iterator[str]:
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
                                       f"{tail(err)}")
                time.sleep(0.05)
            yield f"ws://{ns.server_ip}:{PORT}"
        finally:
            stop(proc)


def run_worker(ns: Any, module: str, name: str, argv: list[str], timeout: float) -> Column:
    """``python -m module *argv`` inside ``ns``, killed after ``timeout`` s; its JSON line."""
    col = Column(name)
    started = time.monotonic()
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
        if col.error is None:
            out.seek(0)
            lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
            try:
                line = json.loads(lines[-1])
            except (IndexError, ValueError):
                col.error = f"no result line (exit {proc.returncode})"
            else:
                if line.get("ok"):
                    _split(line["result"], col)
                else:
                    col.error = str(line.get("error"))
        if col.error is not None:
            text = tail(err, 8)
            if text:
                col.error += "\n    " + text.replace("\n", "\n    ")
    return col


def run_in_netns(module: str, workers: Sequence[tuple[str, list[str]]], budget: float,
                 per_worker: float) -> tuple[list[Column], str]:
    """One dev server in a fresh namespace, then each ``(name, argv)`` worker in turn as
    ``python -m module --worker argv[0] URL *argv[1:]``; the columns and a "where" line."""
    from tests.netns import netns

    deadline = time.monotonic() + budget
    columns = []
    with netns() as ns, server_in(ns, timeout=15) as url:
        for name, (kind, *rest) in workers:
            left = deadline - time.monotonic()
            if left < 5:
                columns.append(Column(name, error="skipped: out of time budget"))
                continue
            argv = ["--worker", kind, url, *rest]
            columns.append(run_worker(ns, module, name, argv, min(per_worker, left)))
        where = (f"dev server `python -m room serve` (asyncio) at {url} in network namespace "
                 f"{ns.name}; workers run one after another as subprocesses there")
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
    """Why columns or cells are missing, and how long each column took."""
    for c in columns:
        if c.error is not None:
            print(f"{c.name} failed: {c.error}")
        for key, why in c.notes.items():
            print(f"{c.name} {key}: {why}")
    print(f"columns took {', '.join(f'{c.name} {c.seconds:.1f} s' for c in columns)}; "
          f"total {time.monotonic() - started:.1f} s")
