"""One subscriber's bounded buffer, and a weak fan-out over many of them.

This is the pattern behind ``Room.events()``, ``Room.text_streams()`` /
``Room.byte_streams()`` and every incoming stream reader. Their producer is the room's own
loop (the signalling reader, or the data-channel callback), which must never wait for a
consumer: it also answers keepalives, and one slow subscriber must not hold up the
others. So:

- A `BoundedBuffer` never blocks its producer. It holds at most ``max_items`` items and
  ``max_bytes`` accounted bytes (each item is charged what the producer says it costs).
  An item that would go past either limit while the consumer has a backlog *cuts the
  subscriber off*: the buffer takes nothing more, and its consumer gets every item it
  had, then `Overflow`. Nothing is dropped silently. An item that goes straight to a
  waiting consumer, or into an empty buffer, is always taken (so a single item larger
  than ``max_bytes`` still gets through), and a *forced* item (the last one, such as
  ``Disconnected`` or a stream's end) is taken whatever the limits.
- A `Fanout` holds its subscribers' buffers weakly, so a subscriber its user dropped
  (``break`` out of ``async for``) is collected and unsubscribed instead of filling up.
  Its owner object (a `Subscription`, a reader) holds the buffer; nothing else should.

Ownership: the producer side (`put`, `end`) belongs to whoever publishes (a hub, a stream
manager), the consumer side (`get`, `close`) to the object its user iterates. Both run
on the same event loop; nothing here is thread-safe, and nothing but `get` awaits.
"""

from __future__ import annotations

import enum
import logging
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["BoundedBuffer", "BufferStatistics", "Fanout", "Overflow"]

_log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BufferStatistics:
    """What one subscriber's buffer holds now, at most so far, and may hold.

    ``items`` and ``bytes`` count what waits to be read and is charged to the limits
    (the accounted size, not a measurement of memory); ``peak_items`` / ``peak_bytes`` are
    the most it has held at once. ``max_items`` / ``max_bytes`` are the limits (None: no
    such limit). ``overflowed``: the subscriber was cut off.
    """

    items: int
    bytes: int
    peak_items: int
    peak_bytes: int
    max_items: int | None
    max_bytes: int | None
    overflowed: bool


class Overflow(Exception):
    """Raised by `BoundedBuffer.get` after the buffered items, once the subscriber was cut
    off. ``limit`` says which limit it went past; ``items`` / ``nbytes`` what it held then
    (the item that did not fit excluded). Its users turn it into their own public error."""

    def __init__(self, limit: Literal["items", "bytes"], items: int, nbytes: int,
                 max_items: int | None, max_bytes: int | None) -> None:
        self.limit: Literal["items", "bytes"] = limit
        self.items = items
        self.nbytes = nbytes
        self.max_items = max_items
        self.max_bytes = max_bytes
        super().__init__(f"fell behind by {items} items ({nbytes} bytes) and was cut off")


class _State(enum.Enum):
    OPEN = "open"  # takes items
    ENDED = "ended"  # the producer is done: the rest is read, then EndOfStream
    OVERFLOWED = "overflowed"  # cut off: the rest is read, then Overflow
    CLOSED = "closed"  # the consumer left: everything is discarded


