"""`DevServer`: a LiveKit-compatible server for tests and local development.

It listens on one TCP port for ``/rtc`` (signalling WebSocket), ``/rtc/validate`` (why a
join would fail) and answers 404 on ``/rtc/v1`` so official SDKs fall back to ``/rtc``.
Its lifetime is an ``async with``: a task group owns the listener and every connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import TracebackType

import anyio
from anyio.abc import Listener, SocketStream, TaskGroup, TaskStatus
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from room.devserver.auth import AuthError, Grants, mint_token, verify_token
from room.devserver.http import HttpRequest, Reject, WebSocket, serve_connection
from room.devserver.rooms import DevRoom, Session
from room.devserver.webrtc import SessionRtc
from room.transport.ice import server_host_addresses

__all__ = ["DevServer"]

_log = logging.getLogger(__name__)

SERVER_VERSION = "1.9.0"
_PROTOCOL = 16
# Data packets larger than this (serialized) are dropped: LiveKit's data channel limit.
MAX_DATA_PACKET = 64_000


class DevServer:
    """Run with ``async with DevServer() as server:``; ``server.url`` is where to connect.

    ``ping_interval`` and ``ping_timeout`` (seconds) are what the join response tells
    clients; a participant silent for ``ping_timeout`` is dropped.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, api_key: str = "devkey",
        api_secret: str = "secret", *, ping_interval: int = 5, ping_timeout: int = 15,
    ) -> None:
        if not api_key or not api_secret:
            raise ValueError("api_key and api_secret must not be empty")
        if ping_interval < 1 or ping_timeout < ping_interval:
            raise ValueError("need 1 <= ping_interval <= ping_timeout (whole seconds)")
        self.host = host
        self.port = port
        self.api_key = api_key
        self.api_secret = api_secret
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._keys = {api_key: api_secret}
        self._rooms: dict[str, DevRoom] = {}
        self._tg: TaskGroup | None = None
        self._listener: Listener[SocketStream] | None = None

    def __repr__(self) -> str:
        return f"<DevServer url={self.url if self._listener else None!r}>"

    # -- lifetime ----------------------------------------------------------------------

    async def __aenter__(self) -> DevServer:
        self._listener = await anyio.create_tcp_listener(
            local_host=self.host, local_port=self.port, reuse_port=False)
        self.port = self._listener.extra(anyio.abc.SocketAttribute.local_port)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._accept_loop)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None and self._listener is not None
        # Tell every participant first, writing directly: when we are cancelled from
        # outside, the connections' writer tasks are already being cancelled.
        leave = rtc.SignalResponse(leave=rtc.LeaveRequest(
            reason=models.DisconnectReason.SERVER_SHUTDOWN,
            action=rtc.LeaveRequest.Action.DISCONNECT)).SerializeToString()
        everyone = [(r, s) for r in self._rooms.values() for s in r.sessions.values()]
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            for _, session in everyone:
                if session.ws is not None:
                    await session.ws.send(leave)
        for r, session in everyone:
            r.leave(session, models.DisconnectReason.SERVER_SHUTDOWN)
        self._tg.cancel_scope.cancel()
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                await self._listener.aclose()
            self._rooms.clear()

    async def serve_forever(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                            ) -> None:
        """Run until cancelled (for ``python -m room serve``)."""
        async with self:
            task_status.started()
            await anyio.sleep_forever()

    @property
    def url(self) -> str:
        """The ``ws://`` URL clients connect to."""
        if self._listener is None:
            raise RuntimeError("the server is not running (use `async with DevServer()`)")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    # -- server-side controls ----------------------------------------------------------

    def token(
        self, identity: str, *, room: str, name: str | None = None,
        metadata: str | None = None, attributes: Mapping[str, str] | None = None,
        can_publish: bool = True, can_subscribe: bool = True, can_publish_data: bool = True,
        can_update_own_metadata: bool = True, hidden: bool = False, ttl: float = 3600.0,
    ) -> str:
        """An access token this server accepts."""
        return mint_token(
            self.api_key, self.api_secret, identity, room=room, name=name, metadata=metadata,
            attributes=attributes, can_publish=can_publish, can_subscribe=can_subscribe,
            can_publish_data=can_publish_data, can_update_own_metadata=can_update_own_metadata,
            hidden=hidden, ttl=ttl)

    def rooms(self) -> list[str]:
        """Names of the live rooms (those with participants)."""
        return sorted(self._rooms)

    def participants(self, room: str) -> list[str]:
        """Identities in ``room`` (hidden ones included); empty if there is no such room."""
        r = self._rooms.get(room)
        return sorted(r.sessions) if r else []

    async def update_room_metadata(self, room: str, metadata: str) -> None:
        """Set a room's metadata and tell everyone in it. Raises LookupError if no such room."""
        if not isinstance(metadata, str):
            raise TypeError("metadata must be a str")
        self._room(room).set_metadata(metadata)

    async def remove_participant(self, room: str, identity: str) -> None:
        """Disconnect ``identity`` (reason PARTICIPANT_REMOVED). Raises LookupError if absent."""
        r = self._room(room)
        session = self._session(r, identity)
        r.leave(session, models.DisconnectReason.PARTICIPANT_REMOVED, notify_self=True)
        self._forget_if_empty(r)

    async def simulate_partition(self, room: str, identity: str) -> None:
        """Stop talking to ``identity`` without closing its connection, as if the network
        between it and the server went silent: nothing is sent to it, whatever it sends is
        ignored, and it is not dropped for silence. For testing clients' keepalive.
        Raises LookupError if absent."""
        self._session(self._room(room), identity).partitioned = True

    def _room(self, name: str) -> DevRoom:
        r = self._rooms.get(name)
        if r is None:
            raise LookupError(f"no room {name!r}")
        return r

    @staticmethod
    def _session(room: DevRoom, identity: str) -> Session:
        session = room.sessions.get(identity)
        if session is None:
            raise LookupError(f"no participant {identity!r} in room {room.name!r}")
        return session

    def _forget_if_empty(self, room: DevRoom) -> None:
        if not room.sessions and self._rooms.get(room.name) is room:
            del self._rooms[room.name]

    # -- HTTP --------------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        assert self._listener is not None and self._tg is not None
        # anyio sets TCP_NODELAY on accepted sockets; each connection is a task in our group.
        await self._listener.serve(self._serve_one, task_group=self._tg)

    async def _serve_one(self, stream: SocketStream) -> None:
        await serve_connection(stream, self._on_request, self._on_websocket)

    def _authorize(self, request: HttpRequest) -> Grants:
        auth = request.headers.get("authorization", "")
        if auth:
            if not auth.startswith("Bearer "):
                raise AuthError(401, "invalid authorization header. Must start with Bearer ")
            token = auth[len("Bearer "):].strip()
        else:
            token = request.query.get("access_token", "")
        return verify_token(token, self._keys)

    async def _on_request(self, request: HttpRequest) -> Reject | None:
        path = request.path.rstrip("/")
        if path == "" and not request.is_websocket:
            return Reject(200, "OK")
        if path == "/rtc/v1":
            return Reject(404, "single peer connection mode is not supported; use /rtc")
        if path not in ("/rtc", "/rtc/validate"):
            return Reject(404, "not found")
        try:
            self._authorize(request)
        except AuthError as exc:
            return Reject(exc.status, exc.text)
        if path == "/rtc/validate":
            return Reject(200, "success")
        return None if request.is_websocket else Reject(400, "WebSocket upgrade required")

    # -- signalling --------------------------------------------------------------------

    async def _on_websocket(self, request: HttpRequest, ws: WebSocket) -> None:
        grants = self._authorize(request)  # checked in _on_request already
        session = Session(grants, _int(request.query.get("protocol")),
                          _int(request.query.get("client_protocol")))
        session.ws = ws
        room = self._rooms.get(grants.room)
        if room is None:
            room = self._rooms[grants.room] = DevRoom(grants.room)
        session.rtc = SessionRtc(
            identity=grants.identity, host_addresses=server_host_addresses(self.host),
            send=session.send,
            on_packet=lambda label, data: self._relay(room, session, label, data))
        session.send(rtc.SignalResponse(join=self._join_response(room, session)))
        room.join(session)
        _log.info("dev server: %s joined %s", grants.identity, grants.room)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._reader, session, room, ws)
                tg.start_soon(self._watchdog, session)
                tg.start_soon(session.rtc.run)
                # The writer ends once the session is closed and its outbox drained (so a
                # final LeaveRequest is delivered), then closes the socket.
                await self._writer(session, ws)
                tg.cancel_scope.cancel()
        finally:
            room.leave(session, session.close_reason or models.DisconnectReason.SIGNAL_CLOSE)
            self._forget_if_empty(room)
            session.inbox.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await session.rtc.close()
            _log.info("dev server: %s left %s", grants.identity, grants.room)

    def _relay(self, room: DevRoom, sender: Session, label: str, data: bytes) -> None:
        """Stamp a packet from ``sender`` with its identity and deliver it (or drop it).

        Runs on the aiortc loop (see `room.devserver.webrtc`): it only reads the room's
        membership, taking a snapshot of it, and writes nothing the server's loop owns."""
        if sender.closed.is_set():
            return
        if not sender.grants.can_publish_data:
            _log.warning("dev server: %s may not publish data; packet dropped", sender.identity)
            return
        if len(data) > MAX_DATA_PACKET:
            _log.warning("dev server: %d-byte packet from %s dropped (limit %d)",
                         len(data), sender.identity, MAX_DATA_PACKET)
            return
        try:
            packet = models.DataPacket.FromString(data)
        except DecodeError:
            _log.warning("dev server: malformed data packet from %s dropped", sender.identity)
            return
        # The sender is who the server says it is, whatever the packet claims.
        packet.participant_identity = sender.identity
        packet.participant_sid = sender.info.sid
        destinations = set(packet.destination_identities)
        if packet.HasField("user"):
            packet.user.participant_identity = sender.identity
            packet.user.participant_sid = sender.info.sid
            destinations.update(packet.user.destination_identities)
        out = packet.SerializeToString()
        for target in list(room.sessions.values()):
            if target is sender or (destinations and target.identity not in destinations):
                continue
            if target.rtc is not None:
                target.rtc.forward(label, out)

    def _join_response(self, room: DevRoom, session: Session) -> rtc.JoinResponse:
        return rtc.JoinResponse(
            room=room.model,
            participant=session.info,
            other_participants=room.visible_infos(viewer=session),
            server_version=SERVER_VERSION,
            server_info=models.ServerInfo(
                edition=models.ServerInfo.Edition.Standard, version=SERVER_VERSION,
                protocol=_PROTOCOL, region="local", node_id="room-devserver"),
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            subscriber_primary=session.grants.can_subscribe,
        )

    async def _reader(self, session: Session, room: DevRoom, ws: WebSocket) -> None:
        while True:
            data = await ws.receive()
            if data is None:
                session.close(models.DisconnectReason.SIGNAL_CLOSE)
                return
            if session.partitioned:
                continue
            session.last_seen = anyio.current_time()
            if isinstance(data, str):
                _log.warning("dev server: %s sent a text frame; ignored", session.identity)
                continue
            try:
                req = rtc.SignalRequest.FromString(data)
            except DecodeError:
                _log.warning("dev server: %s sent a malformed frame; ignored", session.identity)
                continue
            self._handle(session, room, req)

    def _handle(self, session: Session, room: DevRoom, req: rtc.SignalRequest) -> None:
        if session.closed.is_set():
            return  # removed or replaced: whatever it still says changes nothing
        which = req.WhichOneof("message")
        if which == "ping_req":
            session.send(rtc.SignalResponse(pong_resp=rtc.Pong(
                last_ping_timestamp=req.ping_req.timestamp, timestamp=int(time.time() * 1000))))
        elif which == "ping":
            session.send(rtc.SignalResponse(pong=int(time.time() * 1000)))
        elif which == "leave":
            room.leave(session, models.DisconnectReason.CLIENT_INITIATED)
        elif which in ("offer", "answer", "trickle"):
            if session.rtc is not None:
                session.rtc.post(req)
        elif which == "update_metadata":
            upd = req.update_metadata
            reason, message = room.update_participant(
                session, name=upd.name, metadata=upd.metadata, attributes=upd.attributes)
            session.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
                request_id=upd.request_id, reason=reason, message=message,
                update_metadata=upd)))
        else:
            _log.debug("dev server: %s sent %s; not supported yet", session.identity, which)

    async def _writer(self, session: Session, ws: WebSocket) -> None:
        async for msg in session.inbox:
            if msg is None or not await ws.send(msg.SerializeToString()):
                break
        session.close(session.close_reason or models.DisconnectReason.SIGNAL_CLOSE)
        await ws.close()  # which also ends the reader

    async def _watchdog(self, session: Session) -> None:
        while not session.closed.is_set():
            silent = anyio.current_time() - session.last_seen
            if silent > self.ping_timeout and not session.partitioned:
                _log.info("dev server: %s silent for %.1f s; dropping it",
                          session.identity, silent)
                session.close(models.DisconnectReason.CONNECTION_TIMEOUT)
                return
            await anyio.sleep(min(1.0, self.ping_timeout - silent + 0.05))


def _int(text: str | None) -> int:
    try:
        return max(0, int(text or "0"))
    except ValueError:
        return 0
