"""The event dataclasses: one frozen dataclass per thing that can happen in a room."""

from __future__ import annotations

from dataclasses import dataclass

from room.data import DataPacket, SipDTMF, TranscriptionSegment
from room.participant import Participant, RemoteParticipant
from room.publication import LocalTrackPublication, RemoteTrackPublication, TrackPublication
from room.track import LocalTrack, RemoteTrack, Track
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

_event = dataclass(frozen=True, slots=True)


@_event
class RoomEvent:
    """Base class of every event."""


@_event
class ParticipantConnected(RoomEvent):
    participant: RemoteParticipant


@_event
class ParticipantDisconnected(RoomEvent):
    participant: RemoteParticipant


@_event
class LocalTrackPublished(RoomEvent):
    publication: LocalTrackPublication
    track: LocalTrack


@_event
class LocalTrackUnpublished(RoomEvent):
    publication: LocalTrackPublication


@_event
class LocalTrackSubscribed(RoomEvent):
    track: LocalTrack


@_event
class TrackPublished(RoomEvent):
    publication: RemoteTrackPublication
    participant: RemoteParticipant


@_event
class TrackUnpublished(RoomEvent):
    publication: RemoteTrackPublication
    participant: RemoteParticipant


@_event
class TrackSubscribed(RoomEvent):
    track: RemoteTrack
    publication: RemoteTrackPublication
    participant: RemoteParticipant


@_event
class TrackUnsubscribed(RoomEvent):
    track: RemoteTrack
    publication: RemoteTrackPublication
    participant: RemoteParticipant


@_event
class TrackSubscriptionFailed(RoomEvent):
    participant: RemoteParticipant
    track_sid: str
    error: str


@_event
class TrackMuted(RoomEvent):
    participant: Participant
    publication: TrackPublication


@_event
class TrackUnmuted(RoomEvent):
    participant: Participant
    publication: TrackPublication


@_event
class ActiveSpeakersChanged(RoomEvent):
    """``speakers``: the participants speaking now, loudest first."""

    speakers: list[Participant]


@_event
class RoomMetadataChanged(RoomEvent):
    old_metadata: str
    new_metadata: str


@_event
class ParticipantMetadataChanged(RoomEvent):
    participant: Participant
    old_metadata: str
    new_metadata: str


@_event
class ParticipantNameChanged(RoomEvent):
    participant: Participant
    old_name: str
    new_name: str


@_event
class ParticipantAttributesChanged(RoomEvent):
    """``changed_attributes``: each changed key with its new value (``""`` if deleted)."""

    changed_attributes: dict[str, str]
    participant: Participant


@_event
class ConnectionQualityChanged(RoomEvent):
    participant: Participant
    quality: ConnectionQuality


@_event
class TranscriptionReceived(RoomEvent):
    segments: list[TranscriptionSegment]
    participant: Participant | None
    publication: TrackPublication | None


@_event
class DataReceived(RoomEvent):
    packet: DataPacket


@_event
class SipDTMFReceived(RoomEvent):
    dtmf: SipDTMF


@_event
class E2EEStateChanged(RoomEvent):
    participant: Participant
    state: E2EEState


@_event
class ConnectionStateChanged(RoomEvent):
    state: ConnectionState


@_event
class Connected(RoomEvent):
    pass


@_event
class Reconnecting(RoomEvent):
    pass


@_event
class Reconnected(RoomEvent):
    pass


@_event
class Disconnected(RoomEvent):
    """The room is gone; ``reason`` says why. Every ``events()`` iterator ends after it."""

    reason: DisconnectReason
    message: str = ""

