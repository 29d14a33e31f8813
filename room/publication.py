"""Track publications: what a participant announces it publishes (from ``TrackInfo``)."""

from __future__ import annotations

from livekit.protocol import models

from room.track import Track
from room.types import TrackKind, TrackSource

__all__ = ["TrackPublication", "LocalTrackPublication", "RemoteTrackPublication"]


class TrackPublication:
    """A published track as the server describes it; updated in place as it changes."""

    def __init__(self, info: models.TrackInfo) -> None:
        self.sid = info.sid
        self.track: Track | None = None
        self._apply(info)

    def _apply(self, info: models.TrackInfo) -> None:
        self.name = info.name
        self.kind = TrackKind(info.type) if info.type in TrackKind._value2member_map_ else (
            TrackKind.DATA)
        self.source = (TrackSource(info.source) if info.source in TrackSource._value2member_map_
                       else TrackSource.UNKNOWN)
        self.muted = info.muted
        self.mime_type = info.mime_type
        self.simulcasted = info.simulcast
        self.width = info.width
        self.height = info.height

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} sid={self.sid!r} name={self.name!r} "
                f"kind={self.kind.name} muted={self.muted}>")


class LocalTrackPublication(TrackPublication):
    """A track this client publishes."""


class RemoteTrackPublication(TrackPublication):
    """A track another participant publishes."""

    def __init__(self, info: models.TrackInfo) -> None:
        super().__init__(info)
        self.subscribed = False
