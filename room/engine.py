"""The connection engine behind a `Room` (private).

One `Engine` per room owns everything that talks to the server: the signalling connection
(with its reader and keepalive), the WebRTC transport (with its negotiation worker), the
single send path for data (permission, size and sequence checked in one place), the
requests waiting for the server's answers, and the supervisor that repairs a broken
connection. What to do about a fault is decided by the pure `Lifecycle`; what the room
looks like by the pure `RoomState`; what reliable data a resume must send again by the
pure `ReliableOutbox`. The engine is their I/O driver.

Task layout (all in the room's task group, through `run`):

- the supervisor (`run`) joins, then waits for faults and repairs them (resume or full
  rejoin, with the policy's backoff) until the room ends;
- one *signal worker* per signalling connection: it opens the WebSocket, reads it, pings
  it, and closes it when cancelled (httpx-ws wants a connection closed by the task that
  opened it);
- one *transport worker* per WebRTC transport: it runs the negotiation and closes the
  peer connections when cancelled.

Faults reach the supervisor tagged with the generation of the connection they concern, so
a late complaint from a connection already replaced changes nothing.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
from aiortc import RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from room.errors import (
    ConnectError,
    ConnectionClosedError,
    PublishDataError,
    RequestRefusedError,
    RequestTimeoutError,
)
from room.events._types import ParticipantDisconnected, RoomEvent
from room.events.hub import EventHub
from room.media.manager import MediaManager
from room.options import IceTransportType, RoomOptions, RtcConfiguration
from room.participant import LocalParticipant
from room.rpc import RpcManager
from room.state import RoomState
from room.streams import StreamManager
from room.transport.ice import DEVSERVER_NODE_ID, client_host_addresses
from room.transport.keepalive import Keepalive
from room.transport.lifecycle import Action, Lifecycle, Step
from room.transport.media import TrackSink
from room.transport.peer import HIGH_WATER
from room.transport.reliable import ReliableInbox, ReliableOutbox
from room.transport.rtc import LOSSY, RELIABLE, RtcTransport
from room.transport.signal import (
    ResumeRefused,
    SignalClosed,
    SignalConnection,
    connect_signal,
    resume_signal,
)
from room.transport.url import signal_params
from room.types import ConnectionState, DataPacketKind, DisconnectReason

__all__ = ["MAX_DATA_PACKET", "Engine"]

_log = logging.getLogger(__name__)

# How long leaving may take to tell the server and close the socket before giving up.
_LEAVE_TIMEOUT = 2.0
# How long a transport failure waits for a ``leave`` that may explain it (see
# `Engine._leave_instead`).
_LEAVE_GRACE = 1.0
# The largest data packet (serialized) we send: the data channel's default message size.
MAX_DATA_PACKET = 64_000
# Reliable packets kept for a resume: more than the transport can have in flight (our
# send backlog is kept below HIGH_WATER, SCTP's window is about 1 MiB).
_RETAIN_BYTES = 4 * HIGH_WATER
# Stamped reliable packets that may wait out a reconnection before publish_data waits.
_WAITING_BYTES = 2 * HIGH_WATER


@dataclass(frozen=True, slots=True)
class _Fault:
    """Something broke; ``generation`` is that of the signal connection or transport."""

    kind: str  # "signal", "transport" or "leave"
    generation: int
    message: str
    leave: rtc.LeaveRequest | None = None


def _leave_says_reconnect(fault: _Fault) -> bool:
    """A ``leave`` that asks the client to come back (resume or rejoin), not to go."""
    leave = fault.leave
    if leave is None:
        return False
    action = rtc.LeaveRequest.Action.Name(leave.action)
    return action in ("RECONNECT", "RESUME") or (action == "DISCONNECT"
                                                 and leave.can_reconnect)


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


class _SignalLink:
    """One signalling connection: the socket, its keepalive, the scope that ends it."""

    def __init__(self, generation: int, conn: SignalConnection, keepalive: Keepalive,
                 scope: anyio.CancelScope) -> None:
        self.generation = generation
        self.conn = conn
        self.keepalive = keepalive
        self.scope = scope
        self.retired = False  # replaced by a newer connection: no goodbye on it
        self.gone = anyio.Event()  # set once it is not the room's connection any more


class _TransportLink:
    """One WebRTC transport and the scope of its worker."""

    def __init__(self, generation: int, transport: RtcTransport,
                 scope: anyio.CancelScope) -> None:
        self.generation = generation
        self.transport = transport
        self.scope = scope


class Engine:
    """The private engine of one `Room`; see the module docstring."""

    def __init__(self, options: RoomOptions, hub: EventHub) -> None:
        self.options = options
        self.hub = hub
        self.lifecycle = Lifecycle(options.reconnect)
        self.state: RoomState | None = None
        self.url = ""
        self.token = ""
        self.sid_known = anyio.Event()
        self.done = anyio.Event()  # the engine's tasks are over
        self.outbox = ReliableOutbox(_RETAIN_BYTES)
        self.inbox = ReliableInbox()
        self.streams = StreamManager(send_packet=self._send_internal_reliable,
                                     local_identity=lambda: self.local.identity,
                                     reader_buffer_bytes=options.stream_buffer_bytes)
        self.rpc = RpcManager(send_packet=self._send_internal_reliable,
                              local_identity=lambda: self.local.identity)
        self.media = MediaManager(send_signal=self.send_signal,
                                  transport=lambda: self.transport,
                                  state=lambda: self.state, publish=self._publish_event,
                                  request_timeout=options.request_timeout,
                                  auto_subscribe=options.auto_subscribe)
        self._generations = itertools.count(1)
        self._signal: _SignalLink | None = None
        self._transport: _TransportLink | None = None
        self._tg: TaskGroup | None = None
        self._faults_in: MemoryObjectSendStream[_Fault]
        self._faults: MemoryObjectReceiveStream[_Fault]
        self._faults_in, self._faults = anyio.create_memory_object_stream[_Fault](math.inf)
        self._connected = anyio.Event()  # set while the connection is usable
        self._linked = anyio.Event()  # set while there is a signalling connection
        self._ended = anyio.Event()  # set when the room is over
        self._space = anyio.Event()  # set when waiting reliable packets were sent
        self._flush_lock = anyio.Lock()
        self._request_ids = itertools.count(1)
        # Negotiation messages that came before the transport they are for.
        self._early_negotiation: list[rtc.SignalResponse] = []
        # Room messages that came before the join response was taken in.
        self._early_state: list[rtc.SignalResponse] = []
        self._holding = False  # a rejoin's join response is not taken in yet
        self._pending: dict[int, _PendingRequest] = {}
        # Data packets that came while joining, until `release_held` (None after it).
        self._held: list[tuple[str, models.DataPacket]] | None = []
        self._tell_server = False  # leaving is our idea: say goodbye first

    # -- what the room and the participants see ------------------------------------------

    @property
    def local(self) -> LocalParticipant:
        if self.state is None:
            raise ConnectionClosedError("the room is not connected yet")
        return self.state.local

    @property
    def closing(self) -> bool:
        return self.lifecycle.connection_state is ConnectionState.DISCONNECTED

    @property
    def connection_state(self) -> ConnectionState:
        return self.lifecycle.connection_state

    @property
    def transport(self) -> RtcTransport | None:
        """The current WebRTC transport (tests reach for it)."""
        return self._transport.transport if self._transport is not None else None

    @property
    def keepalive(self) -> Keepalive | None:
        return self._signal.keepalive if self._signal is not None else None

    # -- the supervisor ----------------------------------------------------------------

    async def run(self, url: str, token: str, *, task_status: TaskStatus[None]) -> None:
        """Join (raising `ConnectError` if that fails), then keep the room connected until
        it ends. Owns every task and connection of the room; leaves none behind."""
        self.url, self.token = url, token
        failed: ConnectError | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    await self._first_join()
                except ConnectError as exc:
                    failed = exc  # raised below, as itself (not in an exception group)
                    tg.cancel_scope.cancel()
                else:
                    self._apply(self.lifecycle.joined())
                    tg.start_soon(self.media.run_posts)
                    task_status.started()
                    await self._supervise()
                    tg.cancel_scope.cancel()
            if failed is not None:
                self.lifecycle.closed(DisconnectReason.JOIN_FAILURE, str(failed))
                raise failed
        finally:
            if self.state is not None and not self.closing and failed is None:
                # Cancelled from outside: that is the user leaving too.
                self.close(DisconnectReason.CLIENT_INITIATED, "cancelled", tell_server=True)
            self.done.set()

    async def _first_join(self) -> None:
        """Join within ``connect_timeout``. Signalling lost or WebRTC failing after the
        join response (before the room is usable) leads to a fresh attempt, as the
        reconnection policy spaces and counts them (none without a policy); a ``leave``
        from the server ends the join at once, unless it asks for a reconnection."""
        timeout = self.options.connect_timeout
        policy = self.options.reconnect
        attempts = policy.max_attempts if policy is not None else 1
        lost: list[str] = []
        with anyio.move_on_after(timeout) as scope:
            while True:
                fault = await self._join_attempt()
                if fault is None:
                    return
                if fault.kind == "leave" and not _leave_says_reconnect(fault):
                    assert fault.leave is not None
                    reason = DisconnectReason.from_wire(fault.leave.reason)
                    raise ConnectError(f"the server ended the session while joining "
                                       f"({reason.name})")
                lost.append(fault.message)
                self._retire_signal()
                self._retire_transport()
                self.state = None  # that session is abandoned
                if len(lost) >= attempts:
                    raise ConnectError(
                        f"could not join {self.url} in {len(lost)} attempt"
                        f"{'s' if len(lost) > 1 else ''}: " + "; ".join(lost))
                assert policy is not None
                delay = policy.delay(len(lost) - 1)  # the first retry goes at once
                _log.warning("join attempt %d failed (%s); trying again in %g s",
                             len(lost), fault.message, delay)
                await anyio.sleep(delay)
        if scope.cancelled_caught:
            if self.lifecycle.disconnect_reason is not None:
                raise ConnectError(f"the server ended the session while joining "
                                   f"({self.lifecycle.disconnect_reason.name})")
            raise ConnectError(f"timed out after {timeout:g} s connecting to {self.url}"
                               + ("" if self.state is None else
                                  " (joined, but WebRTC did not connect)")
                               + "".join(f"; attempt {n} failed: {m}"
                                         for n, m in enumerate(lost, 1)))

    async def _join_attempt(self) -> _Fault | None:
        """One `_join`, watched: the fault that broke it (the join is abandoned), or None
        once joined. Faults about what an earlier attempt opened are moot."""
        broke: _Fault | None = None
        failed: Exception | None = None
        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                nonlocal broke
                async for fault in self._faults:
                    current = self._signal if fault.kind != "transport" else self._transport
                    if current is not None and current.generation == fault.generation:
                        broke = fault
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            try:
                await self._join()
            except Exception as exc:  # raised below, not in an exception group
                failed = exc
            tg.cancel_scope.cancel()
        if failed is not None and broke is None:
            raise failed
        return broke

    async def _supervise(self) -> None:
        """Wait for faults; repair the connection as the lifecycle says, until it ends."""
        async for fault in self._faults:
            if fault.kind == "transport":
                fault = await self._leave_instead(fault)
            step = self._fault_step(fault)
            while step.action in (Action.RESUME, Action.REJOIN):
                step = await self._attempt(step)
            if step.action is Action.CLOSE:
                return

    async def _leave_instead(self, fault: _Fault) -> _Fault:
        """A transport that failed while signalling is up may be the server ending the
        session: it closes the peer connections as it sends ``leave``, and the close can
        overtake the message. Give a ``leave`` a moment to arrive; it decides if it does."""
        link = self._signal
        if link is None:
            return fault
        with anyio.move_on_after(_LEAVE_GRACE):
            while True:
                try:
                    other = await self._faults.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    return fault  # the room ended meanwhile: the supervisor stops
                if other.generation != link.generation or other.kind == "transport":
                    continue  # moot, or the same failure again
                return other if other.kind == "leave" else fault
        return fault

    def _fault_step(self, fault: _Fault) -> Step:
        now = anyio.current_time()
        signal, transport = self._signal, self._transport
        if fault.kind == "transport":
            if transport is None or transport.generation != fault.generation:
                return Step()  # about a transport already replaced
            return self._apply(self.lifecycle.transport_failed(now, fault.message))
        if signal is None or signal.generation != fault.generation:
            return Step()  # about a signal connection already replaced
        if fault.kind == "leave":
            assert fault.leave is not None
            leave = fault.leave
            action = rtc.LeaveRequest.Action.Name(leave.action)
            if action == "DISCONNECT" and leave.can_reconnect:
                action = "RECONNECT"  # servers that only set the legacy flag
            reason = DisconnectReason.from_wire(leave.reason)
            return self._apply(self.lifecycle.server_leave(now, reason, action))
        return self._apply(self.lifecycle.signal_lost(
            now, fault.message, transport_healthy=self._transport_healthy()))

    async def _attempt(self, step: Step) -> Step:
        """Wait the step's delay, then resume or rejoin once; the next step."""
        with anyio.move_on_after(step.delay):
            await self._ended.wait()
        if self.closing:
            return Step(action=Action.CLOSE)
        late = self.lifecycle.deadline_passed(anyio.current_time())
        if late.events:
            return self._apply(late)
        try:
            with anyio.fail_after(self.options.connect_timeout):
                if step.action is Action.RESUME:
                    await self._resume()
                else:
                    await self._rejoin()
        except ResumeRefused as exc:
            _log.info("resume refused (%s); rejoining", exc)
            return self._apply(self.lifecycle.attempt_failed(
                anyio.current_time(), str(exc), needs_rejoin=True))
        except (ConnectError, TimeoutError, OSError, SignalClosed,
                ConnectionClosedError) as exc:
            _log.info("%s attempt failed: %s", step.action.value, exc)
            return self._apply(self.lifecycle.attempt_failed(
                anyio.current_time(), str(exc) or type(exc).__name__, needs_rejoin=False,
                transport_healthy=self._transport_healthy()))
        rejoined = step.action is Action.REJOIN
        step = self._apply(self.lifecycle.attempt_succeeded())
        self._drain_stale_faults()
        if rejoined and self.state is not None and self._connected.is_set():
            # A new session: our tracks are published again, in the background.
            assert self._tg is not None
            self._tg.start_soon(self.media.republish, self.state.local)
        if self.outbox.unsent_count and self._connected.is_set():
            # Stamped during the attempt's replay, before the gate opened: no caller
            # would flush these (a last packet would wait for ever). In the background,
            # so that a slow transport does not hold up the next fault.
            assert self._tg is not None
            self._tg.start_soon(self._flush_quietly)
        return step

    def _drain_stale_faults(self) -> None:
        """Faults that came during the attempt about what it replaced are moot."""
        kept = []
        while True:
            try:
                fault = self._faults.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            current = self._signal if fault.kind != "transport" else self._transport
            if current is not None and current.generation == fault.generation:
                kept.append(fault)
        for fault in kept:
            self._faults_in.send_nowait(fault)

    def _apply(self, step: Step) -> Step:
        """Deliver a step's events, and open or close the gate for requests."""
        for event in step.events:
            self.hub.publish(event)
        if self.lifecycle.connection_state is ConnectionState.CONNECTED:
            self._connected.set()
        elif self._connected.is_set():
            self._connected = anyio.Event()
        if step.action is Action.CLOSE:
            self._closed(self.lifecycle.disconnect_reason or DisconnectReason.UNKNOWN_REASON)
        return step

    def _closed(self, reason: DisconnectReason) -> None:
        """The room is over: fail what waits, stop what runs (the hub was told)."""
        _log.info("room disconnected: %s", reason.name)
        self._ended.set()
        self._linked.set()
        if self._signal is not None:
            self._signal.gone.set()
        self.hub.close()
        self._connected.set()  # waiters wake up and find the room closed
        self._space.set()
        for pending in self._pending.values():
            pending.finish(ConnectionClosedError(f"the room disconnected ({reason.name})"))
        self.rpc.close()
        self.streams.close()
        self.media.close()
        self._faults_in.close()

    def close(self, reason: DisconnectReason, message: str, *, tell_server: bool) -> None:
        """End the room now (the user leaves, or the room is cancelled)."""
        if self.closing:
            return
        self._tell_server = tell_server
        self._apply(self.lifecycle.closed(reason, message))

    def _fault(self, kind: str, generation: int, message: str,
               leave: rtc.LeaveRequest | None = None) -> None:
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._faults_in.send_nowait(_Fault(kind, generation, message, leave))

    # -- joining, resuming, rejoining ---------------------------------------------------

    async def _join(self) -> None:
        """The first join: signalling, state, transport; returns once data can flow."""
        params = signal_params(auto_subscribe=self.options.auto_subscribe)
        first = await self._open_signal(params, resume=False)
        assert first.WhichOneof("message") == "join"
        join = first.join
        local = LocalParticipant(join.participant, engine=self)
        self.state = RoomState(join, local)
        _log.info("joined room %r as %r", self.state.name, local.identity)
        self._take_early_state()
        self._note_sid()
        await self._open_transport(join)

    async def _resume(self) -> None:
        """Reopen signalling for the same session; the peer connections stay."""
        self._retire_signal()
        assert self.state is not None
        params = signal_params(auto_subscribe=self.options.auto_subscribe, reconnect=True,
                               participant_sid=self.state.local.sid,
                               reconnect_reason=models.ReconnectReason.RR_SIGNAL_DISCONNECTED)
        first = await self._open_signal(params, resume=True)
        last = first.reconnect.last_message_seq
        link, transport = self._signal, self._transport
        assert link is not None and transport is not None
        # Before anything queued: tell the server where we stand, then send it what it
        # did not get.
        sync = transport.transport.sync_state(self.inbox.receive_states())
        self.media.describe_for_resume(self.state.local, sync)
        await link.conn.send(rtc.SignalRequest(sync_state=sync))
        lost_before = self.outbox.lost
        await self._replay(lambda: self.outbox.resend_after(last))
        if self.outbox.lost > lost_before:
            _log.error("%d reliable packet(s) sent before the resume were lost: neither "
                       "received by the server nor retained",
                       self.outbox.lost - lost_before)
        _log.info("resumed (the server had our reliable data up to %d)", last)

    async def _rejoin(self) -> None:
        """Join afresh: new session, new peer connections; converge the room's state."""
        self._retire_signal()
        self._retire_transport()
        params = signal_params(auto_subscribe=self.options.auto_subscribe)
        self._holding = True
        try:
            first = await self._open_signal(params, resume=False)
        finally:
            self._holding = False
        join = first.join
        assert self.state is not None
        for event in self.state.rejoined(join):
            self._state_event(event)
        self._take_early_state()
        self._note_sid()
        await self._open_transport(join)
        local_sid = self.state.local.sid
        await self._replay(lambda: self.outbox.renumber(local_sid))
        _log.info("rejoined room %r as %r (sid %s)", self.state.name,
                  self.state.local.identity, self.state.local.sid)

    def _take_early_state(self) -> None:
        """Handle the room messages held back until the join response was taken in."""
        assert self.state is not None
        early, self._early_state = self._early_state, []
        for msg in early:
            for event in self.state.handle(msg):
                self._state_event(event)
        self.media.adopt(self.state)
        self._note_sid()

    def _retire_signal(self) -> None:
        if self._signal is not None:
            self._signal.retired = True
            self._signal.gone.set()
            self._signal.scope.cancel()
            self._signal = None
            self._linked = anyio.Event()
            self._early_negotiation.clear()
            self._early_state.clear()

    def _retire_transport(self) -> None:
        if self._transport is not None:
            self._transport.scope.cancel()
            self._transport = None

    def _transport_healthy(self) -> bool:
        return self._transport is not None and self._transport.transport.healthy

    def _note_sid(self) -> None:
        if self.state is not None and self.state.sid:
            self.sid_known.set()

    async def _open_signal(self, params: dict[str, str], *, resume: bool
                           ) -> rtc.SignalResponse:
        """Start a signal worker; its first message (``join`` or ``reconnect``)."""
        assert self._tg is not None
        first: rtc.SignalResponse = await self._tg.start(
            self._signal_worker, params, resume)
        return first

    async def _signal_worker(self, params: dict[str, str], resume: bool, *,
                             task_status: TaskStatus[rtc.SignalResponse]) -> None:
        """Own one signalling connection: open it, then read and ping until retired."""
        generation = next(self._generations)
        started = False

        def mark_started(first: rtc.SignalResponse) -> None:
            nonlocal started
            started = True
            task_status.started(first)

        try:
            await self._run_signal(generation, params, resume, mark_started)
        except Exception as exc:
            # The WebSocket library's own task failed (an exception group out of its
            # context): a broken connection, not a broken room.
            if not started:
                if isinstance(exc, (ResumeRefused, ConnectError)):
                    raise
                raise ConnectError(f"signalling failed: {_describe(exc)}") from None
            _log.warning("signal connection %d failed: %s", generation, _describe(exc))
            self._fault("signal", generation, f"signalling failed: {_describe(exc)}")

    async def _run_signal(self, generation: int, params: dict[str, str], resume: bool,
                          started: Callable[[rtc.SignalResponse], None]) -> None:
        failed: Exception | None = None
        with anyio.CancelScope() as scope:
            async with AsyncExitStack() as stack:
                try:
                    if resume:
                        conn, reconnect = await resume_signal(stack, self.url, self.token,
                                                              params)
                        first = rtc.SignalResponse(reconnect=reconnect)
                        interval, timeout = self.keepalive_settings()
                    else:
                        conn, join = await connect_signal(stack, self.url, self.token, params)
                        first = rtc.SignalResponse(join=join)
                        interval = float(join.ping_interval) or 5.0
                        timeout = max(float(join.ping_timeout) or 15.0, interval)
                except Exception as exc:
                    # Raised below, once the socket is closed: raised inside its context,
                    # it would come out wrapped in an exception group.
                    failed = exc
                else:
                    await self._serve_signal(generation, conn, first, interval, timeout,
                                             scope, started)
        if failed is not None:
            raise failed

    async def _serve_signal(self, generation: int, conn: SignalConnection,
                            first: rtc.SignalResponse, interval: float, ping_timeout: float,
                            scope: anyio.CancelScope,
                            started: Callable[[rtc.SignalResponse], None]) -> None:
        keepalive = Keepalive(interval=interval, timeout=ping_timeout, now=anyio.current_time())
        link = _SignalLink(generation, conn, keepalive, scope)
        self._signal = link
        self._linked.set()
        started(first)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keepalive_loop, link)
                await self._read_loop(link)
                tg.cancel_scope.cancel()
        finally:
            if self._signal is link:
                self._signal = None
            link.gone.set()
            # The room's last word, on the connection still in use, unless the server
            # ended the room: we leave (disconnect() or cancelled).
            if not link.retired and (self._tell_server or not self.closing):
                with anyio.CancelScope(shield=True):
                    await self._say_goodbye(conn)

    def keepalive_settings(self) -> tuple[float, float]:
        ka = self.keepalive
        return (ka.interval, ka.timeout) if ka is not None else (5.0, 15.0)

    async def _open_transport(self, join: rtc.JoinResponse) -> None:
        """Start a transport worker; returns once data can flow both ways."""
        assert self._tg is not None
        generation = next(self._generations)
        transport = self._make_transport(join, generation, await self._gather_hosts(join))
        link: _TransportLink = await self._tg.start(
            self._transport_worker, generation, transport)
        self._transport = link
        for msg in self._early_negotiation:
            transport.post(msg)
        self._early_negotiation.clear()
        await transport.start()
        await transport.wait_ready()

    async def _gather_hosts(self, join: rtc.JoinResponse) -> tuple[str, ...] | None:
        """Where to gather ICE candidates (see `client_host_addresses`); a host name is
        resolved without blocking the event loop."""
        config = self.options.rtc_config or RtcConfiguration()
        host = urlsplit(self.url).hostname or ""
        if (join.server_info.node_id == DEVSERVER_NODE_ID and config.host_addresses is None
                and host and host != "localhost" and not _is_ip(host)):
            with suppress(OSError):
                infos = await anyio.getaddrinfo(host, None)
                host = str(infos[0][4][0]) if infos else host
        return client_host_addresses(host, join.server_info.node_id, config.host_addresses)

    async def _transport_worker(self, generation: int, transport: RtcTransport, *,
                                task_status: TaskStatus[_TransportLink]) -> None:
        with anyio.CancelScope() as scope:
            link = _TransportLink(generation, transport, scope)
            task_status.started(link)
            try:
                await transport.run()
            except Exception as exc:
                _log.exception("WebRTC negotiation failed")
                self._fault("transport", generation, f"WebRTC negotiation failed: {exc!r}")
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_LEAVE_TIMEOUT):
                    await transport.close()

    def _make_transport(self, join: rtc.JoinResponse, generation: int,
                        hosts: tuple[str, ...] | None) -> RtcTransport:
        config = self.options.rtc_config or RtcConfiguration()
        servers = [RTCIceServer(urls=urls, username=s.username or None,
                                credential=s.credential or None)
                   for s in join.ice_servers if (urls := _usable_ice_urls(s.urls))]
        servers += [RTCIceServer(urls=list(s.urls), username=s.username or None,
                                 credential=s.credential or None) for s in config.ice_servers]
        return RtcTransport(
            send_signal=self._send_negotiation, on_packet=self._on_packet,
            on_failure=lambda message: self._fault("transport", generation, message),
            ice_servers=servers, host_addresses=hosts,
            subscriber_primary=join.subscriber_primary,
            relay_only=config.ice_transport_type is IceTransportType.RELAY,
            on_track=self._on_track, on_track_failed=self._on_track_failed)

    async def _say_goodbye(self, conn: SignalConnection) -> None:
        leave = rtc.SignalRequest(leave=rtc.LeaveRequest(
            can_reconnect=False, reason=DisconnectReason.CLIENT_INITIATED.name,
            action=rtc.LeaveRequest.Action.DISCONNECT))
        with anyio.move_on_after(_LEAVE_TIMEOUT), suppress(SignalClosed):
            await conn.send(leave)

    # -- signalling ----------------------------------------------------------------------

    async def send_signal(self, request: rtc.SignalRequest) -> None:
        """Send ``request`` on the current signalling connection. While reconnecting it
        waits (as long as its caller lets it) and goes out after, in order; raises
        `ConnectionClosedError` once the room is over."""
        while True:
            if self.closing:
                raise ConnectionClosedError("the room is disconnected")
            link = self._signal
            if link is not None and self._connected.is_set():
                try:
                    await link.conn.send(request)
                    return
                except SignalClosed as exc:
                    self._fault("signal", link.generation, exc.message)
            await self._connected.wait()
            await anyio.lowlevel.checkpoint()

    async def _send_negotiation(self, request: rtc.SignalRequest) -> None:
        """The transports' offers, answers and candidates: on the current signalling
        connection, as soon as there is one (not held back while reconnecting: the
        attempt in progress needs them)."""
        while True:
            if self.closing:
                raise ConnectionClosedError("the room is disconnected")
            link = self._signal
            if link is None:
                await self._linked.wait()
                continue
            try:
                await link.conn.send(request)
                return
            except SignalClosed as exc:
                self._fault("signal", link.generation, exc.message)
            await link.gone.wait()  # until the supervisor replaces it

    async def _read_loop(self, link: _SignalLink) -> None:
        while True:
            try:
                msg = await link.conn.receive()
            except SignalClosed as exc:
                self._fault("signal", link.generation, exc.message)
                await anyio.sleep_forever()  # until retired
            if msg is None:
                continue
            link.keepalive.alive(anyio.current_time())
            try:
                self._dispatch(link, msg)
            except Exception:
                # A server message we cannot digest must not take the room down.
                _log.exception("error while handling a %s message",
                               msg.WhichOneof("message"))

    async def _keepalive_loop(self, link: _SignalLink) -> None:
        ka = link.keepalive
        next_ping = anyio.current_time()
        while True:
            now = anyio.current_time()
            if ka.expired(now):
                self._fault("signal", link.generation,
                            f"no pong from the server for {ka.timeout:g} s")
                await anyio.sleep_forever()  # until retired
            if now >= next_ping:
                try:
                    await link.conn.send(ka.ping(now))
                except SignalClosed as exc:
                    self._fault("signal", link.generation, exc.message)
                    await anyio.sleep_forever()
                next_ping = now + ka.interval
            await anyio.sleep(max(0.0, min(next_ping, ka.deadline() + 0.01) - now))

    def _dispatch(self, link: _SignalLink, msg: rtc.SignalResponse) -> None:
        which = msg.WhichOneof("message")
        if which == "pong_resp":
            link.keepalive.pong(anyio.current_time(), msg.pong_resp)
        elif which == "pong":
            pass
        elif which == "leave":
            self._fault("leave", link.generation, "leave", msg.leave)
        elif which == "request_response":
            self._on_request_response(msg.request_response)
        elif which == "refresh_token":
            token = msg.refresh_token
            if token and token.isascii() and token.isprintable() and " " not in token:
                self.token = token
            else:  # it could not even be sent in a header: keep the one we have
                _log.warning("ignored a malformed refresh_token from the server")
        elif which == "track_published" and self.state is not None:
            self.media.on_track_published(msg.track_published)
        elif which == "track_unpublished" and self.state is not None and not self._holding:
            self.media.on_track_unpublished(self.state.local, msg.track_unpublished.track_sid)
        elif which == "track_subscribed" and self.state is not None and not self._holding:
            self.media.on_local_track_subscribed(self.state.local,
                                                 msg.track_subscribed.track_sid)
        elif which == "subscription_response" and self.state is not None:
            resp = msg.subscription_response
            err = models.SubscriptionError.Name(resp.err) if resp.err in (
                models.SubscriptionError.values()) else str(resp.err)
            self.media.on_subscription_failed(resp.track_sid, err)
        elif which == "mute" and self.state is not None and not self._holding:
            self.media.on_server_mute(self.state.local, msg.mute)
        elif which in ("offer", "answer", "trickle"):
            if self._transport is not None:
                self._transport.transport.post(msg)
            else:  # the server is quicker than our transport: it will take them
                self._early_negotiation.append(msg)
        elif self.state is None or self._holding:
            # Read before the join that opened this connection was taken in (the reader
            # can run first): handled right after it.
            self._early_state.append(msg)
        else:
            for event in self.state.handle(msg):
                self._state_event(event)
            self._note_sid()
            for pending in list(self._pending.values()):
                if pending.satisfied():
                    pending.finish()

    def _state_event(self, event: RoomEvent) -> None:
        """Deliver an event of the room's state (after what it entails here)."""
        if isinstance(event, ParticipantDisconnected):
            self.rpc.participant_left(event.participant.identity)
            self.streams.participant_left(event.participant.identity)
            self.inbox.forget([event.participant.sid])
        for before in self.media.before_state_event(event):
            self.hub.publish(before)
        self.hub.publish(event)
        self.media.after_state_event(event)

    def _publish_event(self, event: RoomEvent) -> None:
        if not self.closing:
            self.hub.publish(event)

    def _on_track_failed(self, stream_id: str, track_sid: str, message: str) -> None:
        """The subscriber connection was offered a track it cannot take (our loop)."""
        if self.state is not None and not self.closing:
            self.media.on_subscription_failed(track_sid, message)

    def _on_track(self, sink: TrackSink, started: bool) -> None:
        """The subscriber connection started or stopped carrying a track (our loop)."""
        if self.state is None or self.closing:
            sink.end()
            return
        self.media.on_sink(sink, started)

    # -- requests (set_metadata and friends) ---------------------------------------------

    async def update_local_participant(
        self, *, name: str | None, metadata: str | None, attributes: Mapping[str, str] | None
    ) -> None:
        """Ask the server to change our name/metadata/attributes; returns once applied."""
        if self.closing:
            raise ConnectionClosedError("the room is disconnected")
        local = self.local
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
        timeout = self.options.request_timeout
        try:
            with anyio.move_on_after(timeout):
                await self.send_signal(req)
                if satisfied():
                    return
                await pending.done.wait()
            if not pending.done.is_set():
                raise RequestTimeoutError(f"the server did not answer within {timeout} s")
            if pending.error is not None:
                raise pending.error
        finally:
            self._pending.pop(request_id, None)

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

    # -- data: the one send path ---------------------------------------------------------

    async def send_packet(self, packet: models.DataPacket, *, reliable: bool) -> None:
        """Send a data packet from us: the one place for the permission, size and
        sequence rules (see `LocalParticipant.publish_data`).

        Reliable packets are numbered and kept (`ReliableOutbox`): during a reconnection
        they wait, and go out after it, in order and once; if too many already wait, this
        waits (as long as the caller lets it). Lossy packets wait for the connection."""
        if self.closing:
            raise ConnectionClosedError("the room is disconnected")
        local = self.local
        if not local.can_publish_data:
            raise PublishDataError("the token does not allow publishing data (canPublishData)")
        packet.participant_identity = local.identity
        if not reliable:
            packet.kind = models.DataPacket.Kind.LOSSY
            data = packet.SerializeToString()
            _check_size(len(data))
            await self._connected.wait()
            await self._hand(LOSSY, data)
            return
        packet.kind = models.DataPacket.Kind.RELIABLE
        if packet.HasField("user") and not packet.user.nonce:
            # How the server recognizes a copy sent again after a full rejoin.
            packet.user.nonce = os.urandom(16)
        _check_size(packet.ByteSize() + _SEQUENCE_OVERHEAD)
        while self.outbox.unsent_count and self.outbox.unsent_bytes > _WAITING_BYTES:
            if self.closing:
                raise ConnectionClosedError("the room is disconnected")
            self._space = anyio.Event()
            await self._space.wait()
        self.outbox.stamp(packet, local.sid)
        if self._connected.is_set():
            await self._flush()
        # Otherwise it waits for the connection: the attempt that restores it sends it.

    async def _send_internal_reliable(self, packet: models.DataPacket) -> None:
        """RPC and data streams: reliable, under the same rules as user data."""
        await self.send_packet(packet, reliable=True)

    async def _flush(self) -> None:
        """Hand the reliable packets not handed yet to the transport, in order, for as
        long as it takes them; what it cannot take waits for the next attempt."""
        async with self._flush_lock:
            while (entry := self.outbox.next_unsent()) is not None:
                if not await self._hand_reliable(*entry):
                    return

    async def _flush_quietly(self) -> None:
        with suppress(ConnectionClosedError):  # the room ended: send_packet says so
            await self._flush()

    async def _replay(self, entries: Callable[[], list[tuple[int, bytes]]]) -> None:
        """After a resume or rejoin: send ``entries()`` again under the flush lock, so that
        no flush begun before the fault interleaves (the server drops a sequence not above
        the last it took). What is stamped meanwhile goes once the gate opens."""
        async with self._flush_lock:
            for sequence, data in entries():
                if not await self._hand_reliable(sequence, data):
                    raise ConnectionClosedError("the transport refused replayed data")

    async def _hand_reliable(self, sequence: int, data: bytes) -> bool:
        """Give one numbered reliable packet to the transport; False if it cannot take it
        (the packet stays in the outbox)."""
        try:
            await self._hand(RELIABLE, data)
        except ConnectionError:
            return False
        self.outbox.handed(sequence)
        if not self.outbox.unsent_count:
            self._space.set()
        return True

    async def _hand(self, label: str, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            raise ConnectionError("no transport")
        try:
            await transport.transport.send(label, data)
        except ConnectionError:
            if self.closing:
                raise ConnectionClosedError("the room is disconnected") from None
            raise

    def _on_packet(self, label: str, data: bytes) -> None:
        """A data packet from the server (runs on our loop)."""
        if self.closing or self.state is None:
            return
        try:
            packet = models.DataPacket.FromString(data)
        except DecodeError:
            _log.warning("malformed data packet (%d bytes) ignored", len(data))
            return
        if not self.inbox.accept(packet, reliable=label != LOSSY):
            _log.debug("duplicate reliable packet %d from %s dropped", packet.sequence,
                       packet.participant_sid)
            return
        if self._held is not None:
            self._held.append((label, packet))
            return
        self._dispatch_packet(label, packet)

    def release_held(self) -> None:
        """Deliver the packets that came while joining, and from now on each as it
        comes. `Room.connect` calls this at its caller's first checkpoint, so that event
        subscriptions, RPC methods and stream handlers set up at the top of the
        ``async with`` block, before any ``await``, get what was sent to us as we joined
        (a greeting sent the moment others heard of us, say)."""
        held, self._held = self._held, None
        for label, packet in held or ():
            if self.closing:
                return
            self._dispatch_packet(label, packet)

    def _dispatch_packet(self, label: str, packet: models.DataPacket) -> None:
        if self.state is None:
            return
        which = packet.WhichOneof("value")
        sender = packet.participant_identity
        if which in ("stream_header", "stream_chunk", "stream_trailer"):
            self.streams.handle_packet(packet, sender)
            return
        if which in ("rpc_request", "rpc_ack", "rpc_response"):
            self.rpc.handle_packet(packet, sender)
            return
        kind = DataPacketKind.LOSSY if label == LOSSY else DataPacketKind.RELIABLE
        for event in self.state.handle_data(packet, kind):
            self.hub.publish(event)


# A sequence number (up to 10 bytes) and a participant sid (~16 bytes) are added to a
# packet when it is numbered.
_SEQUENCE_OVERHEAD = 32


def _check_size(size: int) -> None:
    if size > MAX_DATA_PACKET:
        raise PublishDataError(
            f"data packet of {size} bytes exceeds the {MAX_DATA_PACKET}-byte limit")


def _usable_ice_urls(urls: Sequence[str]) -> list[str]:
    """The server's ICE server URLs that aiortc can parse (one it cannot would fail the
    whole peer connection); the others are logged and skipped."""
    usable = []
    for url in urls:
        try:
            parse_stun_turn_uri(url)
        except ValueError:
            _log.warning("ignored an ICE server URL the server sent: %r", url[:200])
        else:
            usable.append(url)
    return usable


def _describe(exc: BaseException) -> str:
    """One line for an exception, or for the first leaf of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True

