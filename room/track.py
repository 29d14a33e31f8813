"""Tracks: the media objects behind publications (media arrives in a later layer)."""

from __future__ import annotations

from room.types import TrackKind

__all__ = ["Track", "LocalTrack", "RemoteTrack"]


class Track:
    """A media track; ``sid`` is assigned by the server once published."""

    def __init__(self, *, sid: str, name: str, kind: TrackKind) -> None:
        self.sid = sid
        self.name = name
        self.kind = kind
        self.muted = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sid={self.sid!r} name={self.name!r} kind={self.kind.name}>"


class LocalTrack(Track):
    """A track this client publishes."""


class RemoteTrack(Track):
    """A track another participant publishes, once subscribed."""
