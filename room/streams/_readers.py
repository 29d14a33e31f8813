"""Incoming streams as their users see them: readers, and per-topic subscriptions.

A `StreamSubscription` (``Room.text_streams(topic)`` / ``byte_streams(topic)``) is an
async iterator of readers; each reader is an async iterator of one stream's chunks. Both
are owned by the user code iterating them and fed, without ever blocking, by the
`StreamManager` through a `room._bounded.BoundedBuffer` each: a reader that falls more
than its budget behind, or a subscription that leaves too many streams unclaimed, is cut
off with `StreamError` after what it holds (see docs/streams.md).
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Final, Generic, Self, TypeVar

import anyio

from room._bounded import BoundedBuffer, BufferStatistics, Overflow
from room.streams._wire import ByteStreamInfo, InfoT, StreamError, TextStreamInfo

__all__ = [
    "CHUNK_OVERHEAD",
    "DEFAULT_PENDING_STREAMS",
    "DEFAULT_READER_BUFFER",
    "DEFAULT_READER_BUFFER_BYTES",
    "ByteStreamReader",
    "StreamSubscription",
    "TextStreamReader",
    "chunk_cost",
]

_log = logging.getLogger(__name__)

DEFAULT_READER_BUFFER_BYTES: Final = 16 * 1024 * 1024
"""Bytes of chunks a reader may hold before it is cut off, as charged by `chunk_cost`
(a room's readers get ``RoomOptions.stream_buffer_bytes``)."""
DEFAULT_READER_BUFFER: Final[int | None] = None
"""Chunks a reader may hold before it is cut off: no such limit by default (the byte
budget bounds it); ``StreamManager.reader_buffer`` sets one."""
DEFAULT_PENDING_STREAMS: Final = 64
"""New streams a ``text_streams()``/``byte_streams()`` subscription buffers before it is
cut off."""
CHUNK_OVERHEAD: Final = 64
"""Bytes charged for each buffered chunk besides its length: the bytes object's header
and its place in the buffer."""


def chunk_cost(piece: bytes) -> int:
    """What one buffered chunk is charged against its reader's byte budget."""
    return len(piece) + CHUNK_OVERHEAD


@dataclass(frozen=True, slots=True)
class _End:
    """The last item a reader's buffer holds: how the stream ended."""

    error: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


_Item = bytes | _End
ChunkT = TypeVar("ChunkT", str, bytes)


class _Reader(Generic[InfoT, ChunkT]):
    """One consumer's view of one incoming stream (see `TextStreamReader`)."""

    def __init__(self, info: InfoT, buffer: BoundedBuffer[_Item]) -> None:
        self._info: InfoT = info
        self._buffer = buffer
        self._ended = False  # the stream's end (or error) has been reached
        self._error: str | None = None

    @property
    def info(self) -> InfoT:
        """The stream's description; its ``attributes`` gain the trailer's at the end."""
        return self._info

    def __aiter__(self) -> AsyncIterator[ChunkT]:
        return self

    async def __anext__(self) -> ChunkT:
        """The next chunk. Raises `StreamError` (every time) if the stream did not
        complete, after the chunks that did arrive. Cancelling it loses nothing: the
        chunk stays buffered for the next call."""
        while True:
            if self._ended:
                if self._error is not None:
                    raise StreamError(self._error)
                raise StopAsyncIteration
            try:
                item = await self._buffer.get()
            except anyio.EndOfStream:
                # Only `aclose` (or a bug) gets here: the end marker always fits.
                self._finish("this reader was closed before the stream ended")
                continue
            except Overflow as overflow:
                self._finish(_overflow_message(overflow))
                continue
            if isinstance(item, _End):
                if item.attributes:
                    self._info = replace(self._info, attributes={
                        **self._info.attributes, **item.attributes})
                self._finish(item.error)
                tail = self._flush() if item.error is None else None
                if tail:
                    return tail
                continue
            chunk = self._decode(item)
            if chunk:
                return chunk

    def _finish(self, error: str | None) -> None:
        self._ended = True
        self._error = error
        self._buffer.close()

    def _decode(self, data: bytes) -> ChunkT:
        raise NotImplementedError

    def _flush(self) -> ChunkT | None:
        return None

    async def read_all(self) -> ChunkT:
        """Everything (still) to come, joined; raises `StreamError` if the stream does not
        complete. Cancelling it discards what it had gathered."""
        raise NotImplementedError

    def statistics(self) -> BufferStatistics:
        """What this reader holds (chunks, accounted bytes), held at most, may hold."""
        return self._buffer.statistics()

    async def aclose(self) -> None:
        """Stop reading: the rest of the stream is discarded (other readers unaffected)."""
        if not self._ended:
            self._finish("this reader was closed before the stream ended")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        info = self._info
        return (f"<{type(self).__name__} id={info.stream_id!r} topic={info.topic!r} "
                f"from={info.sender_identity!r}>")


class TextStreamReader(_Reader[TextStreamInfo, str]):
    """An incoming text stream: async iterator of str chunks, ``await read_all()``.

    Handed out by ``Room.text_streams(topic)``; the user code iterating it owns it.
    Chunks are decoded incrementally, so a character whose UTF-8 bytes a sender split
    across chunks comes out whole. Invalid UTF-8 ends the stream with `StreamError`.
    """

    def __init__(self, info: TextStreamInfo, buffer: BoundedBuffer[_Item]) -> None:
        super().__init__(info, buffer)
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def _decode(self, data: bytes) -> str:
        try:
            return str(self._decoder.decode(data))
        except UnicodeDecodeError as exc:
            self._finish(f"the stream is not valid UTF-8: {exc.reason}")
            return ""

    def _flush(self) -> str | None:
        try:
            return str(self._decoder.decode(b"", final=True))
        except UnicodeDecodeError:
            self._error = "the stream ended in the middle of a UTF-8 character"
            return None

    async def read_all(self) -> str:
        """The rest of the text, joined; raises `StreamError` if the stream does not
        complete. Cancelling it discards what it had gathered."""
        return "".join([chunk async for chunk in self])


class ByteStreamReader(_Reader[ByteStreamInfo, bytes]):
    """An incoming byte stream (a file, say): async iterator of bytes chunks, ``read_all()``.

    Handed out by ``Room.byte_streams(topic)``; the user code iterating it owns it.
    Iterate it to handle a large stream chunk by chunk in bounded memory.
    """

    def _decode(self, data: bytes) -> bytes:
        return data

    async def read_all(self) -> bytes:
        """The rest of the bytes, joined (all in memory: iterate instead for large
        streams); raises `StreamError` if the stream does not complete. Cancelling it
        discards what it had gathered."""
        return b"".join([chunk async for chunk in self])


ReaderT = TypeVar("ReaderT", TextStreamReader, ByteStreamReader)


class StreamSubscription(Generic[ReaderT]):
    """The incoming streams of one kind on one topic, from the time of subscribing.

    An async iterator of readers, made by ``Room.text_streams(topic)`` or
    ``Room.byte_streams(topic)``; owned by whoever iterates it. Every subscription on a
    topic gets its own reader for each stream. It ends when the room closes. If more than
    ``DEFAULT_PENDING_STREAMS`` new streams wait in it unclaimed, it is cut off: it raises
    `StreamError` after the readers it holds. ``aclose()`` (or leaving ``async with``, or
    dropping it) unsubscribes.
    """

    def __init__(self, topic: str, limit: int) -> None:
        self.topic = topic
        self._limit = limit
        self._buffer: BoundedBuffer[ReaderT] = BoundedBuffer(
            max_items=limit, what=f"the stream subscription on topic {topic!r}", log=_log)
        self._reported = False

    def __aiter__(self) -> AsyncIterator[ReaderT]:
        return self

    async def __anext__(self) -> ReaderT:
        """The next incoming stream's reader. Cancelling it loses nothing."""
        try:
            return await self._buffer.get()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        except Overflow:
            if self._reported:
                raise StopAsyncIteration from None
            self._reported = True
            raise StreamError(f"this subscription to topic {self.topic!r} left more "
                              f"than {self._limit} streams unclaimed") from None

    async def aclose(self) -> None:
        """Unsubscribe; readers not yet claimed are discarded."""
        self._buffer.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


def _overflow_message(overflow: Overflow) -> str:
    if overflow.limit == "items":
        return (f"this reader fell more than {overflow.max_items} chunks behind the stream "
                f"and was cut off")
    return (f"this reader fell more than {overflow.max_bytes:,} bytes behind the stream "
            f"({overflow.items} chunks) and was cut off (RoomOptions.stream_buffer_bytes)")
