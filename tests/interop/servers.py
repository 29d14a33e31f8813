"""A server inside a test network namespace, for tests whose peers are subprocesses there.

The interop tests (official SDK), the browser tests (livekit-client in Chromium) and the
benchmarks run every peer inside one namespace (tests/netns.py), because libwebrtc,
Chromium and livekit-server ignore loopback. `ns_server` starts either server there, bound
to ``ns.server_ip``: `room`'s dev server (``python -m room serve``) or the pinned
livekit-server (tests/livekit.py). Both take the dev keys (devkey / secret).

    with netns() as ns, ns_server("livekit", ns, log_dir=tmp) as srv:
        peer = Peer.start(ns, srv.url, srv.token("alice", "r"))
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from room.devserver.auth import mint_token
from tests.livekit import API_KEY, API_SECRET, LiveKitServer
from tests.netns import NetNs

__all__ = ["PORT", "NsServer", "ns_server"]

PORT = 7880
Kind = Literal["dev", "livekit"]


@dataclass
class NsServer:
    """A running server in ``ns``: where to connect, how to mint tokens, its log."""

    kind: Kind
    ns: NetNs
    url: str
    log_path: Path
    api_key: str = API_KEY
    api_secret: str = API_SECRET

    @property
    def http_url(self) -> str:
        return self.url.replace("ws://", "http://", 1)

    def token(self, identity: str, room: str, *, secret: str | None = None,
              **grants: Any) -> str:
        return mint_token(self.api_key, secret or self.api_secret, identity, room=room,
                          **grants)

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def ns_server(kind: Kind, ns: NetNs, *, log_dir: Path, port: int = PORT
              ) -> Iterator[NsServer]:
    """Run the ``kind`` server in ``ns`` until the block ends (stopped by PID)."""
    if kind == "livekit":
        with LiveKitServer(ns, log_dir=log_dir, port=port) as lk:
            yield NsServer("livekit", ns, lk.url, lk.log_path)
        return
    log_path = log_dir / f"devserver-{port}.log"
    with open(log_path, "ab") as log:
        proc = ns.popen([sys.executable, "-m", "room", "serve", "--host", ns.server_ip,
                         "--port", str(port)], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the URL line: it is listening
        if "ws://" not in line:
            raise RuntimeError(f"dev server did not start: {line!r}\n"
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        yield NsServer("dev", ns, f"ws://{ns.server_ip}:{port}", log_path)
    finally:
        from tests.netns import stop_process

        stop_process(proc)
