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
reader has its own bounded buffer, and one that fills up because nobody reads it is *cut
off* with `StreamError` rather than silently losing data.

The modules, along the seams:

- ``_wire``: constants, stream descriptions (`TextStreamInfo`, `ByteStreamInfo`),
  chunking (`utf8_chunks`) and argument checks;
- ``_readers``: `TextStreamReader`, `ByteStreamReader` and `StreamSubscription`, the
  receiving side users iterate;
- ``_incoming``: reassembly of one incoming stream (order, decompression, length);
- ``_writers``: `TextStreamWriter`, `ByteStreamWriter` and their ``async with``;
- ``_manager``: `StreamManager`, which ties them to one room connection.
"""

from room.streams._manager import StreamManager
from room.streams._readers import (
    CHUNK_OVERHEAD,
    DEFAULT_PENDING_STREAMS,
    DEFAULT_READER_BUFFER,
    DEFAULT_READER_BUFFER_BYTES,
    ByteStreamReader,
    StreamSubscription,
    TextStreamReader,
)
from room.streams._wire import (
    BYTE_MIME_TYPE,
    CHUNK_SIZE,
    TEXT_MIME_TYPE,
    ByteStreamInfo,
    StreamError,
    TextStreamInfo,
    utf8_chunks,
)
from room.streams._writers import ByteStreamWriter, TextStreamWriter

__all__ = [
    "BYTE_MIME_TYPE",
    "CHUNK_OVERHEAD",
    "CHUNK_SIZE",
    "DEFAULT_PENDING_STREAMS",
    "DEFAULT_READER_BUFFER",
    "DEFAULT_READER_BUFFER_BYTES",
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
