"""The broadcast hub: fans each room event out to every ``Room.events()`` subscriber.

Each subscriber owns a bounded anyio memory-object stream. Publishing never blocks (the
room's reader task must stay free to answer keepalives), so a subscriber whose buffer is
full is *cut off*: its stream is closed, and its iterator raises `EventStreamOverflowError`
once it has drained what it had. Nothing is ever dropped silently. The final
`Disconnected` event has a reserved slot so a subscriber that kept up always sees it.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from room.errors import EventStreamOverflowError
from room.events._types import Disconnected, RoomEvent

__all__ = ["EventHub", "Subscription"]

_log = logging.getLogger(__name__)

E = TypeVar("E", bound=RoomEvent)


class Subscription(Generic[E]):
    """One subscriber's view of the room's events: an async iterator (and context manager).

    Created by `Room.events`; it receives every event published after its creation that
    matches its types. Iteration ends after `Disconnected`. ``aclose()`` (or leaving
    ``async with``) unsubscribes early.
    """

    def __init__(self, types: tuple[type[RoomEvent], ...], buffer_size: int) -> None:
        self._types = types
        self._limit = buffer_size
        self._send: MemoryObjectSendStream[RoomEvent]
        self._receive: MemoryObjectReceiveStream[RoomEvent]
        # One slot more than the limit: reserved for the final Disconnected event.
        self._send, self._receive = anyio.create_memory_object_stream[RoomEvent](buffer_size + 1)
        self._overflowed = False

    def _offer(self, event: RoomEvent) -> bool:
        """Queue ``event`` if it matches; False once this subscription is finished."""
        if self._types and not isinstance(event, self._types):
            return True
        final = isinstance(event, Disconnected)
        stats = self._send.statistics()
        if stats.open_receive_streams == 0:
            # Unsubscribed (aclose): drop it quietly, even if its buffer was full.
            self._send.close()
            return False
        used = stats.current_buffer_used
        if used >= self._limit and not final:
            self._overflowed = True
            _log.warning("events() subscriber fell %d events behind; cutting it off", used)
            self._send.close()
            return False
        try:
            self._send.send_nowait(event)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._send.close()
            return False
        return True

    def _end(self) -> None:
        self._send.close()

    def __aiter__(self) -> AsyncIterator[E]:
        return self

    async def __anext__(self) -> E:
        try:
            event = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()
            if self._overflowed:
                self._overflowed = False  # raise once; then the iterator is simply over
                raise EventStreamOverflowError(
                    f"this events() subscriber fell more than {self._limit} events behind"
                ) from None
            raise StopAsyncIteration from None
        return event  # type: ignore[return-value]

    async def aclose(self) -> None:
        """Unsubscribe; pending events are discarded."""
        self._receive.close()

    async def __aenter__(self) -> Subscription[E]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # An abandoned iterator (``break`` out of ``async for``) must not keep receiving.
        self._receive.close()
        self._send.close()


class EventHub:
    """Owns the subscriptions of one room. Synchronous and I/O-free: safe to call anywhere."""

    def __init__(self, buffer_size: int = 1024) -> None:
        if not 1 <= buffer_size < math.inf:
            raise ValueError("buffer_size must be a positive integer")
        self._buffer_size = buffer_size
        # Weak references: a subscription the user dropped (``break`` out of ``async for``)
        # is collected, which unsubscribes it, instead of filling up and overflowing.
        self._subs: list[weakref.ref[Subscription[RoomEvent]]] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(self, *types: type[E]) -> Subscription[E]:
        for t in types:
            if not (isinstance(t, type) and issubclass(t, RoomEvent)):
                raise TypeError(f"events() takes RoomEvent subclasses, not {t!r}")
        sub: Subscription[E] = Subscription(types, self._buffer_size)
        if self._closed:
            sub._end()
        else:
            self._subs.append(weakref.ref(sub))  # type: ignore[arg-type]
        return sub

    def publish(self, event: RoomEvent) -> None:
        """Deliver ``event`` to every subscriber, in call order; never blocks."""
        if self._closed:
            _log.debug("event after close dropped: %r", event)
            return
        alive = []
        for ref in self._subs:
            sub = ref()
            if sub is not None and sub._offer(event):
                alive.append(ref)
        self._subs = alive

    def close(self) -> None:
        """End every subscription (after what each has buffered)."""
        self._closed = True
        for ref in self._subs:
            sub = ref()
            if sub is not None:
                sub._end()
        self._subs.clear()
