"""Participants: the local one (who we are) and the remote ones (everyone else we can see).

Their fields are kept current by the room's state machine (`room.state.RoomState`), which
owns them; user code reads them and calls the local participant's methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from livekit.protocol import models

from room.publication import LocalTrackPublication, RemoteTrackPublication, TrackPublication
from room.types import ConnectionQuality, DisconnectReason, ParticipantKind

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

    @property
    def track_publications(self) -> Mapping[str, RemoteTrackPublication]:
        return MappingProxyType(self._publications)  # type: ignore[arg-type]


class _LocalEngine(Protocol):
    """What the local participant needs from the connected room (see `room.room`)."""

    async def update_local_participant(
        self, *, name: str | None, metadata: str | None, attributes: Mapping[str, str] | None
    ) -> None: ...


class LocalParticipant(Participant):
    """This client, as the room sees it; its methods talk to the server."""

    def __init__(self, info: models.ParticipantInfo, engine: _LocalEngine | None = None) -> None:
        super().__init__(info)
        self._engine = engine

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


def _check_str(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
