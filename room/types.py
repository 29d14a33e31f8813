"""Enumerations shared by the public API (values follow LiveKit's protobuf enums)."""

from __future__ import annotations

import enum

__all__ = [
    "ConnectionQuality",
    "ConnectionState",
    "DisconnectReason",
    "ParticipantKind",
    "TrackKind",
    "TrackSource",
    "DataPacketKind",
    "E2EEState",
]


class ConnectionState(enum.Enum):
    """Where the room's connection to the server stands."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"


class ConnectionQuality(enum.IntEnum):
    """LiveKit's ``ConnectionQuality`` (server-estimated)."""

    POOR = 0
    GOOD = 1
    EXCELLENT = 2
    LOST = 3


class DisconnectReason(enum.IntEnum):
    """LiveKit's ``DisconnectReason``: why a participant left or was removed."""

    UNKNOWN_REASON = 0
    CLIENT_INITIATED = 1
    DUPLICATE_IDENTITY = 2
    SERVER_SHUTDOWN = 3
    PARTICIPANT_REMOVED = 4
    ROOM_DELETED = 5
    STATE_MISMATCH = 6
    JOIN_FAILURE = 7
    MIGRATION = 8
    SIGNAL_CLOSE = 9
    ROOM_CLOSED = 10
    USER_UNAVAILABLE = 11
    USER_REJECTED = 12
    SIP_TRUNK_FAILURE = 13
    CONNECTION_TIMEOUT = 14
    MEDIA_FAILURE = 15
    AGENT_ERROR = 16

    @classmethod
    def from_wire(cls, value: int) -> DisconnectReason:
        """Map a wire value to the enum; values newer than this library become UNKNOWN_REASON."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN_REASON


class ParticipantKind(enum.IntEnum):
    """LiveKit's ``ParticipantInfo.Kind``."""

    STANDARD = 0
    INGRESS = 1
    EGRESS = 2
    SIP = 3
    AGENT = 4
    CONNECTOR = 7
    BRIDGE = 8

    @classmethod
    def from_wire(cls, value: int) -> ParticipantKind:
        try:
            return cls(value)
        except ValueError:
            return cls.STANDARD


class TrackKind(enum.IntEnum):
    """LiveKit's ``TrackType``."""

    AUDIO = 0
    VIDEO = 1
    DATA = 2
    # The official SDK's spellings, as aliases.
    KIND_AUDIO = 0
    KIND_VIDEO = 1
    KIND_DATA = 2


class TrackSource(enum.IntEnum):
    """LiveKit's ``TrackSource``."""

    UNKNOWN = 0
    CAMERA = 1
    MICROPHONE = 2
    SCREEN_SHARE = 3
    SCREEN_SHARE_AUDIO = 4
    # The official SDK's spellings, as aliases.
    SOURCE_UNKNOWN = 0
    SOURCE_CAMERA = 1
    SOURCE_MICROPHONE = 2
    SOURCE_SCREENSHARE = 3
    SOURCE_SCREENSHARE_AUDIO = 4


class DataPacketKind(enum.IntEnum):
    """LiveKit's ``DataPacket.Kind``: reliable (ordered, retransmitted) or lossy."""

    RELIABLE = 0
    LOSSY = 1


class E2EEState(enum.IntEnum):
    """End-to-end encryption state of a participant's media."""

    NEW = 0
    OK = 1
    ENCRYPTION_FAILED = 2
    DECRYPTION_FAILED = 3
    MISSING_KEY = 4
    KEY_RATCHETED = 5
    INTERNAL_ERROR = 6
