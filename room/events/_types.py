"""The event dataclasses: one frozen dataclass per thing that can happen in a room."""

from __future__ import annotations

from dataclasses import dataclass

from room.data import DataPacket, SipDTMF, TranscriptionSegment
from room.participant import Participant, RemoteParticipant
from room.publication import LocalTrackPublication, RemoteTrackPublication, TrackPublication
from room.track import LocalTrack, RemoteTrack
from room.types import ConnectionQuality, ConnectionState, DisconnectReason, E2EEState

__all__ = [
    "RoomEvent",
    "ParticipantConnected",
    "ParticipantDisconnected",
    "LocalTrackPublished",
    "LocalTrackUnpublished",
    "LocalTrackSubscribed",
    "TrackPublished",
    "TrackUnpublished",
    "TrackSubscribed",
    "TrackUnsubscribed",
    "TrackSubscriptionFailed",
    "TrackMuted",
    "TrackUnmuted",
    "ActiveSpeakersChanged",
    "RoomMetadataChanged",
    "ParticipantMetadataChanged",
    "ParticipantNameChanged",
    "ParticipantAttributesChanged",
    "ConnectionQualityChanged",
    "TranscriptionReceived",
    "DataReceived",
    "SipDTMFReceived",
    "E2EEStateChanged",
    "ConnectionStateChanged",
    "Connected",
    "Reconnecting",
    "Reconnected",
    "Disconnected",
]

@dataclass(frozen=True, slots=True)
class RoomEvent:
    """Base class of every event."""


@dataclass(frozen=True, slots=True)
class ParticipantConnected(RoomEvent):
    participant: RemoteParticipant


@dataclass(frozen=True, slots=True)
class ParticipantDisconnected(RoomEvent):
    participant: RemoteParticipant


@dataclass(frozen=True, slots=True)
class LocalTrackPublished(RoomEvent):
    publication: LocalTrackPublication
    track: LocalTrack


@dataclass(frozen=True, slots=True)
class LocalTrackUnpublished(RoomEvent):
    publication: LocalTrackPublication


@dataclass(frozen=True, slots=True)
class LocalTrackSubscribed(RoomEvent):
    track: LocalTrack


@dataclass(frozen=True, slots=True)
class TrackPublished(RoomEvent):
    publication: RemoteTrackPublication
    participant: RemoteParticipant


@dataclass(frozen=True, slots=True)
class TrackUnpublished(RoomEvent):
    publication: RemoteTrackPublication
    participant: RemoteParticipant


@dataclass(frozen=True, slots=True)
class TrackSubscribed(RoomEvent):
    track: RemoteTrack
    publication: RemoteTrackPublication
    participant: RemoteParticipant


@dataclass(frozen=True, slots=True)
class TrackUnsubscribed(RoomEvent):
    track: RemoteTrack
    publication: RemoteTrackPublication
    participant: RemoteParticipant


@dataclass(frozen=True, slots=True)
class TrackSubscriptionFailed(RoomEvent):
    participant: RemoteParticipant
    track_sid: str
    error: str


@dataclass(frozen=True, slots=True)
class TrackMuted(RoomEvent):
    participant: Participant
    publication: TrackPublication


@dataclass(frozen=True, slots=True)
class TrackUnmuted(RoomEvent):
    participant: Participant
    publication: TrackPublication


@dataclass(frozen=True, slots=True)
class ActiveSpeakersChanged(RoomEvent):
    """``speakers``: the participants speaking now, loudest first."""

    speakers: list[Participant]


@dataclass(frozen=True, slots=True)
class RoomMetadataChanged(RoomEvent):
    old_metadata: str
    new_metadata: str


@dataclass(frozen=True, slots=True)
class ParticipantMetadataChanged(RoomEvent):
    participant: Participant
    old_metadata: str
    new_metadata: str


@dataclass(frozen=True, slots=True)
class ParticipantNameChanged(RoomEvent):
    participant: Participant
    old_name: str
    new_name: str


@dataclass(frozen=True, slots=True)
class ParticipantAttributesChanged(RoomEvent):
    """``changed_attributes``: each changed key with its new value (``""`` if deleted)."""

    changed_attributes: dict[str, str]
    participant: Participant


@dataclass(frozen=True, slots=True)
class ConnectionQualityChanged(RoomEvent):
    participant: Participant
    quality: ConnectionQuality


@dataclass(frozen=True, slots=True)
class TranscriptionReceived(RoomEvent):
    segments: list[TranscriptionSegment]
    participant: Participant | None
    publication: TrackPublication | None


@dataclass(frozen=True, slots=True)
class DataReceived(RoomEvent):
    packet: DataPacket


@dataclass(frozen=True, slots=True)
class SipDTMFReceived(RoomEvent):
    dtmf: SipDTMF


@dataclass(frozen=True, slots=True)
class E2EEStateChanged(RoomEvent):
    participant: Participant
    state: E2EEState


@dataclass(frozen=True, slots=True)
class ConnectionStateChanged(RoomEvent):
    state: ConnectionState


@dataclass(frozen=True, slots=True)
class Connected(RoomEvent):
    pass


@dataclass(frozen=True, slots=True)
class Reconnecting(RoomEvent):
    pass


@dataclass(frozen=True, slots=True)
class Reconnected(RoomEvent):
    pass


@dataclass(frozen=True, slots=True)
class Disconnected(RoomEvent):
    """The room is gone; ``reason`` says why. Every ``events()`` iterator ends after it."""

    reason: DisconnectReason
    message: str = ""

