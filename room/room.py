"""`Room`: one connection to a LiveKit room, owned by a task group.

`Room` is the user's object and stays thin: what the room looks like (participants,
metadata) comes from its `RoomState`, what happens from its `EventHub`, and everything
that talks to the server is the private `room.engine.Engine`, which owns the signalling
connection, the WebRTC transport, the send path and the supervisor that repairs a broken
connection. Data flows socket → engine → `RoomState.handle` (pure: updates participants,
returns events) → `EventHub.publish` (never blocks) → each ``events()`` subscriber's
memory-object stream. Every task lives in the room's task group, which `Room.connect`'s
context manager opens and closes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from types import MappingProxyType, TracebackType

import anyio

from room.engine import Engine
from room.errors import ConnectionClosedError
from room.events._types import RoomEvent
from room.events.hub import EventHub, Subscription
from room.options import RoomOptions
from room.participant import LocalParticipant, RemoteParticipant
from room.state import RoomState
from room.streams import ByteStreamReader, TextStreamReader
from room.transport.rtc import RtcTransport
from room.types import ConnectionState, DisconnectReason

__all__ = ["Room"]


class Room:
    """A connected LiveKit room. Get one with ``async with Room.connect(url, token) as room``."""

    def __init__(self, options: RoomOptions) -> None:
        self._options = options
        self._hub = EventHub(options.event_buffer_size, options.event_buffer_bytes)
        self._engine = Engine(options, self._hub)

    # -- connecting --------------------------------------------------------------------

    @classmethod
    def connect(
        cls, url: str, token: str, *, options: RoomOptions | None = None
    ) -> _RoomContext:
        """Join the room at ``url`` with ``token``; an async context manager yielding the Room.

        Entering returns once the room is joined (participants known), or raises
        `ConnectError` saying why not, within ``options.connect_timeout`` seconds. While
        inside, a broken connection is repaired as ``options.reconnect`` says (see
        docs/reliability.md). Leaving tells the server (LeaveRequest), ends every task
        the room started and every ``events()`` iterator. If the block is cancelled,
        teardown still runs (shielded, bounded by a few seconds) and the cancellation
        then propagates.
        """
        options = options if options is not None else RoomOptions()
        if not isinstance(options, RoomOptions):
            raise TypeError("options must be a RoomOptions")
        return _RoomContext(cls(options), url, token)

    # -- public surface ----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._require_state().name

    @property
    def metadata(self) -> str:
        return self._require_state().metadata

    async def sid(self) -> str:
        """The room's server-assigned sid (waits for it if the server has not sent it yet).

        Raises `ConnectionClosedError` if the room ends first."""
        async with anyio.create_task_group() as tg:
            async def stop_when_over() -> None:
                await self._engine.done.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(stop_when_over)
            await self._engine.sid_known.wait()
            tg.cancel_scope.cancel()
        if not self._engine.sid_known.is_set():
            raise ConnectionClosedError("the room ended before the server named it")
        return self._require_state().sid

    @property
    def connection_state(self) -> ConnectionState:
        return self._engine.connection_state

    @property
    def local_participant(self) -> LocalParticipant:
        return self._require_state().local

    @property
    def remote_participants(self) -> Mapping[str, RemoteParticipant]:
        """Everyone else in the room, by identity (a live, read-only view)."""
        return MappingProxyType(self._require_state().remote)

    @property
    def disconnect_reason(self) -> DisconnectReason | None:
        return self._engine.lifecycle.disconnect_reason

    def isconnected(self) -> bool:
        return self._engine.connection_state is ConnectionState.CONNECTED

    def events(self, *types: type[RoomEvent]) -> Subscription[RoomEvent]:
        """Subscribe to the events published from now on (all, or instances of ``types``).

        Each call is an independent subscription with its own buffer, bounded by
        ``RoomOptions.event_buffer_bytes`` (and ``event_buffer_size`` events, if set); see
        `EventHub` and docs/events.md for the overflow policy. The iterator ends after
        `Disconnected`.
        """
        return self._hub.subscribe(*types)

    def text_streams(self, topic: str) -> AsyncIterator[TextStreamReader]:
        """Incoming text streams on ``topic``, from now on: an async iterator of readers
        (each itself an async iterator of str chunks, with ``read_all()``); it ends when
        the room does."""
        return self._engine.streams.text_streams(topic)

    def byte_streams(self, topic: str) -> AsyncIterator[ByteStreamReader]:
        """Incoming byte streams (files) on ``topic``: like `text_streams`, with bytes."""
        return self._engine.streams.byte_streams(topic)

    async def disconnect(self) -> None:
        """Leave the room; idempotent.

        Gives running RPC invocations ``RoomOptions.rpc_drain_timeout`` seconds to finish
        (then cancels them), tells the server (LeaveRequest), ends the room's tasks and
        every ``events()`` iterator, and returns once the socket is closed. Shielded from
        cancellation and bounded in time (a few seconds plus the drain period at worst).
        Called from an RPC handler, it does not wait for that handler.
        """
        engine = self._engine
        with anyio.CancelScope(shield=True):
            # RPC invocations may finish (and answer) while we are still connected.
            await engine.rpc.drain(0.0 if engine.closing else self._options.rpc_drain_timeout)
            engine.close(DisconnectReason.CLIENT_INITIATED, "disconnect() called",
                         tell_server=True)
            if engine.state is not None and not engine.rpc.in_invocation():
                await engine.done.wait()

    def __repr__(self) -> str:
        state = self._engine.state
        name = state.name if state else "?"
        return f"<Room name={name!r} state={self.connection_state.value}>"

    # -- for tests and tools -------------------------------------------------------------

    @property
    def _rtc(self) -> RtcTransport | None:
        """The current WebRTC transport (tests send raw packets through it)."""
        return self._engine.transport

    def _require_state(self) -> RoomState:
        state = self._engine.state
        if state is None:
            raise ConnectionClosedError("the room is not connected yet")
        return state


async def _release_held(engine: Engine) -> None:
    engine.release_held()


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
        engine = self._room._engine
        try:
            await tg.start(engine.rpc.run)
            await tg.start(engine.run, self._url, self._token)
        except BaseException:
            # Not fed to the task group, so the caller gets ConnectError (or its own
            # cancellation) as itself, not wrapped in an ExceptionGroup.
            tg.cancel_scope.cancel()
            await stack.aclose()
            raise
        self._stack = stack
        self._tg = tg
        # Runs at the caller's first checkpoint, after what the top of its block set up.
        tg.start_soon(_release_held, engine)
        return self._room

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None
        try:
            await self._room.disconnect()
            self._tg.cancel_scope.cancel()
        finally:
            # The user's exception (if any) is not fed to our task group, so it propagates
            # as itself rather than wrapped in an ExceptionGroup.
            await self._stack.aclose()
