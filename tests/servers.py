"""One interface to the server a test runs against: `room`'s dev server or livekit-server.

Every test that runs clients against a server takes the ``server`` fixture
(tests/conftest.py), which is parametrized over both. A `Server` gives what a test needs
from either: where to connect (``url``, ``options()`` or ``connect()``), tokens, and
server-side actions through LiveKit's server API with ``livekit-api`` (``participants``,
``update_room_metadata``, ``remove_participant``, ``send_data``, or any call with
``api``). ``server.dev`` is the `DevServer` itself when the test runs on it (for its test
hooks), else None.

In-process clients reach a livekit-server in its network namespace over a veth pair
(`tests.netns`); ``options()`` tells them to gather ICE candidates on that pair's address
only, since the machine's other interfaces cannot reach the namespace (and must not).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
import sniffio
from livekit import api as lkapi
from livekit.protocol import models
from livekit.protocol import room as room_proto

import room
from room.devserver import DevServer
from room.testing.servers import RoomServer, ServerSpec
from tests.livekit import LiveKitServer

__all__ = ["Server", "in_asyncio", "run_livekit_api"]

T = TypeVar("T")
Kind = Literal["dev", "livekit"]


async def in_asyncio(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Await ``fn()``, a coroutine of asyncio-only code (livekit-api runs on aiohttp): as
    is under asyncio, in a worker thread with an asyncio loop of its own under Trio."""
    if sniffio.current_async_library() == "asyncio":
        return await fn()
    return await anyio.to_thread.run_sync(lambda: asyncio.run(fn()))


async def run_livekit_api(url: str, key: str, secret: str,
                          call: Callable[[lkapi.LiveKitAPI], Awaitable[T]]) -> T:
    """``call(api)`` with a `livekit.api.LiveKitAPI` for the server at ``url``."""
    async def with_api() -> T:
        async with lkapi.LiveKitAPI(url, key, secret) as client:
            return await call(client)

    return await in_asyncio(with_api)


class Server(RoomServer):
    """A running server under test (see the module docstring): the testing toolkit's
    `RoomServer` (tokens, faults; a `Scenario` takes it as is), with the server API
    through the official ``livekit-api`` and what this test setup needs besides."""

    def __init__(self, kind: Kind, *, url: str, api_key: str, api_secret: str,
                 dev: DevServer | None = None, livekit: LiveKitServer | None = None,
                 host_addresses: Sequence[str] | None = None) -> None:
        spec = (ServerSpec("dev", api_key=api_key, api_secret=api_secret) if kind == "dev"
                else ServerSpec("url", url=url, api_key=api_key, api_secret=api_secret))
        super().__init__(spec, url=url, dev=dev)
        self.kind: Kind = kind
        self.livekit = livekit
        self._host_addresses = tuple(host_addresses) if host_addresses is not None else None
        # How late the others may hear of a join or leave of a participant that publishes
        # nothing, and after how long a silent client is dropped (seconds).
        self.presence_delay = dev.presence_interval if dev is not None else 3.0
        self.ping_timeout = float(dev.ping_timeout) if dev is not None else 15.0

    def __repr__(self) -> str:
        return f"<Server {self.kind} {self.url}>"

    @classmethod
    def of_dev(cls, dev: DevServer) -> Server:
        return cls("dev", url=dev.url, api_key=dev.api_key, api_secret=dev.api_secret,
                   dev=dev)

    @classmethod
    def of_livekit(cls, lk: LiveKitServer) -> Server:
        hosts = (lk.ns.client_ip,) if lk.ns.exposed else None
        return cls("livekit", url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret,
                   livekit=lk, host_addresses=hosts)

    # -- joining -------------------------------------------------------------------------

    def options(self, options: room.RoomOptions | None = None, **fields: Any
                ) -> room.RoomOptions:
        """``options`` (or the defaults, with ``fields`` changed) as a client of this
        server in this test setup needs them."""
        opts = replace(options or room.RoomOptions(), **fields)
        if self._host_addresses is None:
            return opts
        rtc_config = opts.rtc_config or room.RtcConfiguration()
        if rtc_config.host_addresses is None:
            rtc_config = replace(rtc_config, host_addresses=self._host_addresses)
        return replace(opts, rtc_config=rtc_config)

    def connect(self, identity: str, *, room: str = "r",
                options: room.RoomOptions | None = None, **grants: Any,
                ) -> AbstractAsyncContextManager[room.Room]:
        """``Room.connect`` as ``identity`` (a fresh token with ``grants``) to ``room``."""
        import room as room_pkg

        return room_pkg.Room.connect(self.url, self.token(identity, room=room, **grants),
                                     options=self.options(options))

    # -- the server API (Twirp RoomService, through livekit-api) ------------------------

    async def api(self, call: Callable[[lkapi.LiveKitAPI], Awaitable[T]]) -> T:
        """Run ``call(livekit_api)`` against this server."""
        return await run_livekit_api(self.http_url, self.api_key, self.api_secret, call)

    async def rooms(self) -> list[str]:
        """Names of the rooms the server has."""
        resp = await self.api(lambda a: a.room.list_rooms(room_proto.ListRoomsRequest()))
        return sorted(r.name for r in resp.rooms)

    async def participants(self, room_name: str) -> list[str]:
        """Identities in ``room_name`` (hidden ones included), sorted; [] if no such room."""
        try:
            resp = await self.api(lambda a: a.room.list_participants(
                room_proto.ListParticipantsRequest(room=room_name)))
        except lkapi.TwirpError as exc:
            if exc.code == "not_found":
                return []
            raise
        return sorted(p.identity for p in resp.participants)

    async def update_room_metadata(self, room_name: str, metadata: str) -> None:
        await self.api(lambda a: a.room.update_room_metadata(
            room_proto.UpdateRoomMetadataRequest(room=room_name, metadata=metadata)))

    async def remove_participant(self, room_name: str, identity: str) -> None:
        await self.api(lambda a: a.room.remove_participant(
            room_proto.RoomParticipantIdentity(room=room_name, identity=identity)))

    async def send_data(self, room_name: str, data: bytes, *, topic: str | None = None,
                        destination_identities: Sequence[str] = (),
                        reliable: bool = True) -> None:
        kind = models.DataPacket.Kind.RELIABLE if reliable else models.DataPacket.Kind.LOSSY
        request = room_proto.SendDataRequest(
            room=room_name, data=data, kind=kind,
            destination_identities=list(destination_identities))
        if topic is not None:
            request.topic = topic
        await self.api(lambda a: a.room.send_data(request))

    def freeze(self) -> None:
        """Stop the real server's process in its tracks (SIGSTOP): its sockets stay open
        and it answers nothing, as if the network between it and everyone went silent."""
        assert self.livekit is not None and self.livekit.proc is not None
        self.livekit.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.livekit is not None and self.livekit.proc is not None
        self.livekit.proc.send_signal(signal.SIGCONT)

    def cli_join_args(self) -> list[str]:
        """What ``python -m room join`` needs besides URL and token here (see `options`)."""
        args: list[str] = []
        for address in self._host_addresses or ():
            args += ["--host-address", address]
        return args

    def log_tail(self) -> str:
        """The real server's recent log lines ("" for the dev server)."""
        return self.livekit.log_tail() if self.livekit is not None else ""
