"""Data streams (LiveKit's text and byte streams): header, chunks, trailer over data packets.

A stream is one ``DataStream.Header`` packet, ``DataStream.Chunk`` packets numbered from 0
(at most `CHUNK_SIZE` bytes of content each; text is cut on UTF-8 character boundaries),
and one ``DataStream.Trailer`` whose non-empty ``reason`` means the sender gave up. Every
packet is reliable and carries the stream's ``destination_identities``.

Ownership: `StreamManager` is created and owned by a connected `Room`, which feeds it the
incoming stream packets (`StreamManager.handle_packet`, on the room's loop), tells it who
left (`participant_left`) and when the room ends (`close`). Writers are owned by the task
that opened them (``async with``); readers and subscriptions are owned by the user code
iterating them. The manager never blocks the room's loop: each subscription and each
reader has its own bounded memory-object stream, and one that fills up because nobody
reads it is *cut off* with `StreamError` rather than silently losing data.
"""

from __future__ import annotations

import codecs
import logging
import math
import mimetypes
import os
import time
import uuid
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Final, Generic, Literal, Self, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from livekit.protocol import models

from room.errors import ConnectionClosedError, RoomError

__all__ = [
    "BYTE_MIME_TYPE",
    "CHUNK_SIZE",
    "DEFAULT_PENDING_STREAMS",
    "DEFAULT_READER_BUFFER",
    "TEXT_MIME_TYPE",
    "ByteStreamInfo",
    "ByteStreamReader",
    "ByteStreamWriter",
    "StreamError",
    "StreamManager",
    "StreamSubscription",
    "TextStreamInfo",
    "TextStreamReader",
    "TextStreamWriter",
    "utf8_chunks",
]

_log = logging.getLogger(__name__)

SendPacket = Callable[[models.DataPacket], Awaitable[None]]

CHUNK_SIZE: Final = 15_000
"""The most content bytes one chunk carries (as LiveKit's SDKs send)."""
TEXT_MIME_TYPE: Final = "text/plain"
BYTE_MIME_TYPE: Final = "application/octet-stream"
DEFAULT_READER_BUFFER: Final = 256
"""Chunks (at most `CHUNK_SIZE` bytes each) a reader buffers before it is cut off."""
DEFAULT_PENDING_STREAMS: Final = 64
"""New streams a ``text_streams()``/``byte_streams()`` subscription buffers before it is
cut off."""

# How long the closing or aborting trailer may take when we send it on the way out of a
# cancelled or failed block (shielded, so it must be bounded).
_TRAILER_TIMEOUT = 5.0

_Kind = Literal["text", "byte"]


class StreamError(RoomError):
    """A data stream did not complete: the sender aborted it or left, the room closed,
    chunks went missing or did not match the announced length, or the reader fell too
    far behind. Raised by a reader after the chunks it did receive."""


# -- stream descriptions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextStreamInfo:
    """What the header said about a text stream (attributes also include the trailer's)."""

    stream_id: str
    topic: str
    sender_identity: str
    timestamp: int
    """Milliseconds since the Unix epoch, as the sender's clock had it."""
    total_length: int | None
    """Announced length in UTF-8 bytes, if the sender knew it up front."""
    attributes: dict[str, str] = field(default_factory=dict)
    mime_type: str = TEXT_MIME_TYPE
    reply_to_stream_id: str = ""
    attached_stream_ids: tuple[str, ...] = ()
    generated: bool = False

    @property
    def size(self) -> int | None:
        """`total_length`, under the name LiveKit's Python SDK uses."""
        return self.total_length


@dataclass(frozen=True, slots=True)
class ByteStreamInfo:
    """What the header said about a byte stream (attributes also include the trailer's)."""

    stream_id: str
    topic: str
    sender_identity: str
    timestamp: int
    """Milliseconds since the Unix epoch, as the sender's clock had it."""
    total_length: int | None
    """Announced length in bytes, if the sender knew it up front."""
    attributes: dict[str, str] = field(default_factory=dict)
    mime_type: str = BYTE_MIME_TYPE
    name: str = ""

    @property
    def size(self) -> int | None:
        """`total_length`, under the name LiveKit's Python SDK uses."""
        return self.total_length


