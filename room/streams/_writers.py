"""Outgoing streams: the writers, and the ``async with`` that opens and closes them.

A writer is owned by the task in the ``async with`` block that opened it; it sends the
header on entry, numbered chunks on each ``write()``, and the trailer on exit (one whose
reason says the stream was aborted if the block raised or was cancelled).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Generic, TypeVar

import anyio
from livekit.protocol import models

from room.errors import ConnectionClosedError
from room.streams._wire import (
    ByteStreamInfo,
    InfoT,
    StreamError,
    TextStreamInfo,
    _attributes,
    _byte_chunks,
    utf8_chunks,
)

__all__ = ["ByteStreamWriter", "SendPacket", "TextStreamWriter"]

_log = logging.getLogger(__name__)

SendPacket = Callable[[models.DataPacket], Awaitable[None]]

# How long the closing or aborting trailer may take when we send it on the way out of a
# cancelled or failed block (shielded, so it must be bounded).
_TRAILER_TIMEOUT = 5.0


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

