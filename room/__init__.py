"""room: a structured-concurrency LiveKit client for asyncio and Trio.

    async with room.Room.connect(url, token) as r:
        async for ev in r.events():
            ...

`Room` is imported on first use (PEP 562): it brings in aiortc and PyAV, which
``import room`` alone, and so the ``room.testing`` pytest plugin, must not load.
"""

from typing import TYPE_CHECKING, Any

from room import events
from room.data import DataPacket, SipDTMF, TranscriptionSegment
from room.errors import (
    ConnectError,
    ConnectionClosedError,
    EventStreamOverflowError,
    PublishDataError,
    RequestRefusedError,
    RequestTimeoutError,
    RoomError,
    RpcError,
    UnsupportedFeatureError,
)
from room.options import (
    ContinualGatheringPolicy,
    IceServer,
    IceTransportType,
    ReconnectPolicy,
    RoomOptions,
    RtcConfiguration,
    TrackPublishOptions,
    VideoCodec,
    VideoEncoding,
)
from room.participant import LocalParticipant, Participant, RemoteParticipant
from room.publication import LocalTrackPublication, RemoteTrackPublication, TrackPublication
from room.rpc import RpcErrorCode, RpcInvocationData
from room.streams import (
    ByteStreamInfo,
    ByteStreamReader,
    ByteStreamWriter,
    StreamError,
    TextStreamInfo,
    TextStreamReader,
    TextStreamWriter,
)
from room.track import (
    LocalAudioTrack,
    LocalTrack,
    LocalVideoTrack,
    RemoteAudioTrack,
    RemoteTrack,
    RemoteVideoTrack,
    Track,
)
from room.types import (
    ConnectionQuality,
    ConnectionState,
    DataPacketKind,
    DisconnectReason,
    E2EEState,
    ParticipantKind,
    TrackKind,
    TrackSource,
)

if TYPE_CHECKING:
    from room.media.frame import AudioFrame, VideoBufferType, VideoFrame
    from room.media.manager import PublishTrackError
    from room.media.resampler import AudioResampler
    from room.media.source import AudioSource, VideoSource
    from room.media.stream import AudioStream, VideoStream
    from room.room import Room

__version__ = "0.1.0"

__all__ = [
    "AudioFrame",
    "AudioResampler",
    "AudioSource",
    "AudioStream",
    "LocalAudioTrack",
    "LocalVideoTrack",
    "PublishTrackError",
    "RemoteAudioTrack",
    "RemoteVideoTrack",
    "TrackPublishOptions",
    "VideoBufferType",
    "VideoCodec",
    "VideoEncoding",
    "VideoFrame",
    "VideoSource",
    "VideoStream",
    "ConnectError",
    "ConnectionClosedError",
    "ConnectionQuality",
    "ConnectionState",
    "ContinualGatheringPolicy",
    "DataPacket",
    "DataPacketKind",
    "DisconnectReason",
    "E2EEState",
    "EventStreamOverflowError",
    "IceServer",
    "IceTransportType",
    "LocalParticipant",
    "LocalTrack",
    "LocalTrackPublication",
    "Participant",
    "ParticipantKind",
    "PublishDataError",
    "RemoteParticipant",
    "RemoteTrack",
    "RemoteTrackPublication",
    "RequestRefusedError",
    "RequestTimeoutError",
    "Room",
    "RoomError",
    "ReconnectPolicy",
    "RoomOptions",
    "RpcError",
    "RpcErrorCode",
    "RpcInvocationData",
    "ByteStreamInfo",
    "ByteStreamReader",
    "StreamError",
    "TextStreamInfo",
    "ByteStreamWriter",
    "TextStreamReader",
    "TextStreamWriter",
    "RtcConfiguration",
    "SipDTMF",
    "Track",
    "TrackKind",
    "TrackPublication",
    "TrackSource",
    "TranscriptionSegment",
    "UnsupportedFeatureError",
    "events",
]

# Exported names whose modules are heavy, imported when first asked for.
_LAZY = {
    "Room": "room.room",
    "AudioFrame": "room.media.frame",
    "VideoBufferType": "room.media.frame",
    "VideoFrame": "room.media.frame",
    "AudioResampler": "room.media.resampler",
    "AudioSource": "room.media.source",
    "VideoSource": "room.media.source",
    "AudioStream": "room.media.stream",
    "VideoStream": "room.media.stream",
    "PublishTrackError": "room.media.manager",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'room' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
