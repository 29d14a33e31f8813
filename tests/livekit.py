"""The real ``livekit-server`` in tests: find the pinned binary and run it in a namespace.

livekit-server offers ICE candidates only on non-loopback interfaces, so it runs inside a
test network namespace (`tests.netns`), bound to the namespace's veth address. Its config
turns off external-IP discovery and replaces the public STUN servers it would otherwise
hand to clients with its own embedded TURN server (which answers STUN too), on the same
address: nothing a test starts ever reaches beyond the namespace.

    with netns(exposed=True) as ns, LiveKitServer(ns, log_dir=tmp) as srv:
        ...  # srv.url, srv.http_url, srv.api_key, srv.api_secret

``.ci/run`` installs the pinned release with ``go install``; ``livekit_unavailable()`` says
why it cannot run here (a pytest skip reason), and with ``ROOM_REQUIRE_LIVEKIT=1`` (CI) an
absent server is an error instead of a skip.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from room.testing.servers import livekit_config, stop_livekit
from tests.netns import NetNs, netns_unavailable

__all__ = [
    "API_KEY",
    "API_SECRET",
    "LIVEKIT_VERSION",
    "LiveKitServer",
    "RedisServer",
    "livekit_binary",
    "livekit_unavailable",
]

LIVEKIT_VERSION = "1.13.5"
API_KEY, API_SECRET = "devkey", "secret"  # what `livekit-server --dev` uses


def _version_of(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().rsplit(" ", 1)[-1] or None


@functools.cache
def livekit_binary() -> str | None:
    """The livekit-server binary at the pinned version: ``$ROOM_LIVEKIT_SERVER``, else the
    ``server`` that ``go install`` put in ``$(go env GOPATH)/bin``, else ``livekit-server``
    on the PATH. None if there is none at that version."""
    candidates: list[str] = []
    if os.environ.get("ROOM_LIVEKIT_SERVER"):
        candidates.append(os.environ["ROOM_LIVEKIT_SERVER"])
    go = shutil.which("go")
    if go is not None:
        gopath = subprocess.run([go, "env", "GOPATH"], capture_output=True, text=True,
                                timeout=30).stdout.strip()
        if gopath:
            candidates.append(str(Path(gopath.split(os.pathsep)[0]) / "bin" / "server"))
    candidates.append(str(Path.home() / "go" / "bin" / "server"))
    found = shutil.which("livekit-server")
    if found:
        candidates.append(found)
    for binary in candidates:
        if os.access(binary, os.X_OK) and _version_of(binary) == LIVEKIT_VERSION:
            return binary
    return None


@functools.cache
def livekit_unavailable() -> str | None:
    """Why the real server cannot run here (a skip reason), or None if it can."""
    if livekit_binary() is None:
        why = (f"livekit-server {LIVEKIT_VERSION} not found (install it with `go install "
               f"github.com/livekit/livekit-server/cmd/server@v{LIVEKIT_VERSION}`, or set "
               "ROOM_LIVEKIT_SERVER)")
    else:
        why = netns_unavailable() or ""
        why = f"livekit-server needs a network namespace: {why}" if why else ""
    if why and os.environ.get("ROOM_REQUIRE_LIVEKIT") == "1":
        raise RuntimeError(f"ROOM_REQUIRE_LIVEKIT=1, but {why}")
    return why or None


def _wait_for_port(ns: NetNs, host: str, port: int, proc: subprocess.Popen[Any],
                   timeout: float, what: str, log: Path) -> None:
    """Until ``host:port`` accepts TCP connections (from inside ``ns`` unless exposed and
    ``host`` is not its loopback)."""
    if ns.exposed and not ipaddress.ip_address(host).is_loopback:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} not listening on {host}:{port} after "
                                       f"{timeout} s:\n{_tail(log)}") from None
                time.sleep(0.02)
    probe = ("import socket, sys, time\n"
             f"deadline = time.monotonic() + {timeout}\n"
             "while True:\n"
             "    try:\n"
             f"        socket.create_connection(({host!r}, {port}), timeout=0.5).close()\n"
             "        break\n"
             "    except OSError:\n"
             "        if time.monotonic() > deadline: sys.exit(1)\n"
             "        time.sleep(0.02)\n")
    res = subprocess.run(ns.argv([sys.executable, "-c", probe]), timeout=timeout + 10)
    if res.returncode != 0:
        raise RuntimeError(f"{what} not listening on {host}:{port} after {timeout} s "
                           f"(rc={proc.poll()}):\n{_tail(log)}")


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class RedisServer:
    """Debian's ``redis-server`` inside ``ns``, for a livekit-server cluster."""

    def __init__(self, ns: NetNs, *, log_dir: Path, port: int = 6379) -> None:
        self.ns = ns
        self.host = ns.server_ip
        self.port = port
        self.log_path = log_dir / f"redis-{port}.log"
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found (Debian package redis-server)")
        log: IO[Any] = open(self.log_path, "ab")
        try:
            self.proc = self.ns.popen(
                [binary, "--bind", self.host, "--port", str(self.port), "--save", "",
                 "--appendonly", "no", "--protected-mode", "no"],
                stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        _wait_for_port(self.ns, self.host, self.port, self.proc, 10, "redis-server",
                       self.log_path)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None:
            stop_livekit(self.proc)


class LiveKitServer:
    """One livekit-server node inside ``ns``, bound to ``ns.server_ip`` (or ``bind``).

    A context manager: entering starts it and returns once it accepts connections; leaving
    stops it (by PID). Ports default to livekit's own (7880 signalling and HTTP, 7882 UDP
    for media, 3478 TURN/STUN); a second node of a cluster needs others, and ``redis``
    (``host:port``) joins it to that cluster. Its log goes to ``log_path``.
    """

    def __init__(self, ns: NetNs, *, log_dir: Path, port: int = 7880, rtc_port: int = 7882,
                 turn_port: int = 3478, redis: str | None = None,
                 config: str = "", name: str = "livekit", bind: str | None = None) -> None:
        self.ns = ns
        # Where it listens for signalling and HTTP (``bind``, e.g. 127.0.0.1 as
        # `livekit-server --dev` does); its media and TURN are on ``ns.server_ip``.
        self.host = bind or ns.server_ip
        self.port = port
        self.rtc_port = rtc_port
        self.turn_port = turn_port
        self.redis = redis
        self.api_key, self.api_secret = API_KEY, API_SECRET
        self.extra_config = config
        self.log_path = log_dir / f"{name}-{port}.log"
        self.config_path = log_dir / f"{name}-{port}.yaml"
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> str:
        """The YAML config: no external IP discovery; the embedded TURN server (on the
        namespace address) stands in for the public STUN servers clients would be told."""
        return livekit_config(port=self.port, rtc_port=self.rtc_port,
                              turn_port=self.turn_port, api_key=self.api_key,
                              api_secret=self.api_secret, redis=self.redis
                              ) + self.extra_config

    def start(self, timeout: float = 20.0) -> None:
        binary = livekit_binary()
        if binary is None:
            raise RuntimeError(livekit_unavailable() or "livekit-server not found")
        self.config_path.write_text(self.config())
        log: IO[Any] = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = self.ns.popen(
                [binary, "--config", str(self.config_path), "--bind", self.host,
                 "--node-ip", self.ns.server_ip],
                stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        _wait_for_port(self.ns, self.host, self.port, self.proc, timeout, "livekit-server",
                       self.log_path)

    def stop(self) -> None:
        """Stop it by PID, at once: a second SIGTERM forces it after 0.2 s. (A single
        SIGTERM is a graceful stop, which tells its participants but takes seconds.)"""
        if self.proc is not None:
            stop_livekit(self.proc)

    def kill(self) -> None:
        """Crash it: SIGKILL by PID, so it says nothing to anyone (``start`` again to
        restart it on the same ports)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 120) -> str:
        return _tail(self.log_path, lines)

    def __enter__(self) -> LiveKitServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
