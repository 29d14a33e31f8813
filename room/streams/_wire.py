"""The wire format of data streams: constants, stream descriptions, chunking, checks.

A stream is one ``DataStream.Header`` packet, ``DataStream.Chunk`` packets numbered from 0
(at most `CHUNK_SIZE` bytes of content each; text is cut on UTF-8 character boundaries),
and one ``DataStream.Trailer`` whose non-empty ``reason`` means the sender gave up. Every
packet is reliable and carries the stream's ``destination_identities``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

from livekit.protocol import models

from room.errors import RoomError

__all__ = [
    "BYTE_MIME_TYPE",
    "CHUNK_SIZE",
    "TEXT_MIME_TYPE",
    "ByteStreamInfo",
    "StreamError",
    "TextStreamInfo",
    "utf8_chunks",
]

CHUNK_SIZE: Final = 15_000
"""The most content bytes one chunk carries (as LiveKit's SDKs send)."""
TEXT_MIME_TYPE: Final = "text/plain"
BYTE_MIME_TYPE: Final = "application/octet-stream"

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


# -- chunking --------------------------------------------------------------------------


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

