"""`Room`: one connection to a LiveKit room, owned by a task group.

Data flows socket → `SignalConnection.receive` (reader task) → `Room._dispatch` →
`RoomState.handle` (pure: updates participants, returns events) → `EventHub.publish`
(never blocks) → each ``events()`` subscriber's memory-object stream. The keepalive task
pings on the server's interval and ends the room when pongs stop. Every task lives in the
room's task group, which `Room.connect`'s context manager opens and closes.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, suppress
from types import MappingProxyType, TracebackType
from urllib.parse import urlsplit

import anyio
import jwt
from aiortc import RTCIceServer
from anyio.abc import TaskGroup, TaskStatus
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from room.errors import (
    ConnectError,
    ConnectionClosedError,
    PublishDataError,
    RequestRefusedError,
    RequestTimeoutError,
)
from room.events._types import (
    Connected,
    ConnectionStateChanged,
    Disconnected,
    ParticipantDisconnected,
    RoomEvent,
)
from room.events.hub import EventHub, Subscription
from room.options import IceTransportType, RoomOptions, RtcConfiguration
from room.participant import LocalParticipant, RemoteParticipant
from room.rpc import RpcManager
from room.state import RoomState
from room.streams import ByteStreamReader, StreamManager, TextStreamReader
from room.transport.ice import client_host_addresses
from room.transport.keepalive import Keepalive
from room.transport.rtc import LOSSY, RELIABLE, RtcTransport
from room.transport.signal import SignalClosed, SignalConnection, connect_signal
from room.transport.url import signal_params
from room.types import ConnectionState, DataPacketKind, DisconnectReason

__all__ = ["Room"]

_log = logging.getLogger(__name__)

E = type[RoomEvent]
# How long leaving may take to tell the server and close the socket before giving up.
_LEAVE_TIMEOUT = 2.0
# The largest data packet (serialized) we send: the data channel's default message size.
MAX_DATA_PACKET = 64_000


class _PendingRequest:
    """A request waiting for the server: done by a matching answer or by a state change."""

    def __init__(self, request_id: int, satisfied: Callable[[], bool]) -> None:
        self.request_id = request_id
        self.satisfied = satisfied
        self.done = anyio.Event()
        self.error: Exception | None = None

    def finish(self, error: Exception | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class Room:
    """A connected LiveKit room. Get one with ``async with Room.connect(url, token) as room``."""

    def __init__(self, options: RoomOptions) -> None:
        self._options = options
        self._hub = EventHub(options.event_buffer_size)
        self._connection_state = ConnectionState.DISCONNECTED
        self._state: RoomState | None = None
        self._signal: SignalConnection | None = None
        self._keepalive: Keepalive | None = None
        self._tg: TaskGroup | None = None
        self._services_scope = anyio.CancelScope()
        self._services_done = anyio.Event()
        self._closing = False
        self._tell_server = False
        self._disconnect_reason: DisconnectReason | None = None
        self._request_ids = itertools.count(1)
        self._pending: dict[int, _PendingRequest] = {}
        self._sid_known = anyio.Event()
        self._token = ""
        self._rtc: RtcTransport | None = None
        self._streams = StreamManager(send_packet=self._send_reliable,
                                      local_identity=lambda: self.local_participant.identity)
        self._rpc = RpcManager(send_packet=self._send_reliable,
                               local_identity=lambda: self.local_participant.identity)

    # -- connecting --------------------------------------------------------------------

    @classmethod
    def connect(
        cls, url: str, token: str, *, options: RoomOptions | None = None
    ) -> _RoomContext:
        """Join the room at ``url`` with ``token``; an async context manager yielding the Room.

        Entering returns once the room is joined (participants known), or raises
        `ConnectError` saying why not, within ``options.connect_timeout`` seconds. Leaving
        tells the server (LeaveRequest), ends every task the room started and every
        ``events()`` iterator. If the block is cancelled, teardown still runs (shielded,
        bounded by a few seconds) and the cancellation then propagates.
        """
        options = options if options is not None else RoomOptions()
        if not isinstance(options, RoomOptions):
            raise TypeError("options must be a RoomOptions")
        return _RoomContext(cls(options), url, token)

    async def _run_services(self, url: str, token: str, *,
                            task_status: TaskStatus[None]) -> None:
        """Connect, then run the reader and keepalive until the room ends.

        This task owns the signal connection: whether the room ends by itself (server
        leave, lost connection) or by `disconnect`, the socket and httpx-ws's own task are
        gone when this returns. One cancel scope bounds the join (``connect_timeout``),
        is lifted while connected, and bounds the closing handshake at the end.
        """
        self._connection_state = ConnectionState.CONNECTING
        self._token = token
        timeout = self._options.connect_timeout
        joined = False
        try:
            async with AsyncExitStack() as stack:
                bound = stack.enter_context(
                    anyio.CancelScope(deadline=anyio.current_time() + timeout))
                params = signal_params(auto_subscribe=self._options.auto_subscribe)
                signal, join = await connect_signal(stack, url, token, params)
                self._joined(signal, join)
                self._rtc = self._make_transport(url, join)
                try:
                    with self._services_scope:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._read_loop)
                            tg.start_soon(self._keepalive_loop)
                            tg.start_soon(self._negotiate)
                            # Usable means: data can be published (and received).
                            await self._rtc.start()
                            await self._rtc.wait_ready()
                            bound.deadline = math.inf
                            joined = True
                            self._set_state(ConnectionState.CONNECTED)
                            self._hub.publish(Connected())
                            task_status.started()
                finally:
                    # Also reached when cancelled from outside: leave politely anyway.
                    bound.deadline = anyio.current_time() + _LEAVE_TIMEOUT
                    with anyio.CancelScope(shield=True):
                        await self._say_goodbye()
                        with anyio.move_on_after(_LEAVE_TIMEOUT):
                            await self._rtc.close()
            if not joined:
                raise ConnectError(f"timed out after {timeout:g} s connecting to {url}"
                                   + ("" if self._state is None else
                                      " (joined, but WebRTC did not connect)"))
        finally:
            if not joined:
                self._connection_state = ConnectionState.DISCONNECTED
            self._services_done.set()

    def _joined(self, signal: SignalConnection, join: rtc.JoinResponse) -> None:
        self._signal = signal
        local = LocalParticipant(join.participant, engine=self)
        local._agent_grant = _video_grant(self._token).get("agent") is True
        self._state = RoomState(join, local)
        if self._state.sid:
            self._sid_known.set()
        interval = float(join.ping_interval) or 5.0
        timeout = max(float(join.ping_timeout) or 15.0, interval)
        self._keepalive = Keepalive(interval=interval, timeout=timeout,
                                    now=anyio.current_time())
        _log.info("joined room %r as %r", self._state.name, local.identity)

    def _make_transport(self, url: str, join: rtc.JoinResponse) -> RtcTransport:
        config = self._options.rtc_config or RtcConfiguration()
        servers = [RTCIceServer(urls=list(s.urls), username=s.username or None,
                                credential=s.credential or None) for s in join.ice_servers]
        servers += [RTCIceServer(urls=list(s.urls), username=s.username or None,
                                 credential=s.credential or None) for s in config.ice_servers]
        hosts = client_host_addresses(urlsplit(url).hostname or "", join.server_info.node_id,
                                      config.host_addresses)
        return RtcTransport(
            send_signal=self._send, on_packet=self._on_packet, on_failure=self._on_rtc_failure,
            ice_servers=servers, host_addresses=hosts, subscriber_primary=join.subscriber_primary,
            relay_only=config.ice_transport_type is IceTransportType.RELAY)

    # -- public surface ----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._require_state().name

    @property
    def metadata(self) -> str:
        return self._require_state().metadata

    async def sid(self) -> str:
        """The room's server-assigned sid (waits for it if the server has not sent it yet)."""
        await self._sid_known.wait()
        return self._require_state().sid

    @property
    def connection_state(self) -> ConnectionState:
        return self._connection_state

    @property
    def local_participant(self) -> LocalParticipant:
        return self._require_state().local

    @property
    def remote_participants(self) -> Mapping[str, RemoteParticipant]:
        """Everyone else in the room, by identity (a live, read-only view)."""
        return MappingProxyType(self._require_state().remote)

    @property
    def disconnect_reason(self) -> DisconnectReason | None:
        return self._disconnect_reason

    def isconnected(self) -> bool:
        return self._connection_state is ConnectionState.CONNECTED

    def events(self, *types: type[RoomEvent]) -> Subscription[RoomEvent]:
        """Subscribe to the events published from now on (all, or instances of ``types``).

        Each call is an independent subscription with its own buffer of
        ``RoomOptions.event_buffer_size`` events; see `EventHub` for the overflow policy.
        The iterator ends after `Disconnected`.
        """
        return self._hub.subscribe(*types)

    async def disconnect(self) -> None:
        """Leave the room; idempotent.

        Gives running RPC invocations ``RoomOptions.rpc_drain_timeout`` seconds to finish
        (then cancels them), tells the server (LeaveRequest), ends the room's tasks and
        every ``events()`` iterator, and returns once the socket is closed. Shielded from
        cancellation and bounded in time (a few seconds plus the drain period at worst).
        """
        with anyio.CancelScope(shield=True):
            # RPC invocations may finish (and answer) while we are still connected.
            await self._rpc.drain(0.0 if self._closing else self._options.rpc_drain_timeout)
            self._finish(DisconnectReason.CLIENT_INITIATED, "disconnect() called",
                         tell_server=True)
            if self._tg is not None and self._state is not None:
                await self._services_done.wait()

    async def _say_goodbye(self) -> None:
        """Send the LeaveRequest unless the server ended the room (bounded, never raises)."""
        if not self._closing:  # cancelled from outside: that is the user leaving too
            self._finish(DisconnectReason.CLIENT_INITIATED, "cancelled", tell_server=True)
        if not self._tell_server or self._signal is None:
            return
        leave = rtc.SignalRequest(leave=rtc.LeaveRequest(
            can_reconnect=False,
            reason=DisconnectReason.CLIENT_INITIATED.name,
            action=rtc.LeaveRequest.Action.DISCONNECT,
        ))
        with anyio.move_on_after(_LEAVE_TIMEOUT), suppress(SignalClosed):
            await self._signal.send(leave)

    def __repr__(self) -> str:
        name = self._state.name if self._state else "?"
        return f"<Room name={name!r} state={self._connection_state.value}>"

    # -- local participant engine ------------------------------------------------------

    async def update_local_participant(
        self, *, name: str | None, metadata: str | None, attributes: Mapping[str, str] | None
    ) -> None:
        state = self._require_connected()
        local = state.local
        want_name = local.name if name is None else name
        want_meta = local.metadata if metadata is None else metadata
        want_attrs = dict(attributes or {})
        request_id = next(self._request_ids) & 0xFFFFFFFF

        def satisfied() -> bool:
            current = local._attributes
            return (local.name == want_name and local.metadata == want_meta
                    and all(current.get(k, "") == v for k, v in want_attrs.items()))

        req = rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(
            name=want_name, metadata=want_meta, attributes=want_attrs, request_id=request_id))
        pending = _PendingRequest(request_id, satisfied)
        self._pending[request_id] = pending
        try:
            await self._send(req)
            if satisfied():
                return
            with anyio.move_on_after(self._options.request_timeout):
                await pending.done.wait()
            if not pending.done.is_set():
                raise RequestTimeoutError(
                    f"the server did not answer within {self._options.request_timeout} s")
            if pending.error is not None:
                raise pending.error
        finally:
            self._pending.pop(request_id, None)

    async def _send_reliable(self, packet: models.DataPacket) -> None:
        """RPC and data-stream packets: reliable, and under the same permission as data."""
        if not self.local_participant.can_publish_data:
            raise PublishDataError("the token does not allow publishing data (canPublishData)")
        packet.participant_identity = self.local_participant.identity
        await self.publish_packet(packet, reliable=True)

    @property
    def streams(self) -> StreamManager:
        return self._streams

    @property
    def rpc(self) -> RpcManager:
        return self._rpc

    def text_streams(self, topic: str) -> AsyncIterator[TextStreamReader]:
        """Incoming text streams on ``topic``, from now on: an async iterator of readers
        (each itself an async iterator of str chunks, with ``read_all()``); it ends when
        the room does."""
        return self._streams.text_streams(topic)

    def byte_streams(self, topic: str) -> AsyncIterator[ByteStreamReader]:
        """Incoming byte streams (files) on ``topic``: like `text_streams`, with bytes."""
        return self._streams.byte_streams(topic)

    async def publish_packet(self, packet: models.DataPacket, *, reliable: bool) -> None:
        """Send a data packet on the reliable or lossy channel (see `LocalParticipant`)."""
        self._require_connected()
        data = packet.SerializeToString()
        if len(data) > MAX_DATA_PACKET:
            raise PublishDataError(
                f"data packet of {len(data)} bytes exceeds the {MAX_DATA_PACKET}-byte limit")
        if self._rtc is None:
            raise ConnectionClosedError("the room is not connected")
        try:
            await self._rtc.send(RELIABLE if reliable else LOSSY, data)
        except ConnectionError as exc:
            if self._closing:
                raise ConnectionClosedError("the room is disconnected") from None
            raise PublishDataError(f"could not send: {exc}") from None

    # -- internals ---------------------------------------------------------------------

    def _require_state(self) -> RoomState:
        if self._state is None:
            raise ConnectionClosedError("the room is not connected yet")
        return self._state

    def _require_connected(self) -> RoomState:
        state = self._require_state()
        if self._closing:
            raise ConnectionClosedError("the room is disconnected")
        return state

    async def _send(self, request: rtc.SignalRequest) -> None:
        if self._closing or self._signal is None:
            raise ConnectionClosedError("the room is disconnected")
        try:
            await self._signal.send(request)
        except SignalClosed as exc:
            self._finish(DisconnectReason.SIGNAL_CLOSE, exc.message)
            raise ConnectionClosedError(f"the room is disconnected: {exc.message}") from None

    def _set_state(self, new: ConnectionState) -> None:
        if new is not self._connection_state:
            self._connection_state = new
            self._hub.publish(ConnectionStateChanged(new))

    def _finish(self, reason: DisconnectReason, message: str, *,
                tell_server: bool = False) -> None:
        """Mark the room disconnected: deliver `Disconnected`, end iterators, stop services.

        ``tell_server``: we are the ones leaving, so the services task sends a
        LeaveRequest before it closes the socket.
        """
        if self._closing:
            return
        self._closing = True
        self._tell_server = tell_server
        self._disconnect_reason = reason
        _log.info("room disconnected: %s %s", reason.name, message)
        self._set_state(ConnectionState.DISCONNECTED)
        self._hub.publish(Disconnected(reason, message))
        self._hub.close()
        for pending in self._pending.values():
            pending.finish(ConnectionClosedError(f"the room disconnected ({reason.name})"))
        self._rpc.close()
        self._streams.close()
        self._services_scope.cancel()

    async def _read_loop(self) -> None:
        assert self._signal is not None
        while True:
            try:
                msg = await self._signal.receive()
            except SignalClosed as exc:
                self._finish(DisconnectReason.SIGNAL_CLOSE, exc.message)
                return
            if msg is not None:
                try:
                    self._dispatch(msg)
                except Exception:
                    # A server message we cannot digest must not take the room down.
                    _log.exception("error while handling a %s message",
                                   msg.WhichOneof("message"))

    async def _keepalive_loop(self) -> None:
        assert self._keepalive is not None
        ka = self._keepalive
        next_ping = anyio.current_time()
        while True:
            now = anyio.current_time()
            if ka.expired(now):
                self._finish(DisconnectReason.SIGNAL_CLOSE,
                             f"no pong from the server for {ka.timeout:g} s")
                return
            if now >= next_ping:
                try:
                    await self._send(ka.ping(now))
                except ConnectionClosedError:
                    return
                next_ping = now + ka.interval
            await anyio.sleep(max(0.0, min(next_ping, ka.deadline() + 0.01) - now))

    def _dispatch(self, msg: rtc.SignalResponse) -> None:
        state = self._state
        assert state is not None and self._keepalive is not None
        which = msg.WhichOneof("message")
        self._keepalive.alive(anyio.current_time())
        if which == "pong_resp":
            self._keepalive.pong(anyio.current_time(), msg.pong_resp)
        elif which == "pong":
            pass
        elif which == "leave":
            self._on_leave(msg.leave)
        elif which == "request_response":
            self._on_request_response(msg.request_response)
        elif which == "refresh_token":
            self._token = msg.refresh_token
        elif which in ("offer", "answer", "trickle"):
            if self._rtc is not None:
                self._rtc.post(msg)
        else:
            for event in state.handle(msg):
                if state.sid:
                    self._sid_known.set()
                if isinstance(event, ParticipantDisconnected):
                    self._rpc.participant_left(event.participant.identity)
                    self._streams.participant_left(event.participant.identity)
                self._hub.publish(event)
            for pending in list(self._pending.values()):
                if pending.satisfied():
                    pending.finish()

    def _on_packet(self, label: str, data: bytes) -> None:
        """A data packet from the subscriber connection (runs on our loop)."""
        if self._closing or self._state is None:
            return
        try:
            packet = models.DataPacket.FromString(data)
        except DecodeError:
            _log.warning("malformed data packet (%d bytes) ignored", len(data))
            return
        which = packet.WhichOneof("value")
        sender = packet.participant_identity
        if which in ("stream_header", "stream_chunk", "stream_trailer"):
            self._streams.handle_packet(packet, sender)
            return
        if which in ("rpc_request", "rpc_ack", "rpc_response"):
            self._rpc.handle_packet(packet, sender)
            return
        kind = DataPacketKind.LOSSY if label == LOSSY else DataPacketKind.RELIABLE
        for event in self._state.handle_data(packet, kind):
            self._hub.publish(event)

    def _on_rtc_failure(self, message: str) -> None:
        # Reconnection is not implemented yet: a failed peer connection ends the room.
        self._finish(DisconnectReason.MEDIA_FAILURE, message)

    async def _negotiate(self) -> None:
        assert self._rtc is not None
        try:
            await self._rtc.run()
        except Exception as exc:
            _log.exception("WebRTC negotiation failed")
            self._finish(DisconnectReason.MEDIA_FAILURE, f"WebRTC negotiation failed: {exc!r}")

    def _on_leave(self, leave: rtc.LeaveRequest) -> None:
        reason = DisconnectReason.from_wire(leave.reason)
        # Resuming and reconnecting are not implemented yet: any leave ends the room.
        self._finish(reason, "the server asked us to leave")

    def _on_request_response(self, resp: rtc.RequestResponse) -> None:
        pending = self._pending.get(resp.request_id)
        if pending is None:
            return
        if resp.reason == rtc.RequestResponse.Reason.OK:
            pending.finish()
        else:
            name = rtc.RequestResponse.Reason.Name(resp.reason) if resp.reason in (
                rtc.RequestResponse.Reason.values()) else str(resp.reason)
            pending.finish(RequestRefusedError(name, resp.message))


