"""Values carried by data events: user packets, SIP DTMF, transcription segments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from room.types import DataPacketKind

if TYPE_CHECKING:
    from room.participant import RemoteParticipant

__all__ = ["DataPacket", "SipDTMF", "TranscriptionSegment"]


@dataclass(frozen=True, slots=True)
class DataPacket:
    """A user data packet.

    ``participant_identity`` is the sender's identity as the server stamped it (``""`` for
    data the server itself sent). ``participant`` is that sender's `RemoteParticipant`, or
    None for server data and for a sender this client has not been told about yet:
    LiveKit servers announce participants that publish no track up to a few seconds after
    they join, and their data may arrive first.
    """

    data: bytes
    kind: DataPacketKind
    participant: RemoteParticipant | None
    topic: str | None = None
    participant_identity: str = ""


@dataclass(frozen=True, slots=True)
class SipDTMF:
    """A DTMF tone (``code`` 0-15, ``digit`` such as ``"5"`` or ``"#"``); the sender as
    in `DataPacket` (``participant`` None for one not announced yet)."""

    code: int
    digit: str
    participant: RemoteParticipant | None
    participant_identity: str = ""


@dataclass(frozen=True, slots=True)
class TranscriptionSegment:
    """One segment of a transcription; ``final`` once it will not change any more."""

    id: str
    text: str
    start_time: int
    end_time: int
    final: bool
    language: str
