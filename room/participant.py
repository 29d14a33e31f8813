"""Participants: the local one (who we are) and the remote ones (everyone else we can see).

Their fields are kept current by the room's state machine (`room.state.RoomState`), which
owns them; user code reads them and calls the local participant's methods.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from livekit.protocol import models

from room.data import TranscriptionSegment
from room.publication import LocalTrackPublication, RemoteTrackPublication, TrackPublication
from room.types import ConnectionQuality, DisconnectReason, ParticipantKind, TrackSource

if TYPE_CHECKING:
    from room.media.manager import MediaManager
    from room.options import TrackPublishOptions
    from room.rpc import RpcHandler, RpcManager
    from room.streams import ByteStreamWriter, StreamManager, TextStreamWriter
    from room.track import LocalTrack

__all__ = ["Participant", "LocalParticipant", "RemoteParticipant"]


class Participant:
    """What every participant has: identity, name, metadata, attributes, publications."""

    def __init__(self, info: models.ParticipantInfo) -> None:
        self.sid = info.sid
        self.identity = info.identity
        self.name = info.name
        self.metadata = info.metadata
        self._attributes: dict[str, str] = dict(info.attributes)
        self.kind = ParticipantKind.from_wire(info.kind)
        self.version = info.version
        self.joined_at_ms = info.joined_at_ms or info.joined_at * 1000
        self.connection_quality = ConnectionQuality.GOOD
        self.audio_level = 0.0
        self.is_speaking = False
        self.disconnect_reason: DisconnectReason | None = None
        self._publications: dict[str, TrackPublication] = {}

    @property
    def attributes(self) -> dict[str, str]:
        """A copy of the participant's attributes (changing it changes nothing)."""
        return dict(self._attributes)

    @property
    def track_publications(self) -> Mapping[str, TrackPublication]:
        """The participant's publications by track sid (read-only view)."""
        return MappingProxyType(self._publications)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} identity={self.identity!r} sid={self.sid!r}>"


class RemoteParticipant(Participant):
    """Another participant in the room."""

    # The room's media manager, once the participant is in a live room (set by it).
    _media: MediaManager | None = None

    @property
    def track_publications(self) -> Mapping[str, RemoteTrackPublication]:
        return MappingProxyType(self._publications)  # type: ignore[arg-type]


class _LocalEngine(Protocol):
    """What the local participant needs from the room's engine (`room.engine`)."""

    async def update_local_participant(
        self, *, name: str | None, metadata: str | None, attributes: Mapping[str, str] | None
    ) -> None: ...

    async def send_packet(self, packet: models.DataPacket, *, reliable: bool) -> None: ...

    @property
    def rpc(self) -> RpcManager: ...

    @property
    def streams(self) -> StreamManager: ...

    @property
    def media(self) -> MediaManager: ...


