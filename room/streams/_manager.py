"""`StreamManager`: the data streams of one room connection, both ways.

Ownership: created and owned by a connected `Room`, which feeds it the incoming stream
packets (`StreamManager.handle_packet`, on the room's loop), tells it who left
(`participant_left`) and when the room ends (`close`). It never blocks the room's loop:
incoming content goes to the readers through bounded buffers (`room._bounded`), and one
that falls too far behind is cut off with `StreamError` rather than silently losing data.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
from livekit.protocol import models

from room._bounded import BoundedBuffer, Fanout
from room.streams._incoming import _BadStream, _Incoming
from room.streams._readers import (
    DEFAULT_PENDING_STREAMS,
    DEFAULT_READER_BUFFER,
    DEFAULT_READER_BUFFER_BYTES,
    ByteStreamReader,
    StreamSubscription,
    TextStreamReader,
    _End,
    _Item,
)
from room.streams._wire import (
    BYTE_MIME_TYPE,
    CHUNK_SIZE,
    TEXT_MIME_TYPE,
    ByteStreamInfo,
    StreamError,
    TextStreamInfo,
    _attributes,
    _check_str,
    _identities,
    _info_from_header,
    _Kind,
    utf8_chunks,
)
from room.streams._writers import (
    ByteStreamWriter,
    SendPacket,
    TextStreamWriter,
    WriterT,
    _WriterContext,
)

__all__ = ["StreamManager"]

_log = logging.getLogger(__name__)


def _limit(name: str, value: object, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int" + (" or None" if optional else ""))
    return value


class StreamManager:
    """Outgoing and incoming data streams of one room connection.

    ``send_packet`` sends a reliable data packet (the caller sets
    ``destination_identities``); ``handle_packet`` is called, on the room's loop, with
    every incoming packet whose value is ``stream_header``, ``stream_chunk`` or
    ``stream_trailer``. ``local_identity`` names us in the writers' ``info``.

    Receiving: streams on a topic nobody subscribed to (``text_streams`` /
    ``byte_streams``) are ignored, as LiveKit clients do. Each subscriber gets its own
    reader of each stream, with a buffer of ``reader_buffer_bytes`` (each chunk charged
    its size plus a little) and, if ``reader_buffer`` is not None, of that many chunks; a
    reader that falls further behind is cut off with `StreamError` (the room never waits
    for it). The limits may be changed at any time; they apply to readers made afterwards.

    Sending: compression, inline (single-packet) content and per-stream encryption are
    not used; every stream goes out as header, chunks, trailer.
    """

    def __init__(self, *, send_packet: SendPacket, local_identity: Callable[[], str],
                 reader_buffer: int | None = DEFAULT_READER_BUFFER,
                 reader_buffer_bytes: int = DEFAULT_READER_BUFFER_BYTES,
                 pending_streams: int = DEFAULT_PENDING_STREAMS) -> None:
        self._send_packet = send_packet
        self._local_identity = local_identity
        self.reader_buffer = reader_buffer
        self.reader_buffer_bytes = reader_buffer_bytes
        self.pending_streams = pending_streams
        self._closed = False
        self._open: dict[str, _Incoming] = {}
        # The buffers of the subscriptions, held weakly: a subscription the user dropped is
        # collected, which unsubscribes it.
        self._subs: dict[tuple[_Kind, str], Fanout[Any]] = {}

    @property
    def reader_buffer(self) -> int | None:
        """Chunks a reader may hold before it is cut off (None: no count limit)."""
        return self._reader_buffer

    @reader_buffer.setter
    def reader_buffer(self, value: int | None) -> None:
        self._reader_buffer: int | None = _limit("reader_buffer", value, optional=True)

    @property
    def reader_buffer_bytes(self) -> int:
        """Accounted bytes of chunks a reader may hold before it is cut off."""
        return self._reader_buffer_bytes

    @reader_buffer_bytes.setter
    def reader_buffer_bytes(self, value: int) -> None:
        self._reader_buffer_bytes: int = _limit("reader_buffer_bytes", value)

    @property
    def pending_streams(self) -> int:
        """Unclaimed readers a subscription may hold before it is cut off."""
        return self._pending_streams

    @pending_streams.setter
    def pending_streams(self, value: int) -> None:
        self._pending_streams: int = _limit("pending_streams", value)

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
        for subs in self._subs.values():
            subs.end()
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
            sub._buffer.end()
        else:
            self._subs.setdefault((kind, topic), Fanout()).add(sub._buffer)
        return sub

    def _subscribers(self, kind: _Kind, topic: str) -> list[BoundedBuffer[Any]]:
        subs = self._subs.get((kind, topic))
        live = subs.live() if subs is not None else []
        if not live:
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
        stream = _Incoming(header, sender)
        for sub in subs:
            buffer: BoundedBuffer[_Item] = BoundedBuffer(
                max_items=self.reader_buffer, max_bytes=self.reader_buffer_bytes,
                what=f"the reader of stream {header.stream_id} from {sender}", log=_log)
            reader = (TextStreamReader(info, buffer) if isinstance(info, TextStreamInfo)
                      else ByteStreamReader(info, buffer))
            if sub.put(reader):  # else that subscription left too many streams unclaimed
                stream.readers.add(buffer)
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
        elif not stream.readers:
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