Info = TextStreamInfo | ByteStreamInfo
InfoT = TypeVar("InfoT", TextStreamInfo, ByteStreamInfo)


def _info_from_header(header: models.DataStream.Header, sender: str) -> Info:
    total = header.total_length if header.HasField("total_length") else None
    if header.WhichOneof("content_header") == "text_header":
        text = header.text_header
        return TextStreamInfo(
            stream_id=header.stream_id, topic=header.topic, sender_identity=sender,
            timestamp=header.timestamp, total_length=total, attributes=dict(header.attributes),
            mime_type=header.mime_type or TEXT_MIME_TYPE,
            reply_to_stream_id=text.reply_to_stream_id,
            attached_stream_ids=tuple(text.attached_stream_ids), generated=text.generated)
    return ByteStreamInfo(
        stream_id=header.stream_id, topic=header.topic, sender_identity=sender,
        timestamp=header.timestamp, total_length=total, attributes=dict(header.attributes),
        mime_type=header.mime_type or BYTE_MIME_TYPE, name=header.byte_header.name)


# -- readers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _End:
    """The last item a reader's buffer holds: how the stream ended."""

    error: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


_Item = bytes | _End
ChunkT = TypeVar("ChunkT", str, bytes)


class _Reader(Generic[InfoT, ChunkT]):
    """One consumer's view of one incoming stream (see `TextStreamReader`)."""

    def __init__(self, info: InfoT, receive: MemoryObjectReceiveStream[_Item]) -> None:
        self._info: InfoT = info
        self._receive = receive
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
                item = await self._receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                # Only `aclose` (or a bug) gets here: the end marker always fits.
                self._finish("this reader was closed before the stream ended")
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
        self._receive.close()

    def _decode(self, data: bytes) -> ChunkT:
        raise NotImplementedError

    def _flush(self) -> ChunkT | None:
        return None

    async def read_all(self) -> ChunkT:
        """Everything (still) to come, joined; raises `StreamError` if the stream does not
        complete. Cancelling it discards what it had gathered."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Stop reading: the rest of the stream is discarded (other readers unaffected)."""
        if not self._ended:
            self._finish("this reader was closed before the stream ended")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # A reader dropped unread must not keep buffering (nor warn about its stream).
        self._receive.close()

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

    def __init__(self, info: TextStreamInfo, receive: MemoryObjectReceiveStream[_Item]) -> None:
        super().__init__(info, receive)
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
        self._send: MemoryObjectSendStream[ReaderT]
        self._receive: MemoryObjectReceiveStream[ReaderT]
        self._send, self._receive = anyio.create_memory_object_stream[ReaderT](limit)
        self._overflowed = False

    def _wants(self) -> bool:
        """Whether a new stream should get a reader here (False: drop this subscription)."""
        stats = self._send.statistics()
        if stats.open_receive_streams == 0 or self._overflowed:
            self._send.close()
            return False
        if stats.current_buffer_used >= self._limit:
            _log.warning("stream subscriber on topic %r left %d streams unclaimed; "
                         "cutting it off", self.topic, stats.current_buffer_used)
            self._overflowed = True
            self._send.close()
            return False
        return True

    def _offer(self, reader: ReaderT) -> None:
        self._send.send_nowait(reader)

    def _end(self) -> None:
        self._send.close()

    def __aiter__(self) -> AsyncIterator[ReaderT]:
        return self

    async def __anext__(self) -> ReaderT:
        """The next incoming stream's reader. Cancelling it loses nothing."""
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()
            if self._overflowed:
                self._overflowed = False
                raise StreamError(f"this subscription to topic {self.topic!r} left more "
                                  f"than {self._limit} streams unclaimed") from None
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Unsubscribe; readers not yet claimed are discarded."""
        self._receive.close()
        self._send.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def __del__(self) -> None:
        self._receive.close()
        self._send.close()


# -- writers ---------------------------------------------------------------------------


def utf8_chunks(data: bytes, limit: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Cut valid UTF-8 ``data`` into pieces of at most ``limit`` bytes, never inside a
    character (a piece ends before any continuation byte, ``0b10xxxxxx``)."""
    if limit < 4:
        raise ValueError("limit must be at least 4 bytes (one UTF-8 character)")
    start, size = 0, len(data)
    while start < size:
        end = min(start + limit, size)
        while end < size and data[end] & 0xC0 == 0x80:
            end -= 1
        yield data[start:end]
        start = end


