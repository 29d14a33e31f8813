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
    """A user data packet; ``participant`` is None when the server itself sent it."""

    data: bytes
    kind: DataPacketKind
    participant: RemoteParticipant | None
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class SipDTMF:
    """A DTMF tone (``code`` 0-15, ``digit`` such as ``"5"`` or ``"#"``)."""

    code: int
    digit: str
    participant: RemoteParticipant | None


@dataclass(frozen=True, slots=True)
class TranscriptionSegment:
    """One segment of a transcription; ``final`` once it will not change any more."""

    id: str
    text: str
    start_time: int
    end_time: int
    final: bool
    language: str
