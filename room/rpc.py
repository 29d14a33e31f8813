"""RPC between participants (LiveKit RPC v1: request, ack, response as data packets).

`RpcManager` belongs to a connected `Room`. Outgoing calls (`perform`) wait for the
callee's ack (``ACK_TIMEOUT``) and then for its response (``response_timeout``), and fail
fast with RECIPIENT_DISCONNECTED if the callee leaves. Incoming requests are acknowledged
at once and each runs as its own task in the manager's task group, which the room's task
group owns (`run`): many invocations run concurrently, and on disconnect they get
``RoomOptions.rpc_drain_timeout`` seconds to finish (`drain`) before they are cancelled.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup, TaskStatus
from livekit.protocol import models

from room.errors import ConnectionClosedError, PublishDataError, RpcError

__all__ = ["ACK_TIMEOUT", "MAX_PAYLOAD", "RpcErrorCode", "RpcHandler", "RpcInvocationData",
           "RpcManager"]

_log = logging.getLogger(__name__)

MAX_PAYLOAD = 15 * 1024  # bytes, request and response payloads alike
# How many recent requests are remembered to run a repeated one only once.
_SEEN_REQUESTS = 4096
ACK_TIMEOUT = 7.0  # seconds: LiveKit clients' maximum round trip for the ack
VERSION = 1


class RpcErrorCode:
    """LiveKit's built-in RPC error codes."""

    APPLICATION_ERROR = 1500
    CONNECTION_TIMEOUT = 1501
    RESPONSE_TIMEOUT = 1502
    RECIPIENT_DISCONNECTED = 1503
    RESPONSE_PAYLOAD_TOO_LARGE = 1504
    SEND_FAILED = 1505
    UNSUPPORTED_METHOD = 1400
    RECIPIENT_NOT_FOUND = 1401
    REQUEST_PAYLOAD_TOO_LARGE = 1402
    UNSUPPORTED_SERVER = 1403
    UNSUPPORTED_VERSION = 1404


_MESSAGES = {
    RpcErrorCode.APPLICATION_ERROR: "Application error in method handler",
    RpcErrorCode.CONNECTION_TIMEOUT: "Connection timeout",
    RpcErrorCode.RESPONSE_TIMEOUT: "Response timeout",
    RpcErrorCode.RECIPIENT_DISCONNECTED: "Recipient disconnected",
    RpcErrorCode.RESPONSE_PAYLOAD_TOO_LARGE: "Response payload too large",
    RpcErrorCode.SEND_FAILED: "Failed to send",
    RpcErrorCode.UNSUPPORTED_METHOD: "Method not supported at destination",
    RpcErrorCode.RECIPIENT_NOT_FOUND: "Recipient not found",
    RpcErrorCode.REQUEST_PAYLOAD_TOO_LARGE: "Request payload too large",
    RpcErrorCode.UNSUPPORTED_SERVER: "RPC not supported by server",
    RpcErrorCode.UNSUPPORTED_VERSION: "Unsupported RPC version",
}


def builtin_error(code: int, data: str | None = None) -> RpcError:
    return RpcError(code, _MESSAGES[code], data)


@dataclass(frozen=True, slots=True)
class RpcInvocationData:
    """What a method handler is called with."""

    request_id: str
    caller_identity: str
    payload: str
    response_timeout: float


RpcHandler = Callable[[RpcInvocationData], Awaitable[str] | str]
# The manager whose invocation the current task runs (see `RpcManager.in_invocation`).
_INVOKING: contextvars.ContextVar[RpcManager | None] = contextvars.ContextVar(
    "room_rpc_invoking", default=None)
SendPacket = Callable[[models.DataPacket], Awaitable[None]]


class _Call:
    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.acked = anyio.Event()
        self.done = anyio.Event()
        self.response: str | None = None
        self.error: Exception | None = None

    def finish(self, response: str | None = None, error: Exception | None = None) -> None:
        if not self.done.is_set():
            self.response, self.error = response, error
            self.acked.set()
            self.done.set()


