"""room: a structured-concurrency LiveKit client for asyncio and Trio.

    async with room.Room.connect(url, token) as r:
        async for ev in r.events():
            ...
"""

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
)
from room.options import (
    ContinualGatheringPolicy,
    IceServer,
    IceTransportType,
    RoomOptions,
    RtcConfiguration,
)
from room.participant import LocalParticipant, Participant, RemoteParticipant
from room.publication import LocalTrackPublication, RemoteTrackPublication, TrackPublication
from room.room import Room
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
from room.track import LocalTrack, RemoteTrack, Track
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

__version__ = "0.1.0"

__all__ = [
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
    "events",
]