class BoundedBuffer(Generic[T]):
    """One subscriber's queue: never blocks its producer, bounded, loud when overrun.

    ``max_items`` / ``max_bytes``: the limits (None: none of that kind). ``types``: take
    only instances of these (others are skipped without counting); empty means all.
    ``what`` names the subscriber in the warning logged on ``log`` when it is cut off.
    """

    __slots__ = ("__weakref__", "_bytes", "_costs", "_count", "_items", "_log", "_overflow",
                 "_peak_bytes", "_peak_items", "_state", "_types", "_waiting", "_wakeup",
                 "_what", "max_bytes", "max_items")

    def __init__(self, *, max_items: int | None = None, max_bytes: int | None = None,
                 types: tuple[type, ...] = (), what: str = "subscriber",
                 log: logging.Logger = _log) -> None:
        for name, limit in (("max_items", max_items), ("max_bytes", max_bytes)):
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                      or limit < 1):
                raise ValueError(f"{name} must be a positive int or None")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._types = types
        self._what = what
        self._log = log
        # Each item with the bytes it was charged, -1 for one not charged (forced, or handed
        # straight to a waiting consumer). Two deques rather than one of tuples: no object
        # per item for the garbage collector to walk while a burst waits here.
        self._items: deque[T] = deque()
        self._costs: deque[int] = deque()
        self._count = 0
        self._bytes = 0
        self._peak_items = 0
        self._peak_bytes = 0
        self._waiting = 0  # consumers blocked in get()
        self._wakeup: anyio.Event | None = None
        self._state = _State.OPEN
        self._overflow: Overflow | None = None

    # -- producer side -----------------------------------------------------------------

    @property
    def open(self) -> bool:
        """Whether it still takes items (False once ended, cut off or closed)."""
        return self._state is _State.OPEN

    def put(self, item: T, nbytes: int = 0, force: bool = False) -> bool:
        """Queue ``item``, charged ``nbytes``; never blocks.

        Returns False once this buffer takes nothing more (the consumer left, the producer
        ended it, or it was cut off, possibly by this very item): drop it from the fan-out.
        An item of the wrong type is skipped and returns True. ``force``: take it whatever
        the limits (and charge nothing), for an item that ends the stream.
        """
        if self._state is not _State.OPEN:
            return False
        if self._types and not isinstance(item, self._types):
            return True
        if force or len(self._items) < self._waiting:
            # Forced, or handed straight to a consumer that is waiting for it: it does not
            # wait in the buffer, so it is not charged (as with anyio's memory streams).
            self._items.append(item)
            self._costs.append(-1)
        else:
            count, total = self._count + 1, self._bytes + nbytes
            # Only a backlog overflows: into an empty buffer, even an item above the whole
            # budget goes (a consumer that keeps up gets it, whatever its size).
            if self._count and ((self.max_items is not None and count > self.max_items)
                                or (self.max_bytes is not None and total > self.max_bytes)):
                self._cut_off("items" if self.max_items is not None and count > self.max_items
                              else "bytes")
                return False
            self._items.append(item)
            self._costs.append(nbytes)
            self._count, self._bytes = count, total
            if count > self._peak_items:
                self._peak_items = count
            if total > self._peak_bytes:
                self._peak_bytes = total
        self._wake()
        return True

    def end(self) -> None:
        """No more items: the consumer gets what is buffered, then the end. Idempotent."""
        if self._state is _State.OPEN:
            self._state = _State.ENDED
            self._wake()

    def _cut_off(self, limit: Literal["items", "bytes"]) -> None:
        self._overflow = Overflow(limit, self._count, self._bytes, self.max_items,
                                  self.max_bytes)
        self._state = _State.OVERFLOWED
        self._log.warning("%s fell behind by %d items (%d bytes); cutting it off",
                          self._what, self._count, self._bytes)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    # -- consumer side -----------------------------------------------------------------

    async def get(self) -> T:
        """The next item, waiting for one if need be.

        After the last buffered item: raises `anyio.EndOfStream` if the producer ended
        the buffer or the consumer closed it, `Overflow` (every time) if it was cut off.
        Like anyio's ``receive()`` it is a checkpoint even when an item is ready, and
        cancelling it loses nothing: the item stays for the next call.
        """
        await anyio.lowlevel.checkpoint()
        while not self._items:
            if self._state is _State.OVERFLOWED:
                o = self._overflow  # a fresh exception each time: no growing traceback
                assert o is not None
                raise Overflow(o.limit, o.items, o.nbytes, o.max_items, o.max_bytes)
            if self._state is not _State.OPEN:
                raise anyio.EndOfStream
            if self._wakeup is None:
                self._wakeup = anyio.Event()
            wakeup = self._wakeup
            self._waiting += 1
            try:
                await wakeup.wait()
            finally:
                self._waiting -= 1
        nbytes = self._costs.popleft()
        if nbytes >= 0:
            self._count -= 1
            self._bytes -= nbytes
        return self._items.popleft()

    def close(self) -> None:
        """The consumer leaves: what is buffered is discarded, the producer is told (its
        next `put` returns False) and the fan-out forgets it. Idempotent."""
        self._state = _State.CLOSED
        self._items.clear()
        self._costs.clear()
        self._count = self._bytes = 0
        self._wake()

    @property
    def overflowed(self) -> bool:
        return self._overflow is not None

    def statistics(self) -> BufferStatistics:
        return BufferStatistics(
            items=self._count, bytes=self._bytes, peak_items=self._peak_items,
            peak_bytes=self._peak_bytes, max_items=self.max_items, max_bytes=self.max_bytes,
            overflowed=self._overflow is not None)

    def __repr__(self) -> str:
        return (f"<BoundedBuffer {self._what} {self._state.value} items={self._count} "
                f"bytes={self._bytes}>")


class Fanout(Generic[T]):
    """The buffers of one source's subscribers, held weakly, in subscription order.

    `publish` offers an item to each; a buffer whose owner was collected, or that stopped
    taking items (closed, ended, cut off), is forgotten. Never blocks.
    """

    __slots__ = ("_refs",)

    def __init__(self) -> None:
        self._refs: list[weakref.ref[BoundedBuffer[T]]] = []

    def add(self, buffer: BoundedBuffer[T]) -> None:
        self._refs.append(weakref.ref(buffer))

    def publish(self, item: T, nbytes: int = 0, *, force: bool = False) -> None:
        """`BoundedBuffer.put` ``item`` into every live buffer, in subscription order."""
        alive = []
        for ref in self._refs:
            buffer = ref()
            if buffer is not None and buffer.put(item, nbytes, force):
                alive.append(ref)
        self._refs = alive

    def live(self) -> list[BoundedBuffer[T]]:
        """The buffers that still take items (the others are forgotten)."""
        buffers = [b for ref in self._refs if (b := ref()) is not None and b.open]
        self._refs = [weakref.ref(b) for b in buffers]
        return buffers

    def end(self, last: T | None = None) -> None:
        """Give every live buffer ``last`` (forced) if not None, end it, forget them all."""
        for buffer in self.live():
            if last is not None:
                buffer.put(last, force=True)
            buffer.end()
        self._refs.clear()

    def __len__(self) -> int:
        return len(self._refs)

    def __iter__(self) -> Iterator[BoundedBuffer[T]]:
        return iter(self.live())
