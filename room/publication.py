"""Track publications: what a participant announces it publishes (from ``TrackInfo``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from livekit.protocol import models

from room.track import Track
from room.types import TrackKind, TrackSource

if TYPE_CHECKING:
    from room.options import TrackPublishOptions

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

    def __init__(self, info: models.TrackInfo) -> None:
        super().__init__(info)
        self._options: TrackPublishOptions | None = None
        self._info = info  # as the server accepted it (a resume names it again)


class _Subscriptions(Protocol):
    def set_subscribed(self, publication: RemoteTrackPublication, subscribed: bool) -> None:
        ...


class RemoteTrackPublication(TrackPublication):
    """A track another participant publishes. ``subscribed`` says whether its media
    reaches us now (``track`` is then set)."""

    def __init__(self, info: models.TrackInfo) -> None:
        super().__init__(info)
        self.subscribed = False
        self._wanted = True  # unless the user unsubscribed (or auto_subscribe is off)
        self._media: _Subscriptions | None = None

    def set_subscribed(self, subscribed: bool) -> None:
        """Subscribe to this track (`TrackSubscribed` follows once its media arrives) or
        unsubscribe (`TrackUnsubscribed` at once; its streams end). The request is sent
        in the background, in order with the room's other requests."""
        if not isinstance(subscribed, bool):
            raise TypeError("set_subscribed takes a bool")
        if self._media is None:
            from room.errors import ConnectionClosedError

            raise ConnectionClosedError("this publication is not in a live room")
        self._media.set_subscribed(self, subscribed)