class RpcManager:
    """Registered methods, calls in flight and running invocations of one room."""

    def __init__(self, *, send_packet: SendPacket, local_identity: Callable[[], str]) -> None:
        self._send_packet = send_packet
        self._local_identity = local_identity
        self._handlers: dict[str, RpcHandler] = {}
        self._calls: dict[str, _Call] = {}
        self._tg: TaskGroup | None = None
        self._accepting = True
        self._running = 0
        self._finished = anyio.Event()  # set (and replaced) whenever an invocation ends
        self._seen: dict[tuple[str, str], None] = {}  # recent (caller, request id)
        self._closed = False

    # -- methods -----------------------------------------------------------------------

    def register(self, method: str, handler: RpcHandler) -> None:
        if not isinstance(method, str) or not method:
            raise ValueError("an RPC method name must be a non-empty str")
        if not callable(handler):
            raise TypeError("an RPC handler must be an async function")
        if method in self._handlers:
            raise ValueError(f"RPC method {method!r} is already registered")
        self._handlers[method] = handler

    def unregister(self, method: str) -> None:
        self._handlers.pop(method, None)

    # -- calling -----------------------------------------------------------------------

    async def perform(self, *, destination_identity: str, method: str, payload: str,
                      response_timeout: float = 10.0) -> str:
        if not isinstance(destination_identity, str) or not destination_identity:
            raise TypeError("destination_identity must be a non-empty str")
        if not isinstance(method, str) or not method:
            raise TypeError("method must be a non-empty str")
        if not isinstance(payload, str):
            raise TypeError("payload must be a str")
        if not response_timeout > 0:
            raise ValueError("response_timeout must be positive")
        if self._closed:
            raise ConnectionClosedError("the room is disconnected")
        if len(payload.encode()) > MAX_PAYLOAD:
            raise builtin_error(RpcErrorCode.REQUEST_PAYLOAD_TOO_LARGE)
        # No presence check: LiveKit servers announce participants that publish nothing
        # up to a few seconds late, so an identity we have not seen may well be there. A
        # call to nobody is not acknowledged and fails with CONNECTION_TIMEOUT.
        request_id = str(uuid.uuid4())
        call = self._calls[request_id] = _Call(destination_identity)
        started = anyio.current_time()
        try:
            try:
                await self._send_packet(models.DataPacket(
                    destination_identities=[destination_identity],
                    rpc_request=models.RpcRequest(
                        id=request_id, method=method, payload=payload, version=VERSION,
                        response_timeout_ms=int(response_timeout * 1000))))
            except PublishDataError as exc:
                raise builtin_error(RpcErrorCode.SEND_FAILED, str(exc)) from None
            with anyio.move_on_after(ACK_TIMEOUT):
                await call.acked.wait()
            if not call.acked.is_set():
                raise builtin_error(RpcErrorCode.CONNECTION_TIMEOUT)
            remaining = started + response_timeout - anyio.current_time()
            with anyio.move_on_after(max(remaining, 0.0)):
                await call.done.wait()
            if not call.done.is_set():
                raise builtin_error(RpcErrorCode.RESPONSE_TIMEOUT)
            if call.error is not None:
                raise call.error
            assert call.response is not None
            return call.response
        finally:
            self._calls.pop(request_id, None)

    # -- incoming ------------------------------------------------------------------------

    def handle_packet(self, packet: models.DataPacket, sender: str) -> None:
        """An ``rpc_request``, ``rpc_ack`` or ``rpc_response`` from ``sender``."""
        which = packet.WhichOneof("value")
        if which == "rpc_ack":
            call = self._calls.get(packet.rpc_ack.request_id)
            if call is not None and call.destination == sender:
                call.acked.set()
        elif which == "rpc_response":
            resp = packet.rpc_response
            call = self._calls.get(resp.request_id)
            if call is None or call.destination != sender:
                return
            if resp.WhichOneof("value") == "error":
                err = resp.error
                call.finish(error=RpcError(err.code, err.message, err.data or None))
            else:
                call.finish(response=resp.payload)
        elif which == "rpc_request":
            req = packet.rpc_request
            if (sender, req.id) in self._seen:
                # A copy the caller sent again after reconnecting: it runs once.
                _log.debug("repeated RPC request %s from %s ignored", req.id, sender)
                return
            self._seen[(sender, req.id)] = None
            while len(self._seen) > _SEEN_REQUESTS:
                self._seen.pop(next(iter(self._seen)))
            if self._tg is None or not self._accepting:
                self._respond_later(sender, req.id,
                                    error=builtin_error(RpcErrorCode.RECIPIENT_DISCONNECTED))
                return
            self._running += 1
            self._tg.start_soon(self._invoke, sender, req)

    def participant_left(self, identity: str) -> None:
        for call in list(self._calls.values()):
            if call.destination == identity:
                call.finish(error=builtin_error(RpcErrorCode.RECIPIENT_DISCONNECTED))

    def close(self) -> None:
        """The room ended: calls in flight fail at once; no new invocations start."""
        self._closed = True
        self._accepting = False
        for call in list(self._calls.values()):
            call.finish(error=ConnectionClosedError("the room disconnected during the call"))
        # Invocations still running could not answer any more (after `drain` there are
        # none): end them, and the manager's task with them.
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    # -- invocations ---------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the invocations' task group until cancelled (by the room's task group)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep(math.inf)

    async def drain(self, grace: float) -> None:
        """Stop accepting requests; give running invocations ``grace`` seconds, then cancel
        them."""
        self._accepting = False
        own = 1 if self.in_invocation() else 0  # a handler leaving the room: not itself
        with anyio.move_on_after(grace):
            while self._running > own:
                await self._finished.wait()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def in_invocation(self) -> bool:
        """Whether the calling task is one of this manager's invocations."""
        return _INVOKING.get() is self

    async def _invoke(self, caller: str, req: models.RpcRequest) -> None:
        _INVOKING.set(self)  # this task's own context: it runs one invocation
        try:
            await self._send(caller, models.DataPacket(
                destination_identities=[caller], rpc_ack=models.RpcAck(request_id=req.id)))
            error: RpcError | None = None
            result = ""
            handler = self._handlers.get(req.method)
            if req.version != VERSION:
                error = builtin_error(RpcErrorCode.UNSUPPORTED_VERSION)
            elif handler is None:
                error = builtin_error(RpcErrorCode.UNSUPPORTED_METHOD)
            else:
                data = RpcInvocationData(req.id, caller, req.payload,
                                         req.response_timeout_ms / 1000)
                try:
                    outcome = handler(data)
                    # Plain functions are accepted too, as the official SDKs accept them.
                    result = await outcome if inspect.isawaitable(outcome) else outcome
                    if not isinstance(result, str):
                        raise TypeError(f"RPC handler for {req.method!r} returned "
                                        f"{type(result).__name__}, not str")
                    if len(result.encode()) > MAX_PAYLOAD:
                        error = builtin_error(RpcErrorCode.RESPONSE_PAYLOAD_TOO_LARGE)
                except RpcError as exc:
                    error = exc
                except Exception:
                    # Its text stays here: callers get only the generic application error.
                    _log.exception("RPC handler for %r failed", req.method)
                    error = builtin_error(RpcErrorCode.APPLICATION_ERROR)
            await self._respond(caller, req.id, result, error)
        finally:
            self._running -= 1
            self._finished.set()
            self._finished = anyio.Event()

    async def _respond(self, caller: str, request_id: str, payload: str,
                       error: RpcError | None) -> None:
        resp = models.RpcResponse(request_id=request_id)
        if error is not None:
            resp.error.CopyFrom(models.RpcError(code=error.code, message=error.message,
                                                data=error.data or ""))
        else:
            resp.payload = payload
        await self._send(caller, models.DataPacket(destination_identities=[caller],
                                                   rpc_response=resp))

    def _respond_later(self, caller: str, request_id: str, *, error: RpcError) -> None:
        if self._tg is not None and not self._closed:
            self._tg.start_soon(self._respond, caller, request_id, "", error)

    async def _send(self, caller: str, packet: models.DataPacket) -> None:
        try:
            await self._send_packet(packet)
        except (ConnectionClosedError, PublishDataError) as exc:
            _log.debug("RPC answer to %s not sent: %s", caller, exc)