def _video_grant(token: str) -> dict[str, object]:
    """The token's ``video`` grant, unverified (the server verifies it; we only read what
    it allows us, to refuse early what the server would drop)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    video = claims.get("video")
    return video if isinstance(video, dict) else {}


class _RoomContext:
    """The async context manager `Room.connect` returns."""

    def __init__(self, room: Room, url: str, token: str) -> None:
        self._room = room
        self._url = url
        self._token = token
        self._stack: AsyncExitStack | None = None

    def __repr__(self) -> str:  # never show the token
        return f"<Room.connect url={self._url!r}>"

    async def __aenter__(self) -> Room:
        if self._stack is not None:
            raise RuntimeError("this Room.connect(...) context is already in use")
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        self._room._tg = tg
        try:
            await tg.start(self._room._rpc.run)
            await tg.start(self._room._run_services, self._url, self._token)
        except BaseException:
            # Not fed to the task group, so the caller gets ConnectError (or its own
            # cancellation) as itself, not wrapped in an ExceptionGroup.
            tg.cancel_scope.cancel()
            await stack.aclose()
            raise
        self._stack = stack
        return self._room

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None
        try:
            await self._room.disconnect()
            if self._room._tg is not None:
                self._room._tg.cancel_scope.cancel()
        finally:
            # The user's exception (if any) is not fed to our task group, so it propagates
            # as itself rather than wrapped in an ExceptionGroup.
            await self._stack.aclose()
