"""Data streams (LiveKit's text and byte streams): header, chunks, trailer over data packets.

`StreamManager` is owned by a connected `Room`: it sends streams for the local participant
and reassembles incoming ones into readers. Skeleton: filled in by the data-streams work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager

from livekit.protocol import models

__all__ = [
    "ByteStreamReader",
    "ByteStreamWriter",
    "StreamManager",
    "TextStreamReader",
    "TextStreamWriter",
]

_log = logging.getLogger(__name__)

SendPacket = Callable[[models.DataPacket], Awaitable[None]]


class TextStreamReader:
    """An incoming text stream: async iterator of str chunks, ``read_all()``."""


class ByteStreamReader:
    """An incoming byte stream: async iterator of bytes chunks, ``read_all()``."""


class TextStreamWriter:
    """An outgoing text stream: ``await write(str)``; closed by its context manager."""


class ByteStreamWriter:
    """An outgoing byte stream: ``await write(bytes)``; closed by its context manager."""


class StreamManager:
    """Outgoing and incoming data streams of one room connection.

    ``send_packet`` sends a reliable data packet (the caller sets
    ``destination_identities``); ``handle_packet`` is called, on the room's loop, with
    every incoming packet whose value is ``stream_header``, ``stream_chunk`` or
    ``stream_trailer``.
    """

    def __init__(self, *, send_packet: SendPacket, local_identity: Callable[[], str]) -> None:
        self._send_packet = send_packet
        self._local_identity = local_identity

    # -- receiving ---------------------------------------------------------------------

    def handle_packet(self, packet: models.DataPacket, sender_identity: str) -> None:
        _log.debug("stream packet from %s not handled yet", sender_identity)

    def participant_left(self, identity: str) -> None:
        """``identity`` left: its unfinished incoming streams end with an error."""

    def close(self) -> None:
        """The room ended: every unfinished reader ends with an error, iterators end."""

    def text_streams(self, topic: str) -> AsyncIterator[TextStreamReader]:
        raise NotImplementedError

    def byte_streams(self, topic: str) -> AsyncIterator[ByteStreamReader]:
        raise NotImplementedError

    # -- sending -----------------------------------------------------------------------

    async def send_text(
        self, text: str, *, topic: str, destination_identities: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        raise NotImplementedError

    def stream_text(
        self, *, topic: str, destination_identities: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> AbstractAsyncContextManager[TextStreamWriter]:
        raise NotImplementedError

    def stream_bytes(
        self, *, topic: str, name: str = "", mime_type: str = "application/octet-stream",
        total_length: int | None = None, destination_identities: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> AbstractAsyncContextManager[ByteStreamWriter]:
        raise NotImplementedError

    async def send_file(self, path: str | os.PathLike[str], *, topic: str,
                        destination_identities: Sequence[str] = (), mime_type: str | None = None,
                        attributes: Mapping[str, str] | None = None) -> str:
        raise NotImplementedError