def _byte_chunks(data: bytes | bytearray | memoryview, limit: int = CHUNK_SIZE
                 ) -> Iterator[bytes]:
    view = memoryview(data).cast("B")
    for start in range(0, len(view), limit):
        yield bytes(view[start:start + limit])


class _Writer(Generic[InfoT]):
    """The sending half of one stream: header, numbered chunks, trailer."""

    def __init__(self, send_packet: SendPacket, header: models.DataStream.Header,
                 destinations: list[str], info: InfoT) -> None:
        self._send_packet = send_packet
        self._header = header
        self._destinations = destinations
        self._info: InfoT = info
        self._lock = anyio.Lock()
        self._next_index = 0
        self._written = 0
        self._opened = False
        self._closed = False
        self._broken = False  # a send was interrupted: the receiver's view is unknown

    @property
    def info(self) -> InfoT:
        """What the header announced (``sender_identity`` is ours)."""
        return self._info

    @property
    def stream_id(self) -> str:
        return self._info.stream_id

    def _packet(self) -> models.DataPacket:
        return models.DataPacket(kind=models.DataPacket.Kind.RELIABLE,
                                 destination_identities=self._destinations)

    async def _send(self, packet: models.DataPacket) -> None:
        try:
            await self._send_packet(packet)
        except BaseException:
            self._broken = True
            raise

    async def _open(self) -> None:
        async with self._lock:
            packet = self._packet()
            packet.stream_header.CopyFrom(self._header)
            await self._send(packet)
            self._opened = True

    def _check_writable(self) -> None:
        if self._closed:
            raise RuntimeError("this stream is closed; open a new one to send more")
        if not self._opened:
            raise RuntimeError("this stream is not open; use it inside `async with`")
        if self._broken:
            raise StreamError("an earlier send on this stream failed or was cancelled; "
                              "the stream is unusable")

    async def _write_chunks(self, chunks: Iterator[bytes], size: int) -> None:
        async with self._lock:
            self._check_writable()
            total = self._header.total_length if self._header.HasField("total_length") else None
            if total is not None and self._written + size > total:
                raise ValueError(f"writing {size} more bytes would exceed the announced "
                                 f"total_length of {total} ({self._written} already written)")
            for content in chunks:
                packet = self._packet()
                packet.stream_chunk.stream_id = self.stream_id
                packet.stream_chunk.chunk_index = self._next_index
                packet.stream_chunk.content = content
                await self._send(packet)
                self._next_index += 1
                self._written += len(content)

    async def aclose(self, *, reason: str = "",
                     attributes: Mapping[str, str] | None = None) -> None:
        """Send the trailer now (``reason`` non-empty: the stream was aborted; receivers
        then get `StreamError` with it). ``attributes`` reach the receivers' ``info``.
        Idempotent. Leaving ``async with`` calls it. If cancelled, the trailer may or may
        not have been sent, and the stream counts as closed."""
        if not isinstance(reason, str):
            raise TypeError("reason must be a str")
        attrs = _attributes(attributes)
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._opened:
                return
            packet = self._packet()
            packet.stream_trailer.stream_id = self.stream_id
            packet.stream_trailer.reason = reason
            packet.stream_trailer.attributes.update(attrs)
            await self._send_packet(packet)

    async def _finish(self) -> None:
        """Close normally, or with a reason if fewer bytes than announced were written."""
        if self._broken:
            await self._abort("a send on this stream failed")
            return
        total = self._header.total_length if self._header.HasField("total_length") else None
        if total is not None and self._written < total and not self._closed:
            message = f"only {self._written} of the announced {total} bytes were written"
            await self._abort(f"incomplete: {message}")
            raise ValueError(f"stream {self.stream_id}: {message}")
        await self.aclose()

    async def _abort(self, reason: str) -> None:
        """Best effort, bounded and shielded: tell receivers the stream is over."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_TRAILER_TIMEOUT):
            try:
                await self.aclose(reason=reason)
            except Exception as exc:  # the room may be gone: nothing more to tell anyone
                _log.debug("could not send the trailer of stream %s: %r", self.stream_id, exc)


class TextStreamWriter(_Writer[TextStreamInfo]):
    """An outgoing text stream: ``await write(str)``; closed by its context manager.

    Made by ``local_participant.stream_text(...)``; owned by the task in the ``async
    with`` block. Each write is cut into chunks of at most `CHUNK_SIZE` UTF-8 bytes on
    character boundaries. Writes are serialized (one at a time, in call order).
    """

    async def write(self, text: str) -> None:
        """Send ``text`` (chunked). If cancelled, part of it may have been sent and the
        stream is unusable: later writes raise `StreamError`, and leaving the block
        aborts the stream."""
        if not isinstance(text, str):
            raise TypeError(f"write() takes a str, not {type(text).__name__}")
        data = text.encode()
        await self._write_chunks(utf8_chunks(data), len(data))


class ByteStreamWriter(_Writer[ByteStreamInfo]):
    """An outgoing byte stream: ``await write(bytes)``; closed by its context manager.

    Made by ``local_participant.stream_bytes(...)``; owned by the task in the ``async
    with`` block. Each write is cut into chunks of at most `CHUNK_SIZE` bytes. Writes are
    serialized (one at a time, in call order).
    """

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (chunked). Raises ValueError, sending nothing, if it would exceed
        the announced ``total_length``. If cancelled, part of it may have been sent and the
        stream is unusable: later writes raise `StreamError`, and leaving the block
        aborts the stream."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        size = memoryview(data).nbytes
        await self._write_chunks(_byte_chunks(data), size)


WriterT = TypeVar("WriterT", TextStreamWriter, ByteStreamWriter)


class _WriterContext(Generic[WriterT]):
    """``async with``: send the header on entry, the trailer on exit (abort on error)."""

    def __init__(self, writer: WriterT, is_open: Callable[[], bool]) -> None:
        self._writer: WriterT = writer
        self._is_open = is_open
        self._entered = False

    async def __aenter__(self) -> WriterT:
        if self._entered:
            raise RuntimeError("this stream context can be entered only once")
        self._entered = True
        if not self._is_open():
            raise ConnectionClosedError("the room is closed")
        try:
            await self._writer._open()
        except BaseException as exc:
            # The header may have gone out (cancelled send): tell receivers it is over.
            if self._writer._broken:
                await self._writer._abort(_abort_reason(exc))
            raise
        return self._writer

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            await self._writer._finish()
        else:
            await self._writer._abort(_abort_reason(exc))


def _abort_reason(exc: BaseException) -> str:
    # Receivers see this: the exception's type, never its message (it may be private).
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "the sender cancelled the stream"
    return f"the sender aborted the stream ({type(exc).__name__})"


# -- validation ------------------------------------------------------------------------


def _check_str(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return value


def _attributes(value: Mapping[str, str] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"attributes must be a mapping of str to str, not "
                        f"{type(value).__name__}")
    out = dict(value)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in out.items()):
        raise TypeError("attributes must map str to str")
    return out


def _identities(value: Sequence[str]) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | set | frozenset):
        raise TypeError("destination_identities must be a sequence of identities")
    out = list(value)
    if not all(isinstance(v, str) and v for v in out):
        raise TypeError("destination_identities must be non-empty strs")
    return out


# -- incoming streams ------------------------------------------------------------------


class _Incoming:
    """An incoming stream the manager is reassembling, and the readers it feeds."""

    __slots__ = ("compressed", "decompressor", "limit", "next_index", "received", "sender",
                 "sinks", "stream_id", "total")

    def __init__(self, header: models.DataStream.Header, sender: str, limit: int,
                 sinks: list[MemoryObjectSendStream[_Item]]) -> None:
        self.stream_id = header.stream_id
        self.sender = sender
        self.total: int | None = (header.total_length if header.HasField("total_length")
                                  else None)
        self.limit = limit
        self.sinks = sinks
        self.next_index = 0
        self.received = 0
        self.compressed = header.compression == models.DataStream.CompressionType.DEFLATE_RAW
        self.decompressor = zlib.decompressobj(-zlib.MAX_WBITS) if self.compressed else None

    def feed(self, content: bytes) -> str | None:
        """Deliver ``content`` (decompressed first if need be); an error message if the
        stream has become invalid."""
        for piece in self._pieces(content):
            self.received += len(piece)
            if self.total is not None and self.received > self.total:
                return (f"the stream carried more than the announced {self.total} bytes")
            self._push(piece)
            if not self.sinks:
                break
        return None

    def _pieces(self, content: bytes) -> Iterator[bytes]:
        if self.decompressor is None:
            yield content
            return
        # Bounded output per step: a small compressed chunk may inflate enormously, and
        # readers that fall behind are cut off long before memory is at risk.
        data = content
        while data and self.sinks:
            try:
                piece = self.decompressor.decompress(data, CHUNK_SIZE)
            except zlib.error as exc:
                raise _BadStream(f"the stream's compressed data is corrupt: {exc}") from None
            data = self.decompressor.unconsumed_tail
            if piece:
                yield piece

    def flush(self) -> str | None:
        """At the trailer: deliver what the decompressor still holds."""
        if self.decompressor is None:
            return None
        try:
            rest = self.decompressor.flush()
        except zlib.error as exc:
            return f"the stream's compressed data is corrupt: {exc}"
        self.decompressor = None
        return self.feed(rest) if rest else None

    def _push(self, piece: bytes) -> None:
        alive = []
        for sink in self.sinks:
            stats = sink.statistics()
            if stats.open_receive_streams == 0:  # that reader was closed or dropped
                sink.close()
                continue
            if stats.current_buffer_used >= self.limit:
                _log.warning("reader of stream %s fell %d chunks behind; cutting it off",
                             self.stream_id, stats.current_buffer_used)
                _end_sink(sink, _End(f"this reader fell more than {self.limit} chunks "
                                     "behind the stream and was cut off"))
                continue
            sink.send_nowait(piece)
            alive.append(sink)
        self.sinks = alive

    def end(self, ending: _End) -> None:
        for sink in self.sinks:
            _end_sink(sink, ending)
        self.sinks = []


class _BadStream(Exception):
    """Internal: the incoming stream is invalid (the message says why)."""


def _end_sink(sink: MemoryObjectSendStream[_Item], ending: _End) -> None:
    # Each reader's buffer has one slot more than its limit, kept for this.
    if sink.statistics().open_receive_streams:
        try:
            sink.send_nowait(ending)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            _log.error("could not deliver the end of a stream to a reader")
    sink.close()


class StreamManager:
    """Outgoing and incoming data streams of one room connection.

    ``send_packet`` sends a reliable data packet (the caller sets
    ``destination_identities``); ``handle_packet`` is called, on the room's loop, with
    every incoming packet whose value is ``stream_header``, ``stream_chunk`` or
    ``stream_trailer``. ``local_identity`` names us in the writers' ``info``.

    Receiving: streams on a topic nobody subscribed to (``text_streams`` /
    ``byte_streams``) are ignored, as LiveKit clients do. Each subscriber gets its own
    reader of each stream, with a buffer of ``reader_buffer`` chunks; a reader that
    falls further behind is cut off with `StreamError` (the room never waits for it).

    Sending: compression, inline (single-packet) content and per-stream encryption are
    not used; every stream goes out as header, chunks, trailer.
    """

    def __init__(self, *, send_packet: SendPacket, local_identity: Callable[[], str],
                 reader_buffer: int = DEFAULT_READER_BUFFER,
                 pending_streams: int = DEFAULT_PENDING_STREAMS) -> None:
        if not (isinstance(reader_buffer, int) and 1 <= reader_buffer < math.inf):
            raise ValueError("reader_buffer must be a positive int")
        if not (isinstance(pending_streams, int) and 1 <= pending_streams < math.inf):
            raise ValueError("pending_streams must be a positive int")
        self._send_packet = send_packet
        self._local_identity = local_identity
        self.reader_buffer = reader_buffer
        self.pending_streams = pending_streams
        self._closed = False
        self._open: dict[str, _Incoming] = {}
        # Weak: a subscription the user dropped is collected, which unsubscribes it.
        self._subs: dict[tuple[_Kind, str], list[weakref.ref[StreamSubscription[Any]]]] = {}

    # -- receiving ---------------------------------------------------------------------

    def handle_packet(self, packet: models.DataPacket, sender_identity: str) -> None:
        """Feed one incoming stream packet from ``sender_identity``; never blocks or raises."""
        if self._closed:
            return
        which = packet.WhichOneof("value")
        try:
            if which == "stream_header":
                self._on_header(packet.stream_header, sender_identity)
            elif which == "stream_chunk":
                self._on_chunk(packet.stream_chunk, sender_identity)
            elif which == "stream_trailer":
                self._on_trailer(packet.stream_trailer, sender_identity)
        except Exception:
            # A malformed stream from a peer must not take the room down.
            _log.exception("error while handling a %s from %s", which, sender_identity)

    def participant_left(self, identity: str) -> None:
        """``identity`` left: its unfinished incoming streams end with an error."""
        for stream in [s for s in self._open.values() if s.sender == identity]:
            self._fail(stream, f"{identity} left before the stream ended")

    def close(self) -> None:
        """The room ended: every unfinished reader ends with an error, iterators end."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._open.values()):
            self._fail(stream, "the room closed before the stream ended")
        for refs in self._subs.values():
            for ref in refs:
                sub = ref()
                if sub is not None:
                    sub._end()
        self._subs.clear()

    def text_streams(self, topic: str) -> StreamSubscription[TextStreamReader]:
        """Subscribe to incoming text streams on ``topic`` (see `StreamSubscription`)."""
        return self._subscribe("text", topic)

    def byte_streams(self, topic: str) -> StreamSubscription[ByteStreamReader]:
        """Subscribe to incoming byte streams on ``topic`` (see `StreamSubscription`)."""
        return self._subscribe("byte", topic)

    def _subscribe(self, kind: _Kind, topic: str) -> StreamSubscription[Any]:
        _check_str("topic", topic)
        sub: StreamSubscription[Any] = StreamSubscription(topic, self.pending_streams)
        if self._closed:
            sub._end()
        else:
            self._subs.setdefault((kind, topic), []).append(weakref.ref(sub))
        return sub

    def _subscribers(self, kind: _Kind, topic: str) -> list[StreamSubscription[Any]]:
        refs = self._subs.get((kind, topic), [])
        live = [sub for ref in refs if (sub := ref()) is not None and sub._wants()]
        if live:
            self._subs[(kind, topic)] = [weakref.ref(s) for s in live]
        else:
            self._subs.pop((kind, topic), None)
        return live

    def _on_header(self, header: models.DataStream.Header, sender: str) -> None:
        content = header.WhichOneof("content_header")
        if content is None:
            _log.warning("stream header from %s without a text or byte header ignored",
                         sender)
            return
        kind: _Kind = "text" if content == "text_header" else "byte"
        subs = self._subscribers(kind, header.topic)
        if not subs:
            _log.debug("%s stream %s from %s on topic %r ignored: no subscriber", kind,
                       header.stream_id, sender, header.topic)
            return
        if header.stream_id in self._open:
            _log.warning("duplicate header for open stream %s from %s ignored",
                         header.stream_id, sender)
            return
        info = _info_from_header(header, sender)
        sinks: list[MemoryObjectSendStream[_Item]] = []
        for sub in subs:
            send, receive = anyio.create_memory_object_stream[_Item](self.reader_buffer + 1)
            reader = (TextStreamReader(info, receive) if isinstance(info, TextStreamInfo)
                      else ByteStreamReader(info, receive))
            sub._offer(reader)
            sinks.append(send)
        stream = _Incoming(header, sender, self.reader_buffer, sinks)
        if header.encryption_type != models.Encryption.Type.NONE:
            stream.end(_End("encrypted data streams are not supported"))
            return
        if header.compression not in (models.DataStream.CompressionType.NONE,
                                      models.DataStream.CompressionType.DEFLATE_RAW):
            stream.end(_End(f"unknown compression type {header.compression}"))
            return
        if header.HasField("inline_content"):
            # A single-packet stream: no chunks or trailer follow.
            error = self._feed(stream, header.inline_content)
            error = error or stream.flush()
            if error is None and stream.total is not None and stream.received < stream.total:
                error = f"received {stream.received} of the announced {stream.total} bytes"
            stream.end(_End(error))
            return
        self._open[header.stream_id] = stream

    def _feed(self, stream: _Incoming, content: bytes) -> str | None:
        try:
            return stream.feed(content)
        except _BadStream as exc:
            return str(exc)

    def _lookup(self, stream_id: str, sender: str, what: str) -> _Incoming | None:
        stream = self._open.get(stream_id)
        if stream is None:
            _log.debug("%s for unknown or ignored stream %s from %s", what, stream_id, sender)
            return None
        if stream.sender != sender:
            _log.warning("%s for stream %s from %s, not from its sender %s: ignored",
                         what, stream_id, sender, stream.sender)
            return None
        return stream

    def _on_chunk(self, chunk: models.DataStream.Chunk, sender: str) -> None:
        stream = self._lookup(chunk.stream_id, sender, "chunk")
        if stream is None:
            return
        if stream.compressed and chunk.chunk_index < stream.next_index:
            _log.warning("duplicate chunk %d of stream %s dropped", chunk.chunk_index,
                         stream.stream_id)
            return
        if chunk.chunk_index != stream.next_index:
            self._fail(stream, f"chunk {stream.next_index} went missing "
                               f"(chunk {chunk.chunk_index} came instead)")
            return
        stream.next_index += 1
        error = self._feed(stream, chunk.content)
        if error is not None:
            self._fail(stream, error)
        elif not stream.sinks:
            # Every reader is gone: stop reassembling (later packets are ignored).
            del self._open[stream.stream_id]

    def _on_trailer(self, trailer: models.DataStream.Trailer, sender: str) -> None:
        stream = self._lookup(trailer.stream_id, sender, "trailer")
        if stream is None:
            return
        del self._open[stream.stream_id]
        # The sender's reason, when it gives one, says more than our own diagnosis.
        if trailer.reason:
            error: str | None = f"the sender ended the stream: {trailer.reason}"
        else:
            error = stream.flush()
        if error is None and stream.total is not None and stream.received < stream.total:
            error = (f"the stream ended after {stream.received} of the announced "
                     f"{stream.total} bytes")
        stream.end(_End(error, dict(trailer.attributes)))

    def _fail(self, stream: _Incoming, message: str) -> None:
        _log.info("stream %s from %s failed: %s", stream.stream_id, stream.sender, message)
        self._open.pop(stream.stream_id, None)
        stream.end(_End(message))

    # -- sending -----------------------------------------------------------------------

    def _header(self, *, topic: str, mime_type: str, total_length: int | None,
                attributes: Mapping[str, str] | None, text: bool, name: str = "",
                ) -> models.DataStream.Header:
        header = models.DataStream.Header(
            stream_id=str(uuid.uuid4()), timestamp=int(time.time() * 1000),
            topic=_check_str("topic", topic), mime_type=_check_str("mime_type", mime_type),
            encryption_type=models.Encryption.Type.NONE, attributes=_attributes(attributes))
        if total_length is not None:
            header.total_length = total_length
        if text:
            header.text_header.operation_type = models.DataStream.OperationType.CREATE
        else:
            header.byte_header.name = _check_str("name", name)
        return header

    def _text_writer(self, *, topic: str, destination_identities: Sequence[str],
                     attributes: Mapping[str, str] | None, total_length: int | None = None,
                     ) -> TextStreamWriter:
        destinations = _identities(destination_identities)
        header = self._header(topic=topic, mime_type=TEXT_MIME_TYPE,
                              total_length=total_length, attributes=attributes, text=True)
        info = _info_from_header(header, self._local_identity())
        assert isinstance(info, TextStreamInfo)
        return TextStreamWriter(self._send_packet, header, destinations, info)

    def _byte_writer(self, *, topic: str, name: str, mime_type: str,
                     total_length: int | None, destination_identities: Sequence[str],
                     attributes: Mapping[str, str] | None) -> ByteStreamWriter:
        if total_length is not None and (isinstance(total_length, bool)
                                         or not isinstance(total_length, int)):
            raise TypeError("total_length must be an int or None")
        if total_length is not None and total_length < 0:
            raise ValueError("total_length must not be negative")
        destinations = _identities(destination_identities)
        header = self._header(topic=topic, mime_type=mime_type, total_length=total_length,
                              attributes=attributes, text=False, name=name)
        info = _info_from_header(header, self._local_identity())
        assert isinstance(info, ByteStreamInfo)
        return ByteStreamWriter(self._send_packet, header, destinations, info)

    def _context(self, writer: WriterT) -> _WriterContext[WriterT]:
        return _WriterContext(writer, lambda: not self._closed)

    async def send_text(
        self, text: str, *, topic: str, destination_identities: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        """Send ``text`` as one text stream (``total_length`` set); returns its id.

        Returns once the trailer is handed to the data channel. If cancelled (or a send
        fails), receivers are told the stream was aborted (best effort, bounded).
        """
        _check_str("text", text)
        data = text.encode()
        writer = self._text_writer(topic=topic, destination_identities=destination_identities,
                                   attributes=attributes, total_length=len(data))
        async with self._context(writer):
            await writer._write_chunks(utf8_chunks(data), len(data))
        return writer.stream_id

    def stream_text(
        self, *, topic: str, destination_identities: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> AbstractAsyncContextManager[TextStreamWriter]:
        """``async with stream_text(topic=...) as writer: await writer.write("...")``.

        Arguments are checked now. Entering sends the header; leaving sends the trailer,
        or, if the block raised or was cancelled, a trailer whose reason says the stream
        was aborted (shielded, bounded), and the exception propagates.
        """
        return self._context(self._text_writer(
            topic=topic, destination_identities=destination_identities, attributes=attributes))

    def stream_bytes(
        self, *, topic: str, name: str = "", mime_type: str = BYTE_MIME_TYPE,
        total_length: int | None = None, destination_identities: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> AbstractAsyncContextManager[ByteStreamWriter]:
        """``async with stream_bytes(topic=..., name=...) as writer: await writer.write(b"")``.

        As `stream_text`. With ``total_length``, writing more raises ValueError, and
        leaving the block normally with less written aborts the stream and raises
        ValueError.
        """
        return self._context(self._byte_writer(
            topic=topic, name=name, mime_type=mime_type, total_length=total_length,
            destination_identities=destination_identities, attributes=attributes))

    async def send_file(self, path: str | os.PathLike[str], *, topic: str,
                        destination_identities: Sequence[str] = (), mime_type: str | None = None,
                        attributes: Mapping[str, str] | None = None) -> str:
        """Send the file at ``path`` as a byte stream; returns its id.

        The name is the file's base name, the MIME type ``mime_type`` or guessed from the
        name, ``total_length`` the file's size. The file is read one chunk at a time, so
        memory stays small whatever its size. Errors opening it (``OSError``) surface
        before anything is sent. If cancelled, receivers are told the stream was aborted.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        fspath = os.fspath(path)
        if not isinstance(fspath, str):
            raise TypeError("path must be a text path")
        # Check the arguments before touching the file (they are checked again below).
        _check_str("topic", topic)
        _identities(destination_identities)
        _attributes(attributes)
        if mime_type is not None:
            _check_str("mime_type", mime_type)
        name = os.path.basename(fspath)
        if mime_type is None:
            mime_type = mimetypes.guess_type(name)[0] or BYTE_MIME_TYPE
        async with await anyio.open_file(fspath, "rb") as file:
            size = (await anyio.to_thread.run_sync(os.fstat, file.wrapped.fileno())).st_size
            writer = self._byte_writer(
                topic=topic, name=name, mime_type=mime_type, total_length=size,
                destination_identities=destination_identities, attributes=attributes)
            async with self._context(writer):
                remaining = size
                while remaining > 0:
                    data = await file.read(min(CHUNK_SIZE, remaining))
                    if not data:
                        raise StreamError(f"{name} shrank while it was being sent")
                    remaining -= len(data)
                    await writer.write(data)
        return writer.stream_id
