"""The server a user's tests run against: `room`'s dev server or a real livekit-server.

A *server spec* names it, as the ``--livekit-server`` pytest option or the
``ROOM_TEST_SERVER`` environment variable give it (several, comma-separated, run every
test that uses the ``livekit_server`` fixture once per server):

- ``dev`` (the default): a fresh `room.devserver.DevServer` on 127.0.0.1 for each test,
  with livekit-server's timings; ``dev?presence_interval=0`` (and ``ping_interval``,
  ``ping_timeout``, ``join_timeout``) changes them;
- the path of a ``livekit-server`` binary: started once per test session on free ports
  (signalling on 127.0.0.1, media on this machine's other addresses, as livekit-server
  does: it ignores loopback), stopped at the end of the session;
- ``ws://KEY:SECRET@HOST:PORT`` (or ``wss://``): a livekit-server (or LiveKit Cloud
  project) that is already running, with that API key and secret. Tests share it, so each
  should use rooms of its own (`RoomServer.new_room_name`).

`open_server(spec)` gives a `RoomServer`: where to connect, tokens, LiveKit's server API
(the Twirp ``RoomService``, which the dev server serves too) and the faults this server
can be dealt (`RoomServer.faults`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import anyio
import anyio.to_thread
import httpx
from livekit.protocol import models
from livekit.protocol import room as room_proto

from room.testing.history import FaultKind

if TYPE_CHECKING:
    import room
    from room.devserver import DevServer

__all__ = [
    "RoomServer",
    "ServerSpec",
    "TwirpError",
    "UnsupportedFaultError",
    "configured_specs",
    "livekit_config",
    "default_spec",
    "open_server",
    "parse_spec",
    "parse_specs",
    "stop_livekit",
]

ENV = "ROOM_TEST_SERVER"
# Set by the pytest plugin from ``--livekit-server`` (it wins over the environment).
_option: str | None = None

ALL_FAULTS: frozenset[FaultKind] = frozenset({"cut_signal", "drop_udp", "restart"})


class UnsupportedFaultError(RuntimeError):
    """This server cannot be dealt that fault (e.g. dropping UDP on a remote server)."""


class TwirpError(RuntimeError):
    """LiveKit's server API refused a call: ``code`` is the Twirp code (``not_found``...)."""

    def __init__(self, method: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{method}: {status} {code}: {message}")
        self.method = method
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A parsed server spec (see the module docstring)."""

    kind: Literal["dev", "binary", "url"]
    binary: str = ""
    url: str = ""
    api_key: str = "devkey"
    api_secret: str = field(default="secret", repr=False)
    # DevServer settings (``dev?presence_interval=0``): numbers of seconds.
    dev_options: tuple[tuple[str, float], ...] = ()

    @property
    def id(self) -> str:
        """A short test id: ``dev``, ``livekit`` or ``livekit-url``."""
        return {"dev": "dev", "binary": "livekit", "url": "livekit-url"}[self.kind]


_DEV_OPTIONS = ("presence_interval", "ping_interval", "ping_timeout", "join_timeout")


def parse_spec(text: str) -> ServerSpec:
    """Parse one server spec; ValueError says what is wrong with it."""
    text = text.strip()
    if text in ("", "dev"):
        return ServerSpec("dev")
    if text.startswith("dev?"):
        options: list[tuple[str, float]] = []
        for name, value in parse_qsl(text[4:], keep_blank_values=True, strict_parsing=True):
            if name not in _DEV_OPTIONS:
                raise ValueError(f"unknown dev server setting {name!r} (known: "
                                 f"{', '.join(_DEV_OPTIONS)})")
            try:
                options.append((name, float(value)))
            except ValueError:
                raise ValueError(f"dev server setting {name}={value!r} is not a number"
                                 ) from None
        return ServerSpec("dev", dev_options=tuple(options))
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("ws", "wss", "http", "https"):
            raise ValueError(f"server URL must be ws://, wss://, http:// or https://: {text!r}")
        if not parts.username or not parts.password or not parts.hostname:
            raise ValueError("a server URL needs the API key and secret: "
                             "ws://KEY:SECRET@HOST:PORT")
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return ServerSpec("url", url=urlunsplit((scheme, netloc, parts.path.rstrip("/"), "",
                                                 "")),
                          api_key=parts.username, api_secret=parts.password)
    binary = shutil.which(text) or text
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise ValueError(f"server spec {text!r} is neither 'dev', a ws://KEY:SECRET@HOST:PORT "
                         "URL nor an executable livekit-server")
    return ServerSpec("binary", binary=os.path.abspath(binary))


def parse_specs(text: str) -> list[ServerSpec]:
    """Comma-separated specs."""
    return [parse_spec(part) for part in text.split(",") if part.strip()] or [ServerSpec("dev")]


def configured_specs() -> list[ServerSpec]:
    """The servers this test run is configured with: the ``--livekit-server`` option,
    else ``$ROOM_TEST_SERVER``, else the dev server."""
    text = _option if _option is not None else os.environ.get(ENV, "")
    return parse_specs(text)


def default_spec() -> ServerSpec:
    """The first configured server (see `configured_specs`)."""
    return configured_specs()[0]


class RoomServer:
    """A running server for tests: the dev server or livekit-server (see the module doc).

    ``url`` is what `room.Room.connect` takes; `token` mints access tokens it accepts;
    the async methods call LiveKit's server API. ``dev`` is the `DevServer` itself when it
    is one (for its other test hooks), else None.
    """

    def __init__(self, spec: ServerSpec, *, url: str, dev: DevServer | None = None,
                 process: LiveKitProcess | None = None) -> None:
        self.spec = spec
        self.kind: Literal["dev", "livekit"] = "dev" if spec.kind == "dev" else "livekit"
        self.url = url
        self.api_key = spec.api_key
        self.api_secret = spec.api_secret
        self.dev = dev
        self._process = process

    def __repr__(self) -> str:
        return f"<RoomServer {self.spec.id} {self.url}>"

    @property
    def http_url(self) -> str:
        return self.url.replace("ws", "http", 1)

    @property
    def faults(self) -> frozenset[FaultKind]:
        """The faults `cut_signal`, `drop_udp` and `restart` can deal here. (A
        `room.testing.Scenario` cuts its agent's signalling on any server, through a
        proxy of its own.)"""
        if self.dev is not None:
            return ALL_FAULTS
        if self._process is not None:
            return frozenset({"restart"})
        return frozenset()

    @staticmethod
    def new_room_name(prefix: str = "test") -> str:
        """A room name no other test uses (for servers that tests share)."""
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    # -- joining -------------------------------------------------------------------------

    def token(
        self, identity: str, *, room: str, name: str | None = None,
        metadata: str | None = None, attributes: Mapping[str, str] | None = None,
        can_publish: bool = True, can_subscribe: bool = True, can_publish_data: bool = True,
        can_update_own_metadata: bool = True, hidden: bool = False, ttl: float = 3600.0,
        kind: str | None = None,
    ) -> str:
        """An access token for ``identity`` in ``room`` (as `DevServer.token`)."""
        from room.devserver.auth import mint_token

        return mint_token(
            self.api_key, self.api_secret, identity, room=room, name=name, metadata=metadata,
            attributes=attributes, can_publish=can_publish, can_subscribe=can_subscribe,
            can_publish_data=can_publish_data, can_update_own_metadata=can_update_own_metadata,
            hidden=hidden, ttl=ttl, kind=kind)

    def connect(self, identity: str, *, room: str, options: room.RoomOptions | None = None,
                **grants: Any) -> contextlib.AbstractAsyncContextManager[room.Room]:
        """``Room.connect`` as ``identity`` (a fresh token with ``grants``) to ``room``."""
        from room import Room

        return Room.connect(self.url, self.token(identity, room=room, **grants),
                            options=options)

    # -- LiveKit's server API (Twirp RoomService) --------------------------------------

    async def _twirp(self, method: str, request: Any, response: Any, *,
                     room: str = "", admin: bool = True) -> Any:
        from room.devserver.auth import admin_token

        token = admin_token(self.api_key, self.api_secret, room=room, room_admin=admin,
                            room_list=not admin)
        async with httpx.AsyncClient(timeout=10.0) as client:
            resp = await client.post(
                f"{self.http_url}/twirp/livekit.RoomService/{method}",
                content=request.SerializeToString(),
                headers={"Authorization": f"Bearer {token}",
                         "Content-Type": "application/protobuf"})
        if resp.status_code != 200:
            try:
                body = resp.json()
                code, msg = str(body.get("code", "")), str(body.get("msg", ""))
            except ValueError:
                code, msg = "unknown", resp.text[:200]
            raise TwirpError(method, resp.status_code, code, msg)
        result = response()
        result.ParseFromString(resp.content)
        return result

    async def participants(self, room: str) -> list[str]:
        """Identities in ``room``, sorted ([] if there is no such room)."""
        try:
            resp = await self._twirp("ListParticipants",
                                     room_proto.ListParticipantsRequest(room=room),
                                     room_proto.ListParticipantsResponse, room=room)
        except TwirpError as exc:
            if exc.code == "not_found":
                return []
            raise
        return sorted(p.identity for p in resp.participants)

    async def remove_participant(self, room: str, identity: str) -> None:
        """Remove ``identity`` from ``room`` (it gets ``Disconnected``)."""
        await self._twirp("RemoveParticipant",
                          room_proto.RoomParticipantIdentity(room=room, identity=identity),
                          room_proto.RemoveParticipantResponse, room=room)

    async def update_room_metadata(self, room: str, metadata: str) -> None:
        await self._twirp("UpdateRoomMetadata",
                          room_proto.UpdateRoomMetadataRequest(room=room, metadata=metadata),
                          models.Room, room=room)

    async def send_data(self, room: str, data: bytes, *, topic: str | None = None,
                        destination_identities: Sequence[str] = (),
                        reliable: bool = True) -> None:
        """Send a data packet from the server to everyone in ``room`` (or only some)."""
        kind = models.DataPacket.Kind.RELIABLE if reliable else models.DataPacket.Kind.LOSSY
        request = room_proto.SendDataRequest(
            room=room, data=data, kind=kind,
            destination_identities=list(destination_identities))
        if topic is not None:
            request.topic = topic
        await self._twirp("SendData", request, room_proto.SendDataResponse, room=room)

    # -- faults ------------------------------------------------------------------------

    def _require(self, fault: FaultKind) -> None:
        if fault not in self.faults:
            where = ("a livekit-server this test run did not start" if self.kind == "livekit"
                     and self._process is None else f"{self.spec.id} server")
            raise UnsupportedFaultError(f"{fault} is not available on {where} "
                                        f"(available: {sorted(self.faults) or 'none'})")

    async def cut_signal(self, room: str, identity: str) -> None:
        """Drop ``identity``'s signalling WebSocket at once, as a network fault would (no
        close frame, no ``leave``): it resumes. Dev server only (a `Scenario` can cut its
        agent's on any server)."""
        self._require("cut_signal")
        assert self.dev is not None
        await self.dev.cut_signal(room, identity)

    async def drop_udp(self, room: str, identity: str, seconds: float) -> None:
        """Drop every UDP datagram to and from ``identity``'s peer connections for
        ``seconds`` (returns at once). Dev server only."""
        self._require("drop_udp")
        assert self.dev is not None
        await self.dev.drop_udp(room, identity, seconds)

    async def restart(self, *, downtime: float = 0.0) -> None:
        """Crash the server and start it again on the same port after ``downtime``
        seconds: it forgets every room, so clients must join again. Returns once it
        accepts connections. The dev server, or a livekit-server this run started."""
        self._require("restart")
        if not 0 <= downtime < float("inf"):
            raise ValueError("downtime must be a non-negative number of seconds")
        if self.dev is not None:
            await self.dev.restart(downtime=downtime)
            return
        assert self._process is not None
        process = self._process
        await anyio.to_thread.run_sync(process.kill)
        await anyio.sleep(downtime)
        await anyio.to_thread.run_sync(process.start)


# -- a livekit-server process of our own -----------------------------------------------------


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1" if kind == socket.SOCK_STREAM else "0.0.0.0", 0))
        port: int = s.getsockname()[1]
        return port


def livekit_config(*, port: int, rtc_port: int, turn_port: int, api_key: str,
                   api_secret: str, redis: str | None = None) -> str:
    """A livekit-server YAML config that keeps it local: signalling and HTTP on ``port``,
    media on ``rtc_port`` (UDP, one port), no external-IP discovery, and its embedded TURN
    server (which answers STUN too) on ``turn_port`` in place of the public STUN servers
    it would otherwise hand to clients. ``redis`` (``host:port``) joins a cluster."""
    lines = [
        f"port: {port}",
        "rtc:",
        f"  udp_port: {rtc_port}",
        "  tcp_port: 0",
        "  use_external_ip: false",
        "turn:",
        "  enabled: true",
        f"  udp_port: {turn_port}",
        "keys:",
        f"  {api_key}: {api_secret}",
        "logging:",
        "  level: info",
    ]
    if redis:
        lines += ["redis:", f"  address: {redis}"]
    return "\n".join(lines) + "\n"


def stop_livekit(proc: subprocess.Popen[Any]) -> None:
    """Stop a livekit-server process (by PID) at once: the first SIGTERM starts its
    graceful drain (seconds, telling every participant), a second one after 0.2 s cuts
    it short, SIGKILL after 3 s more. (SIGCONT first, in case a test froze it.)"""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(0.2)
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(3)


class LiveKitProcess:
    """``livekit-server`` started from ``binary`` on free ports, with a config that keeps
    it local: no external-IP discovery, its embedded TURN server (which answers STUN) in
    place of the public STUN servers it would otherwise hand to clients."""

    def __init__(self, binary: str, *, api_key: str = "devkey",
                 api_secret: str = "secret") -> None:
        self.binary = binary
        self.api_key, self.api_secret = api_key, api_secret
        self.port = _free_port(socket.SOCK_STREAM)
        self.rtc_port = _free_port(socket.SOCK_DGRAM)
        self.turn_port = _free_port(socket.SOCK_DGRAM)
        self.dir = Path(tempfile.mkdtemp(prefix="room-livekit-"))
        self.log_path = self.dir / "livekit.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def config(self) -> str:
        return livekit_config(port=self.port, rtc_port=self.rtc_port,
                              turn_port=self.turn_port, api_key=self.api_key,
                              api_secret=self.api_secret)

    def start(self, timeout: float = 20.0) -> None:
        """Start it; return once it accepts connections (RuntimeError with its log if not)."""
        config = self.dir / "livekit.yaml"
        config.write_text(self.config())
        log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [self.binary, "--config", str(config), "--bind", "127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"livekit-server exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"livekit-server not listening after {timeout} s:\n"
                                       f"{self.log_tail()}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL it (by PID): it says nothing to anyone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Stop it at once (see `stop_livekit`)."""
        if self.proc is not None:
            stop_livekit(self.proc)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


_processes: dict[str, LiveKitProcess] = {}


def shared_process(binary: str) -> LiveKitProcess:
    """The livekit-server of this binary for this test process, started on first use."""
    process = _processes.get(binary)
    if process is None or process.proc is None or process.proc.poll() is not None:
        process = process or LiveKitProcess(binary)
        process.start()
        _processes[binary] = process
    return process


def stop_shared_processes() -> None:
    """Stop every livekit-server `shared_process` started (the plugin does this at the
    end of the session)."""
    while _processes:
        _, process = _processes.popitem()
        process.stop()
        shutil.rmtree(process.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def open_server(spec: ServerSpec | str = "dev") -> AsyncIterator[RoomServer]:
    """The `RoomServer` that ``spec`` names, running while inside: a fresh dev server, the
    session's livekit-server from that binary, or the one at that URL."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    if spec.kind == "dev":
        from room.devserver import DevServer

        settings: dict[str, Any] = dict(spec.dev_options)
        for name in ("ping_interval", "ping_timeout"):  # whole seconds, as livekit's
            if name in settings:
                settings[name] = int(settings[name])
        async with DevServer(host="127.0.0.1", port=0, api_key=spec.api_key,
                             api_secret=spec.api_secret, **settings) as dev:
            yield RoomServer(spec, url=dev.url, dev=dev)
        return
    if spec.kind == "binary":
        process = await anyio.to_thread.run_sync(shared_process, spec.binary)
        yield RoomServer(spec, url=process.url, process=process)
        return
    yield RoomServer(spec, url=spec.url)
