"""Reassembly of one incoming stream: chunk order, decompression, length, end.

Pure bookkeeping, owned by the `StreamManager` (which decides what is valid and when a
stream ends); it pushes each piece of content to the stream's readers through their
bounded buffers, never blocking.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from livekit.protocol import models

from room._bounded import Fanout
from room.streams._readers import _End, _Item, chunk_cost
from room.streams._wire import CHUNK_SIZE

__all__: list[str] = []


class _Incoming:
    """An incoming stream the manager is reassembling, and the readers it feeds."""

    __slots__ = ("compressed", "decompressor", "next_index", "readers", "received", "sender",
                 "stream_id", "total")

    def __init__(self, header: models.DataStream.Header, sender: str) -> None:
        self.stream_id = header.stream_id
        self.sender = sender
        self.total: int | None = (header.total_length if header.HasField("total_length")
                                  else None)
        # The buffers of this stream's readers, held weakly: a reader dropped unread stops
        # receiving (and when none is left the manager stops reassembling).
        self.readers: Fanout[_Item] = Fanout()
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
            self.readers.publish(piece, chunk_cost(piece))
            if not self.readers:
                break
        return None

    def _pieces(self, content: bytes) -> Iterator[bytes]:
        if self.decompressor is None:
            yield content
            return
        # Bounded output per step: a small compressed chunk may inflate enormously, and
        # readers that fall behind are cut off long before memory is at risk.
        data = content
        while data and self.readers:
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

    def end(self, ending: _End) -> None:
        """The stream is over (``ending`` says how): every reader gets it after its chunks."""
        self.readers.end(ending)


class _BadStream(Exception):
    """Internal: the incoming stream is invalid (the message says why)."""