class LocalParticipant(Participant):
    """This client, as the room sees it; its methods talk to the server."""

    def __init__(self, info: models.ParticipantInfo, engine: _LocalEngine | None = None) -> None:
        super().__init__(info)
        self._engine = engine
        # Servers that send no permission block impose none.
        has = info.HasField("permission")
        self.can_publish_data = info.permission.can_publish_data if has else True
        self.can_publish = info.permission.can_publish if has else True
        self.can_subscribe = info.permission.can_subscribe if has else True
        # Empty: every source.
        self.can_publish_sources = frozenset(
            TrackSource(s) for s in info.permission.can_publish_sources
            if s in TrackSource._value2member_map_)
        # The token's legacy ``video.agent`` grant also makes an agent (set by the room).
        self._agent_grant = False

    @property
    def is_agent(self) -> bool:
        """Whether the server treats us as an agent (token kind "agent", or the legacy
        ``video.agent`` grant): only agents' transcriptions are forwarded."""
        return self.kind is ParticipantKind.AGENT or self._agent_grant

    @property
    def track_publications(self) -> Mapping[str, LocalTrackPublication]:
        return MappingProxyType(self._publications)  # type: ignore[arg-type]

    def _require_engine(self) -> _LocalEngine:
        from room.errors import ConnectionClosedError

        if self._engine is None:
            raise ConnectionClosedError("the local participant is not attached to a live room")
        return self._engine

    async def set_metadata(self, metadata: str) -> None:
        """Set our metadata; returns once the server has applied it.

        Raises `RequestRefusedError` if the token lacks ``canUpdateOwnMetadata``,
        `RequestTimeoutError` if the server does not answer within
        ``RoomOptions.request_timeout``, `ConnectionClosedError` if the room is gone.
        Cancelling it abandons the wait; the update may still be applied.
        """
        _check_str("metadata", metadata)
        await self._require_engine().update_local_participant(
            name=None, metadata=metadata, attributes=None)

    async def set_name(self, name: str) -> None:
        """Set our display name; returns once the server has applied it (see `set_metadata`)."""
        _check_str("name", name)
        await self._require_engine().update_local_participant(
            name=name, metadata=None, attributes=None)

    async def set_attributes(self, attributes: Mapping[str, str]) -> None:
        """Merge ``attributes`` into ours; an empty value deletes that key.

        Returns once the server has applied it (see `set_metadata`).
        """
        if not isinstance(attributes, Mapping):
            raise TypeError("attributes must be a mapping of str to str")
        for key, value in attributes.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("attributes must be a mapping of str to str")
            if not key:
                raise ValueError("attribute keys must not be empty")
        await self._require_engine().update_local_participant(
            name=None, metadata=None, attributes=dict(attributes))


    async def publish_data(
        self, payload: bytes | str, *, reliable: bool = True,
        destination_identities: Sequence[str] = (), topic: str | None = None,
    ) -> None:
        """Send ``payload`` to everyone else in the room, or only to ``destination_identities``.

        ``reliable=True`` uses the ordered, retransmitted channel; ``False`` the lossy one
        (unordered, no retransmits: may be lost, never duplicated). Returns once the packet
        is handed to the data channel. Raises `PublishDataError` if it is too large
        (64,000 bytes serialized) or the token lacks ``canPublishData``, and
        `ConnectionClosedError` if the room is gone; both before anything is sent.
        Cancelling it may or may not have sent the packet.
        """
        if isinstance(payload, str):
            payload = payload.encode()
        elif isinstance(payload, (bytearray, memoryview)):
            payload = bytes(payload)
        if not isinstance(payload, bytes):
            raise TypeError(f"payload must be bytes or str, not {type(payload).__name__}")
        destinations = _identities(destination_identities)
        if topic is not None and not isinstance(topic, str):
            raise TypeError("topic must be a str or None")
        user = models.UserPacket(payload=payload, destination_identities=destinations)
        if topic is not None:
            user.topic = topic
        await self._send_packet(models.DataPacket(
            kind=models.DataPacket.Kind.RELIABLE if reliable else models.DataPacket.Kind.LOSSY,
            participant_identity=self.identity, destination_identities=destinations,
            user=user), reliable=reliable)

    async def publish_dtmf(self, *, code: int, digit: str) -> None:
        """Send a SIP DTMF tone (``code`` 0-15, ``digit`` one character) to everyone."""
        if not isinstance(code, int) or not 0 <= code <= 15:
            raise ValueError("DTMF code must be an int from 0 to 15")
        if not isinstance(digit, str) or len(digit) != 1:
            raise ValueError("DTMF digit must be a single character")
        await self._send_packet(models.DataPacket(
            kind=models.DataPacket.Kind.RELIABLE, participant_identity=self.identity,
            sip_dtmf=models.SipDTMF(code=code, digit=digit)), reliable=True)

    async def publish_transcription(
        self, segments: Sequence[TranscriptionSegment], *,
        participant_identity: str | None = None, track_sid: str = "",
    ) -> None:
        """Publish transcription ``segments`` of ``participant_identity``'s track
        ``track_sid`` (default: our own identity) to everyone.

        LiveKit servers forward transcriptions only from agents: raises
        `PublishDataError` unless the token makes us one (kind "agent")."""
        if not all(isinstance(s, TranscriptionSegment) for s in segments):
            raise TypeError("segments must be TranscriptionSegment values")
        if not self.is_agent:
            from room.errors import PublishDataError

            raise PublishDataError("LiveKit servers forward transcriptions only from agent "
                                   "participants: join with a token of kind 'agent'")
        await self._send_packet(models.DataPacket(
            kind=models.DataPacket.Kind.RELIABLE, participant_identity=self.identity,
            transcription=models.Transcription(
                transcribed_participant_identity=participant_identity or self.identity,
                track_id=track_sid,
                segments=[models.TranscriptionSegment(
                    id=s.id, text=s.text, start_time=s.start_time, end_time=s.end_time,
                    final=s.final, language=s.language) for s in segments])),
            reliable=True)

    # -- RPC -----------------------------------------------------------------------------

    def register_rpc_method(self, method: str, handler: RpcHandler) -> None:
        """Serve ``method``: ``handler(RpcInvocationData) -> str`` runs, as a task of the
        room, for each call. Raise `RpcError` in it to answer with that error; any other
        exception answers APPLICATION_ERROR (1500) without its text."""
        self._require_engine().rpc.register(method, handler)

    def rpc_method(self, method: str) -> Callable[[RpcHandler], RpcHandler]:
        """Decorator form of `register_rpc_method`."""
        def register(handler: RpcHandler) -> RpcHandler:
            self.register_rpc_method(method, handler)
            return handler
        return register

    def unregister_rpc_method(self, method: str) -> None:
        """Stop serving ``method`` (later calls get UNSUPPORTED_METHOD, 1400)."""
        self._require_engine().rpc.unregister(method)

    async def perform_rpc(self, *, destination_identity: str, method: str, payload: str,
                          response_timeout: float = 10.0) -> str:
        """Call ``method`` on ``destination_identity``; return its response payload.

        Raises `RpcError` with LiveKit's codes: 1401 if the participant is not in the
        room, 1402 if ``payload`` is over 15 KiB, 1501 without an ack within 7 s, 1502
        without a response within ``response_timeout``, 1503 if the callee leaves
        meanwhile, 1400 for an unknown method, or the callee's own error.
        """
        return await self._require_engine().rpc.perform(
            destination_identity=destination_identity, method=method, payload=payload,
            response_timeout=response_timeout)

    # -- data streams ----------------------------------------------------------------------

    async def send_text(
        self, text: str, *, topic: str, destination_identities: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        """Send ``text`` as a text stream on ``topic``; returns the stream id."""
        return await self._require_engine().streams.send_text(
            text, topic=topic, destination_identities=destination_identities,
            attributes=attributes)

    def stream_text(self, *, topic: str, destination_identities: Sequence[str] = (),
                    attributes: Mapping[str, str] | None = None,
                    ) -> AbstractAsyncContextManager[TextStreamWriter]:
        """``async with stream_text(topic=...) as w: await w.write("...")``."""
        return self._require_engine().streams.stream_text(
            topic=topic, destination_identities=destination_identities, attributes=attributes)

    def stream_bytes(self, *, topic: str, name: str = "",
                     mime_type: str = "application/octet-stream", total_length: int | None = None,
                     destination_identities: Sequence[str] = (),
                     attributes: Mapping[str, str] | None = None,
                     ) -> AbstractAsyncContextManager[ByteStreamWriter]:
        """``async with stream_bytes(topic=..., name=...) as w: await w.write(b"...")``."""
        return self._require_engine().streams.stream_bytes(
            topic=topic, name=name, mime_type=mime_type, total_length=total_length,
            destination_identities=destination_identities, attributes=attributes)

    async def send_file(self, path: str | os.PathLike[str], *, topic: str,
                        destination_identities: Sequence[str] = (), mime_type: str | None = None,
                        attributes: Mapping[str, str] | None = None) -> str:
        """Send the file at ``path`` as a byte stream on ``topic``; returns the stream id."""
        return await self._require_engine().streams.send_file(
            path, topic=topic, destination_identities=destination_identities,
            mime_type=mime_type, attributes=attributes)

    async def publish_track(self, track: LocalTrack,
                            options: TrackPublishOptions | None = None
                            ) -> LocalTrackPublication:
        """Publish ``track``; returns its publication once the server has accepted it and
        the track's media is negotiated (the others see `TrackPublished`). Cancelled or
        failing midway, the track is not published: its m-line, if already negotiated,
        is taken away again (what the server accepted without media is never announced
        to others)."""
        from room.options import TrackPublishOptions

        engine = self._require_engine()
        return await engine.media.publish_track(self, track,
                                                options or TrackPublishOptions())

    async def unpublish_track(self, track_sid: str) -> None:
        """Stop publishing the track ``track_sid``; returns once renegotiated."""
        await self._require_engine().media.unpublish_track(self, track_sid)

    async def _send_packet(self, packet: models.DataPacket, *, reliable: bool) -> None:
        await self._require_engine().send_packet(packet, reliable=reliable)


def _identities(value: Sequence[str]) -> list[str]:
    if isinstance(value, str):
        raise TypeError("destination_identities must be a sequence of identities, not a str")
    out = list(value)
    if not all(isinstance(v, str) and v for v in out):
        raise TypeError("destination_identities must be non-empty strs")
    return out


def _check_str(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
