"""`DevServer`: a LiveKit-compatible server for tests and local development.

It listens on one TCP port for ``/rtc`` (signalling WebSocket), ``/rtc/validate`` (why a
join would fail) and answers 404 on ``/rtc/v1`` so official SDKs fall back to ``/rtc``;
``/twirp/livekit.RoomService/...`` is LiveKit's server API (`room.devserver.service`).
Its lifetime is an ``async with``: a task group owns the listener and every connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import TracebackType

import anyio
from anyio.abc import Listener, SocketStream, TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc
from livekit.protocol import room as proto_room

from room.devserver import faults
from room.devserver.auth import AuthError, Grants, mint_token, verify_token
from room.devserver.http import HttpRequest, Reject, Response, WebSocket, serve_connection
from room.devserver.rooms import DevRoom, Session
from room.devserver.service import ROOM_SERVICE_PATH, RoomService, TwirpError
from room.devserver.sfu import QUALITY_INTERVAL, SPEAKER_INTERVAL
from room.devserver.webrtc import SessionRtc
from room.transport.ice import DEVSERVER_NODE_ID, resolve_host, server_host_addresses
from room.transport.peer import RELIABLE

__all__ = ["DevServer"]

_log = logging.getLogger(__name__)

SERVER_VERSION = "1.9.0"
_PROTOCOL = 16
# A data channel message larger than this is dropped: livekit-server's SCTP read buffer.
MAX_RECEIVED_MESSAGE = 65_535
_SHUTDOWN_LEAVE = rtc.SignalResponse(leave=rtc.LeaveRequest(
    reason=models.DisconnectReason.SERVER_SHUTDOWN,
    action=rtc.LeaveRequest.Action.DISCONNECT)).SerializeToString()
# How often each session's peer connections are checked for silence (seconds).
_WATCH_INTERVAL = 0.5
Action = rtc.LeaveRequest.Action


class DevServer:
    """Run with ``async with DevServer() as server:``; ``server.url`` is where to connect.

    ``ping_interval`` and ``ping_timeout`` (seconds) are what the join response tells
    clients. As on livekit-server, a client that stops pinging is not dropped for it, and
    one whose signalling connection drops without a ``leave`` stays in the room while its
    peer connections live, so that it can resume (``reconnect=1``); one whose WebRTC does
    not connect within ``join_timeout`` seconds (livekit-server: 60) is removed, and so is
    one whose peer connections go silent (see `room.devserver.faults`).
    ``presence_interval`` (seconds): how long joins and leaves of participants that
    publish nothing may wait before the others hear of them, as on livekit-server (3 s);
    0 announces them at once. Faults for tests: `cut_signal`, `drop_udp`,
    `simulate_partition`, `send_leave`, `restart`.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, api_key: str = "devkey",
        api_secret: str = "secret", *, ping_interval: int = 5, ping_timeout: int = 15,
        presence_interval: float = 3.0, join_timeout: float = 60.0,
    ) -> None:
        if not api_key or not api_secret:
            raise ValueError("api_key and api_secret must not be empty")
        if ping_interval < 1 or ping_timeout < ping_interval:
            raise ValueError("need 1 <= ping_interval <= ping_timeout (whole seconds)")
        if not 0 <= presence_interval < float("inf"):
            raise ValueError("presence_interval must be a non-negative number of seconds")
        if not join_timeout > 0:
            raise ValueError("join_timeout must be positive")
        self.presence_interval = presence_interval
        self.join_timeout = join_timeout
        self.host = host
        self.port = port
        self.api_key = api_key
        self.api_secret = api_secret
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._keys = {api_key: api_secret}
        self._rooms: dict[str, DevRoom] = {}
        # The server API; it also decides how long rooms live (see its module).
        self._service = RoomService(self._rooms, self._keys,
                                    presence_interval=self.presence_interval)
        self._tg: TaskGroup | None = None
        self._serving: anyio.CancelScope | None = None
        self._served = anyio.Event()  # set when `_serve` has ended
        self._connections: TaskGroup | None = None
        self._listener: Listener[SocketStream] | None = None
        self._ice_hosts: tuple[str, ...] | None = None  # where sessions gather (ICE)

    def __repr__(self) -> str:
        return f"<DevServer url={self.url if self._listener else None!r}>"

    # -- lifetime ----------------------------------------------------------------------

    async def __aenter__(self) -> DevServer:
        self._listener = await anyio.create_tcp_listener(
            local_host=self.host, local_port=self.port, reuse_port=False)
        self.port = self._listener.extra(anyio.abc.SocketAttribute.local_port)
        self._ice_hosts = server_host_addresses(await resolve_host(self.host))
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._serve)
        except BaseException:
            await self._tg.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None and self._listener is not None
        await self.shutdown()
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                await self._listener.aclose()
            self._rooms.clear()

    async def shutdown(self) -> None:
        """Stop serving: tell every participant (SERVER_SHUTDOWN), close every connection.
        Leaving ``async with`` does this too; call it to stop the server from another
        task (as a fault in a test). Idempotent."""
        if self._serving is None or self._serving.cancel_called:
            return
        # Tell every participant first, writing directly: when we are cancelled from
        # outside, the connections' writer tasks are already being cancelled.
        leave = _SHUTDOWN_LEAVE
        everyone = [(r, s) for r in self._rooms.values() for s in r.sessions.values()]
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            for _, session in everyone:
                if session.ws is not None:
                    await session.ws.send(leave)
        for r, session in everyone:
            r.leave(session, models.DisconnectReason.SERVER_SHUTDOWN)
        self._serving.cancel()

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
        """Names of the live rooms: those with participants, and empty ones not timed out
        yet (made by ``CreateRoom``, or just left), as the server API lists them."""
        return [r.name for r in self._service.list_rooms(proto_room.ListRoomsRequest()).rooms]

    def participants(self, room: str) -> list[str]:
        """Identities in ``room`` (hidden ones included); empty if there is no such room."""
        listed = self._service.list_participants(proto_room.ListParticipantsRequest(room=room))
        return sorted(p.identity for p in listed.participants)

    async def update_room_metadata(self, room: str, metadata: str) -> None:
        """Set a room's metadata and tell everyone in it. Raises LookupError if no such room."""
        if not isinstance(metadata, str):
            raise TypeError("metadata must be a str")
        try:
            self._service.update_room_metadata(
                proto_room.UpdateRoomMetadataRequest(room=room, metadata=metadata))
        except TwirpError as exc:
            raise _python_error(exc, f"no room {room!r}") from None

    async def remove_participant(self, room: str, identity: str) -> None:
        """Disconnect ``identity`` (reason PARTICIPANT_REMOVED). Raises LookupError if absent."""
        try:
            self._service.remove_participant(
                proto_room.RoomParticipantIdentity(room=room, identity=identity))
        except TwirpError as exc:
            raise _python_error(exc, f"no participant {identity!r} in room {room!r}") from None

    # -- faults, for tests (machinery in `room.devserver.faults`) ------------------------

    async def simulate_partition(self, room: str, identity: str,
                                 duration: float | None = None) -> None:
        """Stop talking to ``identity`` over signalling without closing its connection,
        as if the network between it and the server went silent: nothing is sent to it,
        whatever it sends is ignored (pings included), and it is not dropped for that.
        For ``duration`` seconds, or for good if None. For testing clients' keepalive.
        Raises LookupError if absent."""
        session = self._session(self._room(room), identity)
        session.partitioned_until = (float("inf") if duration is None
                                     else time.monotonic() + max(0.0, duration))

    async def cut_signal(self, room: str, identity: str) -> None:
        """Drop ``identity``'s signalling WebSocket at once, with no ``leave`` and no close
        frame, as a network fault would. Its peer connections stay up, so it stays in the
        room and may resume; nothing happens if it has no signalling connection just now.
        Raises LookupError if absent."""
        session = self._session(self._room(room), identity)
        if session.ws is not None:
            await session.ws.abort()

    async def drop_udp(self, room: str, identity: str, duration: float) -> None:
        """Drop every UDP datagram to and from ``identity``'s peer connections for
        ``duration`` seconds (returns at once). The client's ICE consent checks go
        unanswered; after 15 s of silence the server treats its connections as failed,
        as livekit-server does (``leave`` with RESUME, signalling closed, removal 5 s
        later unless it resumes). Raises LookupError if absent."""
        if not 0 <= duration < float("inf"):
            raise ValueError("duration must be a non-negative number of seconds")
        session = self._session(self._room(room), identity)
        if session.rtc is not None:
            await session.rtc.block_udp(duration)

    async def send_leave(self, room: str, identity: str, action: rtc.LeaveRequest.Action,
                         *, reason: models.DisconnectReason | None = None) -> None:
        """Send ``identity`` a ``leave`` with ``action``, and act as livekit-server does
        when it sends one (fields by the client's protocol: see `faults.leave_request`):

        - DISCONNECT (default reason SERVER_SHUTDOWN): the participant is removed;
        - RESUME (default CONNECTION_TIMEOUT): its signalling is closed; it stays, and is
          removed 5 s later unless it resumes (what a peer connection failure does);
        - RECONNECT (default STATE_MISMATCH): it is removed, and expected to join again.

        Raises LookupError if absent."""
        r = self._room(room)
        session = self._session(r, identity)
        if action == Action.RESUME:
            faults.ask_to_resume(session, models.DisconnectReason.CONNECTION_TIMEOUT
                                 if reason is None else reason)
        elif action == Action.RECONNECT:
            faults.ask_to_reconnect(r, session, models.DisconnectReason.STATE_MISMATCH
                                    if reason is None else reason)
        elif action == Action.DISCONNECT:
            r.leave(session, models.DisconnectReason.SERVER_SHUTDOWN if reason is None
                    else reason, notify_self=True)
        else:
            raise ValueError(f"unknown leave action {action!r}")
        self._forget_if_empty(r)

    async def restart(self, *, downtime: float = 0.0) -> None:
        """Stop as a crashed server would, then serve again on the same port: every
        connection is dropped without a word (no ``leave``, no close frame, no UDP), the
        port refuses connections for ``downtime`` seconds, and the new server knows no
        room and no participant, so clients must join again (a resume is answered with a
        ``leave``, RECONNECT). Returns once the server accepts connections again."""
        if self._tg is None or self._serving is None or self._listener is None:
            raise RuntimeError("the server is not running (use `async with DevServer()`)")
        if not 0 <= downtime < float("inf"):
            raise ValueError("downtime must be a non-negative number of seconds")
        everyone = [s for r in self._rooms.values() for s in r.sessions.values()]
        for session in everyone:
            if session.rtc is not None:
                await session.rtc.block_udp(float("inf"))
            if session.ws is not None:
                await session.ws.abort()
        self._serving.cancel()
        await self._served.wait()
        await self._listener.aclose()
        self._rooms.clear()
        self._service = RoomService(self._rooms, self._keys,
                                    presence_interval=self.presence_interval)
        await anyio.sleep(downtime)
        self._listener = await anyio.create_tcp_listener(
            local_host=self.host, local_port=self.port, reuse_port=False)
        await self._tg.start(self._serve)

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
        self._service.room_emptied(room)  # it stays for its departure_timeout

    # -- HTTP --------------------------------------------------------------------------

    async def _serve(self, *, task_status: TaskStatus[None]) -> None:
        """Own the listener's loop, the presence loop and every connection, under one
        cancel scope of their own (`shutdown` cancels it; the ``async with`` block that
        started the server is outside it and goes on).

        That scope is shielded: when the server is cancelled from outside, its connections
        are not cut before anyone is told. `_guard`, outside the shield, sees the
        cancellation first and runs `shutdown` (a ``leave`` to everyone, then the scope
        is cancelled); the cancellation then goes on as usual."""
        self._served = served = anyio.Event()
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._guard)
                with anyio.CancelScope(shield=True) as self._serving:
                    async with anyio.create_task_group() as tg:
                        self._connections = tg
                        tg.start_soon(self._accept_loop)
                        tg.start_soon(self._speaker_loop)
                        if self.presence_interval:
                            tg.start_soon(self._presence_loop)
                        task_status.started()
                outer.cancel_scope.cancel()  # served to the end: the guard has no job
        finally:
            served.set()

    async def _guard(self) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.shutdown()

    async def _presence_loop(self) -> None:
        """Announce queued presence updates, every ``presence_interval`` seconds."""
        while True:
            await anyio.sleep(self.presence_interval)
            for r in list(self._rooms.values()):
                r.flush()

    async def _speaker_loop(self) -> None:
        """Announce who speaks, every `sfu.SPEAKER_INTERVAL` seconds, and connection
        quality every `sfu.QUALITY_INTERVAL` seconds."""
        rounds = 0
        while True:
            await anyio.sleep(SPEAKER_INTERVAL)
            rounds += 1
            quality = rounds * SPEAKER_INTERVAL >= QUALITY_INTERVAL
            if quality:
                rounds = 0
            for r in list(self._rooms.values()):
                r.media.measure_speakers()
                if quality:
                    r.media.report_quality()

    async def _accept_loop(self) -> None:
        assert self._listener is not None and self._connections is not None
        # anyio sets TCP_NODELAY on accepted sockets; each connection is a task in our group.
        await self._listener.serve(self._serve_one, task_group=self._connections)

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

    async def _on_request(self, request: HttpRequest) -> Reject | Response | None:
        if request.path.startswith(ROOM_SERVICE_PATH):
            return self._service.handle(request)
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
        # livekit-server answers a plain (non-upgrade) request on /rtc with an empty 404.
        return None if request.is_websocket else Reject(404, "")

    # -- signalling --------------------------------------------------------------------

    async def _on_websocket(self, request: HttpRequest, ws: WebSocket) -> None:
        grants = self._authorize(request)  # checked in _on_request already
        protocol = _int(request.query.get("protocol"))
        if request.query.get("reconnect") in ("1", "true"):  # livekit-server's booleans
            await self._resume(grants, protocol, ws)
            return
        session = Session(grants, protocol, _int(request.query.get("client_protocol")))
        session.auto_subscribe = request.query.get("auto_subscribe", "1").lower() not in (
            "0", "false")
        room = self._service.room_for_join(grants.room)
        session.rtc = SessionRtc(
            identity=grants.identity, host_addresses=self._ice_hosts,
            send=session.send, subscriber_primary=session.subscriber_primary,
            on_packet=lambda label, data: self._relay(room, session, label, data),
            on_track=lambda sink, started: room.media.on_media(session, sink, started))
        outbox = session.attach(ws)
        session.send(rtc.SignalResponse(join=self._join_response(room, session)))
        room.join(session)
        _log.info("dev server: %s joined %s", grants.identity, grants.room)
        assert self._connections is not None
        self._connections.start_soon(self._live, session, room,
                                     name=f"room.devserver session {grants.identity}")
        await self._signal(session, room, ws, outbox)

    async def _resume(self, grants: Grants, protocol: int, ws: WebSocket) -> None:
        """``reconnect=1``: attach ``ws`` to the session of that identity, as
        livekit-server resumes one (pkg/service/roommanager.go StartSession, pkg/rtc/
        room.go ResumeParticipant): by identity (the ``sid`` is not checked), answered
        with ``reconnect``, then who left since its last request, everyone's current
        info, the room, and a new offer of its subscriber connection. With no such
        session: a ``leave`` (RECONNECT, STATE_MISMATCH), and the connection closes."""
        room = self._service.room_for_resume(grants.room)
        session = room.sessions.get(grants.identity)
        if session is None or session.closed.is_set() or session.rtc is None:
            leave = faults.leave_request(protocol, Action.RECONNECT,
                                         models.DisconnectReason.STATE_MISMATCH)
            assert leave is not None
            await ws.send(rtc.SignalResponse(leave=leave).SerializeToString())
            await ws.close()
            _log.info("dev server: %s cannot resume in %s (no such session)",
                      grants.identity, grants.room)
            return
        last_request = session.last_signal_at
        outbox = session.attach(ws)
        session.last_signal_at = time.monotonic()
        session.failed_until = None  # the removal a failure scheduled is off
        session.send(rtc.SignalResponse(reconnect=rtc.ReconnectResponse(
            server_info=self._server_info(),
            last_message_seq=session.last_reliable_sequence)))
        if session.protocol > 8:
            departed = session.departed_since(last_request)
            if departed:
                session.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(
                    participants=departed)))
        session.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[
            s.info for s in room.sessions.values() if not s.hidden or s is session])))
        session.send(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=room.model)))
        session.rtc.restart_ice()
        _log.info("dev server: %s resumed in %s", grants.identity, grants.room)
        await self._signal(session, room, ws, outbox)

    async def _live(self, session: Session, room: DevRoom) -> None:
        """The session's life, apart from any one signalling connection: its peer
        connections and watchdogs, until it is closed; then it leaves the room."""
        assert session.rtc is not None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.rtc.run)
                tg.start_soon(self._join_watchdog, session, room)
                tg.start_soon(self._transport_watchdog, session, room)
                await session.closed.wait()
                tg.cancel_scope.cancel()
        finally:
            room.leave(session, session.close_reason or models.DisconnectReason.SIGNAL_CLOSE)
            self._forget_if_empty(room)
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await session.rtc.close()
            _log.info("dev server: %s left %s", session.identity, room.name)

    async def _signal(self, session: Session, room: DevRoom, ws: WebSocket,
                      outbox: MemoryObjectReceiveStream[rtc.SignalResponse | None]) -> None:
        """Serve one signalling connection of ``session`` until either ends. If it drops
        while it is still the session's (no ``leave``, not replaced by a resume), the
        session stays in the room as long as its peer connections have connected, as on
        livekit-server (HandleSignalSourceClose); else it is closed (SIGNAL_CLOSE)."""
        try:
            async with anyio.create_task_group() as tg:
                async def read() -> None:
                    await self._reader(session, room, ws)
                    tg.cancel_scope.cancel()

                tg.start_soon(read)
                # The writer ends once the session is closed, or the connection replaced
                # or ended, and what was queued is written (a final LeaveRequest too);
                # then it closes the socket.
                await self._writer(ws, outbox)
                tg.cancel_scope.cancel()
        finally:
            outbox.close()
            if session.detach(ws) and not session.closed.is_set():
                assert session.rtc is not None
                if session.rtc.connected.is_set():
                    _log.info("dev server: %s lost its signalling connection; it stays "
                              "while its peer connections live", session.identity)
                else:
                    session.close(models.DisconnectReason.SIGNAL_CLOSE)
            with anyio.CancelScope(shield=True):
                await ws.abort()

    def _relay(self, room: DevRoom, sender: Session, label: str, data: bytes) -> None:
        """Stamp a packet from ``sender`` and deliver it (or drop it), by livekit-server's
        rules (pkg/rtc/participant.go, room.go): the sender's identity is stamped over
        whatever the packet claims (blank for a hidden sender); a reliable packet whose
        ``sequence`` is not above the last one from that sender is a duplicate; only
        agents' transcriptions are forwarded; a message over 65,535 bytes is dropped; a
        user packet's destinations are the packet's own if it names any, else its
        ``user`` part's (identities or sids).

        Runs on the aiortc loop (see `room.devserver.webrtc`): it only reads the room's
        membership, taking a snapshot of it, and writes nothing the server's loop owns."""
        if sender.closed.is_set():
            return
        if len(data) > MAX_RECEIVED_MESSAGE:
            # livekit-server cannot read a message larger than its SCTP read buffer: it
            # drops it (the channel goes on).
            _log.warning("dev server: %d-byte message from %s dropped (limit %d)",
                         len(data), sender.identity, MAX_RECEIVED_MESSAGE)
            return
        if not sender.grants.can_publish_data:
            _log.info("dev server: %s may not publish data; packet dropped", sender.identity)
            return
        try:
            packet = models.DataPacket.FromString(data)
        except DecodeError:
            _log.warning("dev server: malformed data packet from %s dropped", sender.identity)
            return
        reliable = label == RELIABLE
        packet.kind = (models.DataPacket.Kind.RELIABLE if reliable
                       else models.DataPacket.Kind.LOSSY)
        if reliable and packet.sequence > 0:
            if packet.sequence <= sender.last_reliable_sequence:
                _log.info("dev server: duplicate reliable packet %d from %s dropped",
                          packet.sequence, sender.identity)
                return
            sender.last_reliable_sequence = packet.sequence
        which = packet.WhichOneof("value")
        if which == "transcription" and not sender.grants.agent:
            _log.info("dev server: transcription from %s (not an agent) dropped",
                      sender.identity)
            return
        if which in ("metrics", None):
            return
        identity = "" if sender.hidden else sender.identity
        packet.participant_sid = sender.info.sid
        keep_claimed = sender.grants.agent and packet.participant_identity not in (
            "", sender.identity) and (
            which == "chat_message" or (which == "stream_header"
                                        and packet.stream_header.HasField("text_header")))
        if not keep_claimed:  # agents may speak for someone else in chat and text streams
            packet.participant_identity = identity
        sids: set[str] = set()
        if which == "user":
            user = packet.user
            if room.repeated_nonce(user.nonce):
                _log.info("dev server: repeated user packet from %s dropped", sender.identity)
                return
            user.participant_identity = identity
            user.participant_sid = "" if sender.hidden else sender.info.sid
            if packet.destination_identities:
                user.destination_identities[:] = packet.destination_identities
            else:
                packet.destination_identities[:] = user.destination_identities
            sids = set(user.destination_sids)
        identities = set(packet.destination_identities)
        out = packet.SerializeToString()
        for target in list(room.sessions.values()):
            if target is sender:
                continue
            if (identities or sids) and not (target.identity in identities
                                             or target.info.sid in sids):
                continue
            if target.rtc is not None:
                target.rtc.forward(label, out)

    @staticmethod
    def _server_info() -> models.ServerInfo:
        return models.ServerInfo(
            edition=models.ServerInfo.Edition.Standard, version=SERVER_VERSION,
            protocol=_PROTOCOL, region="local", node_id=DEVSERVER_NODE_ID)

    def _join_response(self, room: DevRoom, session: Session) -> rtc.JoinResponse:
        return rtc.JoinResponse(
            room=room.model,
            participant=session.info,
            other_participants=room.visible_infos(viewer=session),
            server_version=SERVER_VERSION,
            server_info=self._server_info(),
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            subscriber_primary=session.subscriber_primary,
        )

    async def _reader(self, session: Session, room: DevRoom, ws: WebSocket) -> None:
        while True:
            data = await ws.receive()
            if data is None:
                return
            if session.partitioned:
                continue
            session.last_signal_at = time.monotonic()
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
        elif which == "add_track":
            room.media.add_track(session, req.add_track)
        elif which == "mute":
            room.media.mute(session, req.mute)
        elif which == "subscription":
            room.media.update_subscription(session, req.subscription)
        elif which == "sync_state":
            # livekit-server (room.go onSyncState) checks the tracks the client says it
            # publishes: one it does not know means a full reconnect.
            # ``datachannel_receive_states`` are not used on a resume (only when a session
            # migrates between nodes); nothing is re-sent.
            state = req.sync_state
            if state.publish_data_tracks or not room.media.known_tracks(
                    session, [t.track.sid for t in state.publish_tracks]):
                _log.info("dev server: %s resumed with tracks we do not know; asking it "
                          "to reconnect", session.identity)
                faults.ask_to_reconnect(room, session, models.DisconnectReason.STATE_MISMATCH)
                self._forget_if_empty(room)
        elif which == "simulate":
            self._simulate(session, room, req.simulate)
        else:
            _log.debug("dev server: %s sent %s; not supported yet", session.identity, which)

    def _simulate(self, session: Session, room: DevRoom, scenario: rtc.SimulateScenario
                  ) -> None:
        """The client asks for a fault (livekit-server's SimulateScenario, which official
        SDKs use in their tests); the two that end a session are honoured as
        livekit-server honours them, the others ignored."""
        which = scenario.WhichOneof("scenario")
        if which == "server_leave":  # a leave (DISCONNECT), then removal
            room.leave(session, models.DisconnectReason.SERVER_SHUTDOWN, notify_self=True)
        elif which == "node_failure":  # removal without a word
            room.leave(session, models.DisconnectReason.SERVER_SHUTDOWN)
        else:
            _log.debug("dev server: %s asked to simulate %s; ignored", session.identity, which)
            return
        self._forget_if_empty(room)

    async def _writer(self, ws: WebSocket,
                      outbox: MemoryObjectReceiveStream[rtc.SignalResponse | None]) -> None:
        async for msg in outbox:
            if msg is None or not await ws.send(msg.SerializeToString()):
                break
        await ws.close()  # which also ends the reader

    async def _transport_watchdog(self, session: Session, room: DevRoom) -> None:
        """Fail a session's peer connections as livekit-server does (see
        `room.devserver.faults`): after `faults.SILENCE_FAILED` seconds without a
        datagram from the client on a connection that had connected, or without an
        answer to the subscriber offer a resume sent, the client is asked to resume and
        removed `faults.CLEANUP_AFTER_FAILURE` seconds later if it does not."""
        assert session.rtc is not None
        while True:
            await anyio.sleep(_WATCH_INTERVAL)
            now = time.monotonic()
            if session.failed_until is not None:
                if now >= session.failed_until:
                    _log.info("dev server: %s did not come back; removing it",
                              session.identity)
                    room.leave(session, models.DisconnectReason.CONNECTION_TIMEOUT,
                               notify_self=True)
                    self._forget_if_empty(room)
                    return
                continue
            gates = await session.rtc.watch_udp()
            silent = any(now - gate.last_received >= faults.SILENCE_FAILED for gate in gates)
            pending = session.rtc.reoffer_pending_since
            if silent or (pending is not None and now - pending >= faults.SILENCE_FAILED):
                _log.info("dev server: %s's peer connection failed (%s); asking it to "
                          "resume", session.identity,
                          "silent" if silent else "re-offer not answered")
                session.rtc.reoffer_pending_since = None
                faults.ask_to_resume(session)

    async def _join_watchdog(self, session: Session, room: DevRoom) -> None:
        """Remove a participant whose WebRTC never connects within ``join_timeout``
        (reason JOIN_FAILURE), as livekit-server does after a minute. A client that merely
        stops pinging is not dropped: livekit-server does not drop it either."""
        assert session.rtc is not None
        with anyio.move_on_after(self.join_timeout):
            await session.rtc.connected.wait()
            return
        _log.info("dev server: %s never connected WebRTC in %g s; removing it",
                  session.identity, self.join_timeout)
        room.leave(session, models.DisconnectReason.JOIN_FAILURE, notify_self=True)


def _int(text: str | None) -> int:
    try:
        return max(0, int(text or "0"))
    except ValueError:
        return 0


def _python_error(exc: TwirpError, not_found: str) -> Exception:
    """A server API refusal as the exception `DevServer`'s own controls raise."""
    return LookupError(not_found) if exc.code == "not_found" else ValueError(exc.msg)
