"""Drive ``official_peer.py`` (the official SDK) from a test, inside a network namespace.

    with netns() as ns:
        peer = Peer.start(ns, f"ws://{ns.server_ip}:7880", token)
        peer.expect("connected", timeout=20)
        peer.request("publish_data", data_b64="aGk=", reliable=True, topic=None, destinations=[])
        bob.expect("data_received", from_="alice")  # a trailing "_" is dropped from keys
        peer.close()

``expect`` keeps the events it skips, so a later ``expect`` still finds them; ``aexpect``
does the same from async code without blocking the event loop.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import anyio

from tests.netns import NetNs

OFFICIAL_PEER = Path(__file__).with_name("official_peer.py")
ROOM_PEER = Path(__file__).with_name("room_peer.py")

Event = dict[str, Any]


class PeerError(RuntimeError):
    """The peer exited, answered ``failed``, or did not say what was expected in time."""


class Peer:
    def __init__(self, proc: subprocess.Popen[str], name: str = "peer",
                 stderr_path: Path | None = None) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.name = name
        self.stderr_path = stderr_path  # all of the peer's stderr (logs) is copied here
        self.history: list[Event] = []  # every event, in order of arrival
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
        self._backlog: list[Event] = []  # arrived, not yet taken by expect()
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._exited = False
        threading.Thread(target=self._read_stdout, args=(proc.stdout,), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(proc.stderr,), daemon=True).start()

    @classmethod
    def start(cls, ns: NetNs, url: str, token: str, *, args: list[str] | None = None,
              env: dict[str, str] | None = None, name: str = "peer",
              stderr_path: Path | None = None, script: Path | None = None,
              program: list[str] | None = None) -> Peer:
        """Run official_peer.py inside ``ns`` (``ns`` stops it at the latest on exit).

        ``args``: e.g. ``["--log-level", "DEBUG"]``, ``["--dual-pc"]``; ``env``: the whole
        environment (e.g. ``{**os.environ, "LIVEKIT_RTC_DEBUG": "1"}``); ``script``: another
        Python peer (room_peer.py); ``program``: a peer that is not a Python script (e.g.
        ``["node", "tests/browser/browser_peer.mjs"]``), run as ``program URL TOKEN ARGS``.
        """
        program = program or [sys.executable, str(script or OFFICIAL_PEER)]
        argv = [*program, url, token, *(args or [])]
        proc: subprocess.Popen[str] = ns.popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, env=env)
        return cls(proc, name, stderr_path)

    # -- reading ------------------------------------------------------------------------

    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "garbage", "line": line.rstrip("\n")}
            self._queue.put(event)
        self._queue.put(None)

    def _read_stderr(self, stream: IO[str]) -> None:
        copy = open(self.stderr_path, "a") if self.stderr_path else None  # noqa: SIM115
        try:
            for line in stream:
                self.stderr_tail.append(line.rstrip("\n"))
                if copy is not None:
                    copy.write(line)
                    copy.flush()
        finally:
            if copy is not None:
                copy.close()

    def _take(self, event: str, match: dict[str, Any]) -> Event | None:
        """Move what has arrived into the backlog; remove and return the first match."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._arrive(item)
        for i, ev in enumerate(self._backlog):
            if ev.get("event") == event and all(ev.get(k) == v for k, v in match.items()):
                return self._backlog.pop(i)
        return None

    def _arrive(self, item: Event | None) -> None:
        if item is None:
            self._exited = True
        else:
            self.history.append(item)
            self._backlog.append(item)

    def _fail(self, why: str) -> PeerError:
        seen = ", ".join(json.dumps(e) for e in self.history[-10:])
        err = "\n".join(list(self.stderr_tail)[-20:])
        return PeerError(f"{self.name}: {why}; last events: [{seen}]; stderr tail:\n{err}")

    @staticmethod
    def _match(fields: dict[str, Any]) -> dict[str, Any]:
        return {k.removesuffix("_"): v for k, v in fields.items()}

    def _wait(self, deadline: float, why: str) -> None:
        """Block until one more line arrives (or a short while); raise when it is too late."""
        left = deadline - time.monotonic()
        if self._exited:
            raise self._fail(f"exited (rc={self.proc.poll()}) before {why}")
        if left <= 0:
            raise self._fail(f"no {why} in time")
        with contextlib.suppress(queue.Empty):
            self._arrive(self._queue.get(timeout=min(left, 0.5)))

    def expect(self, event: str, timeout: float = 10.0, **match: Any) -> Event:
        """The next ``event`` whose fields equal ``match`` (``from_`` matches ``from``)."""
        want = self._match(match)
        deadline = time.monotonic() + timeout
        while (found := self._take(event, want)) is None:
            self._wait(deadline, f"{event} {want} ({timeout} s)")
        return found

    async def aexpect(self, event: str, timeout: float = 10.0, **match: Any) -> Event:
        """``expect`` for async code: polls, so cancelling it loses no event."""
        want = self._match(match)
        with anyio.move_on_after(timeout):
            while (found := self._take(event, want)) is None:
                if self._exited:
                    raise self._fail(f"exited (rc={self.proc.poll()}) before {event} {want}")
                await anyio.sleep(0.02)
            return found
        raise self._fail(f"no {event} {want} within {timeout} s")

    # -- writing ------------------------------------------------------------------------

    def send(self, cmd: str, **fields: Any) -> str:
        """Write one command line; returns its id (answered by ``ok``/``failed``)."""
        cid = f"{self.name}-{next(self._ids)}"
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, "id": cid, **fields}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise self._fail(f"cannot send {cmd}: {exc}") from exc
        return cid

    def answer(self, cid: str, timeout: float = 10.0) -> Event:
        """The ``ok`` or ``failed`` event answering command ``cid`` (raises only on time)."""
        deadline = time.monotonic() + timeout
        while not (ev := self._take("ok", {"id": cid}) or self._take("failed", {"id": cid})):
            self._wait(deadline, f"answer to {cid} ({timeout} s)")
        return ev

    def _answer(self, cid: str, timeout: float) -> Event:
        ev = self.answer(cid, timeout)
        if ev["event"] == "failed":
            raise self._fail(f"{cid} failed: {ev.get('message')}")
        return ev

    def request(self, cmd: str, timeout: float = 10.0, **fields: Any) -> Event:
        """``send`` and wait for ``ok``; raises ``PeerError`` on ``failed``."""
        return self._answer(self.send(cmd, **fields), timeout)

    def close(self, timeout: float = 10.0) -> int:
        """Close stdin (the peer leaves and exits), wait, kill it if it lingers; returns rc."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
