"""The broadcast hub: fans each room event out to every ``Room.events()`` subscriber.

Each subscriber owns a bounded buffer (`room._bounded.BoundedBuffer`). Publishing never
blocks: the room's reader task must stay free to answer keepalives, and data packets are
published from the room's loop as they arrive. The buffer is bounded by bytes: each event
is charged `event_cost` (its payload plus a flat `EVENT_OVERHEAD`), and a subscriber that
would hold more than its budget (``RoomOptions.event_buffer_bytes``, 16 MiB by default)
is *cut off*: it takes no more events, and its iterator raises `EventStreamOverflowError`
once it has drained what it had. A count limit (``RoomOptions.event_buffer_size``) may
apply too. Nothing is ever dropped silently. The final `Disconnected` event always fits,
so a subscriber that kept up always sees it. See docs/events.md for why bytes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Final, Generic, TypeVar

import anyio

from room._bounded import BoundedBuffer, BufferStatistics, Fanout, Overflow
from room.errors import EventStreamOverflowError
from room.events._types import (
    DataReceived,
    Disconnected,
    ParticipantAttributesChanged,
    ParticipantMetadataChanged,
    ParticipantNameChanged,
    RoomEvent,
    RoomMetadataChanged,
    SipDTMFReceived,
    TranscriptionReceived,
)

__all__ = [
    "DEFAULT_EVENT_BUFFER_BYTES",
    "EVENT_OVERHEAD",
    "BufferStatistics",
    "EventHub",
    "Subscription",
    "event_cost",
]

_log = logging.getLogger(__name__)

E = TypeVar("E", bound=RoomEvent)

DEFAULT_EVENT_BUFFER_BYTES: Final = 16 * 1024 * 1024
"""Bytes of events one subscriber may hold by default (``RoomOptions.event_buffer_bytes``)."""
EVENT_OVERHEAD: Final = 320
"""Bytes charged for every event besides the length of its payload: the event and packet
objects, the headers of the payload's bytes and strings, and its place in the buffer
(measured with tracemalloc: about 300 bytes for a `DataReceived` with a topic)."""


def event_cost(event: RoomEvent) -> int:
    """The bytes ``event`` is charged in a subscriber's buffer: `EVENT_OVERHEAD` plus the
    length of what it carries that nothing else holds (a data packet's payload, topic and
    sender identity; transcription texts; old and new names, metadata, attributes).
    Participants and publications are shared with the room's state and cost nothing here.
    Lengths, not ``sys.getsizeof``: this runs once per data packet, and is an estimate
    (a string of non-ASCII characters takes up to four bytes per character)."""
    if type(event) is DataReceived:  # the hot path: one per data packet
        packet = event.packet
        topic = packet.topic
        return (EVENT_OVERHEAD + len(packet.data) + len(packet.participant_identity)
                + (len(topic) if topic else 0))
    match event:
        case SipDTMFReceived(dtmf=dtmf):
            return EVENT_OVERHEAD + len(dtmf.digit) + len(dtmf.participant_identity)
        case TranscriptionReceived(segments=segments):
            return EVENT_OVERHEAD + sum(EVENT_OVERHEAD + len(s.id) + len(s.text)
                                        + len(s.language) for s in segments)
        case (RoomMetadataChanged(old_metadata=old, new_metadata=new)
              | ParticipantMetadataChanged(old_metadata=old, new_metadata=new)
              | ParticipantNameChanged(old_name=old, new_name=new)):
            return EVENT_OVERHEAD + len(old) + len(new)
        case ParticipantAttributesChanged(changed_attributes=changed):
            return EVENT_OVERHEAD + sum(EVENT_OVERHEAD // 2 + len(k) + len(v)
                                        for k, v in changed.items())
        case _:
            return EVENT_OVERHEAD


class Subscription(Generic[E]):
    """One subscriber's view of the room's events: an async iterator (and context manager).

    Created by `Room.events`; it receives every event published after its creation that
    matches its types. Iteration ends after `Disconnected`. ``aclose()`` (or leaving
    ``async with``) unsubscribes early. Owned by the code iterating it: the hub holds it
    only weakly, so dropping it unsubscribes too.
    """

    def __init__(self, types: tuple[type[RoomEvent], ...], buffer_size: int | None,
                 buffer_bytes: int) -> None:
        self._buffer: BoundedBuffer[RoomEvent] = BoundedBuffer(
            max_items=buffer_size, max_bytes=buffer_bytes, types=types,
            what="an events() subscriber", log=_log)
        self._reported = False

    def __aiter__(self) -> AsyncIterator[E]:
        return self

    async def __anext__(self) -> E:
        """The next event. Cancelling it loses nothing: the event stays buffered."""
        try:
            event = await self._buffer.get()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        except Overflow as overflow:
            if self._reported:  # raised once; then the iterator is simply over
                raise StopAsyncIteration from None
            self._reported = True
            raise EventStreamOverflowError(_overflow_message(overflow)) from None
        return event  # type: ignore[return-value]

    def statistics(self) -> BufferStatistics:
        """What this subscription holds (events, accounted bytes), held at most, may hold."""
        return self._buffer.statistics()

    async def aclose(self) -> None:
        """Unsubscribe; pending events are discarded."""
        self._buffer.close()

    async def __aenter__(self) -> Subscription[E]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _overflow_message(overflow: Overflow) -> str:
    if overflow.limit == "items":
        return (f"this events() subscriber fell more than {overflow.max_items} events "
                f"behind and was cut off (RoomOptions.event_buffer_size)")
    return (f"this events() subscriber fell more than {overflow.max_bytes:,} bytes behind "
            f"({overflow.items} events) and was cut off (RoomOptions.event_buffer_bytes)")


def _check_limit(name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int" + (" or None" if optional else ""))


class EventHub:
    """Owns the subscriptions of one room. Synchronous and I/O-free: safe to call anywhere.

    ``buffer_bytes`` bounds each subscription by the `event_cost` of what it holds;
    ``buffer_size``, if not None, also bounds the number of events it holds.
    """

    def __init__(self, buffer_size: int | None = None,
                 buffer_bytes: int = DEFAULT_EVENT_BUFFER_BYTES) -> None:
        _check_limit("buffer_size", buffer_size, optional=True)
        _check_limit("buffer_bytes", buffer_bytes, optional=False)
        self._buffer_size = buffer_size
        self._buffer_bytes = buffer_bytes
        self._subs: Fanout[RoomEvent] = Fanout()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(self, *types: type[E], buffer_bytes: int | None = None) -> Subscription[E]:
        """A new subscription to the events (of ``types``, or all) published from now on.

        ``buffer_bytes`` overrides the hub's byte budget for this subscription alone.
        """
        for t in types:
            if not (isinstance(t, type) and issubclass(t, RoomEvent)):
                raise TypeError(f"events() takes RoomEvent subclasses, not {t!r}")
        _check_limit("buffer_bytes", buffer_bytes, optional=True)
        sub: Subscription[E] = Subscription(
            types, self._buffer_size,
            self._buffer_bytes if buffer_bytes is None else buffer_bytes)
        if self._closed:
            sub._buffer.end()
        else:
            self._subs.add(sub._buffer)
        return sub

    def publish(self, event: RoomEvent) -> None:
        """Deliver ``event`` to every subscriber, in call order; never blocks."""
        if self._closed:
            _log.debug("event after close dropped: %r", event)
            return
        if len(self._subs):
            # The last event always fits: whoever kept up learns how the room ended.
            final = type(event) is Disconnected
            self._subs.publish(event, 0 if final else event_cost(event), force=final)

    def close(self) -> None:
        """End every subscription (after what each has buffered)."""
        self._closed = True
        self._subs.end()
