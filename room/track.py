"""Tracks: the media behind publications.

A local track wraps a source (`AudioSource`, `VideoSource`); publishing it
(`LocalParticipant.publish_track`) makes the server assign its ``sid``. A remote track is
what a subscription delivers: read it with `AudioStream` / `VideoStream`. Tracks are
owned by the room that publishes or receives them; their aiortc counterparts live on the
aiortc loop (`room.transport.media`).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Protocol

from room.types import TrackKind

if TYPE_CHECKING:  # aiortc and PyAV are imported when media is first used
    from aiortc.mediastreams import MediaStreamTrack

    from room.media.source import AudioSource, VideoSource
    from room.publication import LocalTrackPublication
    from room.transport.media import FeedAudioTrack, FeedVideoTrack, TrackSink

__all__ = [
    "LocalAudioTrack",
    "LocalTrack",
    "LocalVideoTrack",
    "RemoteAudioTrack",
    "RemoteTrack",
    "RemoteVideoTrack",
    "Track",
]


class Track:
    """A media track; ``sid`` is assigned by the server once published."""

    def __init__(self, *, sid: str, name: str, kind: TrackKind) -> None:
        self.sid = sid
        self.name = name
        self.kind = kind
        self.muted = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sid={self.sid!r} name={self.name!r} kind={self.kind.name}>"


class _MuteEngine(Protocol):
    def set_track_muted(self, track: LocalTrack, muted: bool) -> None: ...


class LocalTrack(Track):
    """A track this client publishes (or will)."""

    def __init__(self, *, name: str, kind: TrackKind) -> None:
        if not isinstance(name, str):
            raise TypeError("a track's name must be a str")
        super().__init__(sid="", name=name, kind=kind)
        self._cid = str(uuid.uuid4())  # our id for it, until the server names it
        self._engine: _MuteEngine | None = None
        self._publication: LocalTrackPublication | None = None
        self._rtc: FeedAudioTrack | FeedVideoTrack | None = None

    @property
    def publication(self) -> LocalTrackPublication | None:
        return self._publication

    def mute(self) -> None:
        """Stop sending (audio sends silence, video nothing); the others see
        `TrackMuted`. The source keeps draining in real time."""
        self._set_muted(True)

    def unmute(self) -> None:
        """Send again; the others see `TrackUnmuted`."""
        self._set_muted(False)

    def _set_muted(self, muted: bool) -> None:
        if self.muted == muted:
            return
        self.muted = muted
        if self._rtc is not None:
            self._rtc.muted = muted
        if self._engine is not None:
            self._engine.set_track_muted(self, muted)

    def _make_rtc(self) -> MediaStreamTrack:
        """A fresh aiortc track for a publication (each publication sends its own)."""
        raise NotImplementedError


class LocalAudioTrack(LocalTrack):
    """Audio this client publishes, from an `AudioSource`."""

    def __init__(self, name: str, source: AudioSource) -> None:
        from room.media.source import AudioSource

        if not isinstance(source, AudioSource):
            raise TypeError(f"an audio track needs an AudioSource, not {source!r}")
        super().__init__(name=name, kind=TrackKind.AUDIO)
        self.source = source

    @classmethod
    def create_audio_track(cls, name: str, source: AudioSource) -> LocalAudioTrack:
        return cls(name, source)

    def _make_rtc(self) -> FeedAudioTrack:
        from room.transport.media import FeedAudioTrack

        track = FeedAudioTrack(self.source._feed, self._cid)
        track.muted = self.muted
        self._rtc = track
        return track


class LocalVideoTrack(LocalTrack):
    """Video this client publishes, from a `VideoSource`."""

    def __init__(self, name: str, source: VideoSource) -> None:
        from room.media.source import VideoSource

        if not isinstance(source, VideoSource):
            raise TypeError(f"a video track needs a VideoSource, not {source!r}")
        super().__init__(name=name, kind=TrackKind.VIDEO)
        self.source = source

    @classmethod
    def create_video_track(cls, name: str, source: VideoSource) -> LocalVideoTrack:
        return cls(name, source)

    def _make_rtc(self) -> FeedVideoTrack:
        from room.transport.media import FeedVideoTrack

        track = FeedVideoTrack(self.source._feed, self._cid)
        track.muted = self.muted
        self._rtc = track
        return track


class RemoteTrack(Track):
    """A track another participant publishes, delivered by our subscription."""

    def __init__(self, *, sid: str, name: str, kind: TrackKind, sink: TrackSink) -> None:
        super().__init__(sid=sid, name=name, kind=kind)
        self._sink = sink

    @property
    def ended(self) -> bool:
        """Whether this subscription's media has stopped for good."""
        return self._sink.ended


class RemoteAudioTrack(RemoteTrack):
    """Audio from another participant; read it with `AudioStream`."""


class RemoteVideoTrack(RemoteTrack):
    """Video from another participant; read it with `VideoStream`."""
