"""The one-line rendering of room events that ``join`` and ``demo`` print."""


from __future__ import annotations

from datetime import datetime

from room.data import DataPacket
from room.events import (
    ActiveSpeakersChanged,
    ConnectionQualityChanged,
    ConnectionStateChanged,
    DataReceived,
    Disconnected,
    E2EEStateChanged,
    LocalTrackPublished,
    LocalTrackSubscribed,
    LocalTrackUnpublished,
    ParticipantAttributesChanged,
    ParticipantConnected,
    ParticipantDisconnected,
    ParticipantMetadataChanged,
    ParticipantNameChanged,
    RoomEvent,
    RoomMetadataChanged,
    SipDTMFReceived,
    TrackMuted,
    TrackPublished,
    TrackSubscribed,
    TrackSubscriptionFailed,
    TrackUnmuted,
    TrackUnpublished,
    TrackUnsubscribed,
    TranscriptionReceived,
)
from room.participant import Participant
from room.publication import TrackPublication
from room.types import ParticipantKind

__all__ = ["format_event"]

# Longest rendering of one user-supplied value in an event line (repr included).
_MAX_VALUE = 60


def format_event(event: RoomEvent, *, when: datetime | None = None) -> str:
    """One readable line for ``event``: local time, event name, participant, details.

    ``when`` defaults to now. User-supplied strings are shown as (shortened) Python
    literals, so the line never spans several lines; changes read ``old -> new``.
    """
    stamp = (when or datetime.now()).strftime("%H:%M:%S.%f")[:-3]
    who, detail = _describe(event)
    return f"{stamp} {type(event).__name__:<28} {who:<12} {detail}".rstrip()


def _show(value: str) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 4] + "...'"


def _change(old: str, new: str) -> str:
    return f"{_show(old)} -> {_show(new)}"


def _ident(p: Participant | None) -> str:
    return p.identity if p is not None else "-"


def _publication(pub: TrackPublication) -> str:
    muted = " muted" if pub.muted else ""
    return f"{pub.sid} {_show(pub.name)} {pub.kind.name} {pub.source.name}{muted}"


def _summary(p: Participant) -> str:
    """What is known about ``p`` (only the fields that are set), for join and connect lines."""
    parts = []
    if p.name:
        parts.append(f"name={_show(p.name)}")
    if p.kind is not ParticipantKind.STANDARD:
        parts.append(f"kind={p.kind.name}")
    if p.metadata:
        parts.append(f"metadata={_show(p.metadata)}")
    for key, value in sorted(p.attributes.items()):
        parts.append(f"{key}={_show(value)}")
    if p.track_publications:
        parts.append(f"tracks={len(p.track_publications)}")
    return " ".join(parts)


def _packet(packet: DataPacket) -> str:
    try:
        body = _show(packet.data.decode())
    except UnicodeDecodeError:
        body = f"{len(packet.data)} bytes"
    topic = f"topic={_show(packet.topic)} " if packet.topic else ""
    return f"{topic}{packet.kind.name} {body}"


def _describe(event: RoomEvent) -> tuple[str, str]:
    """(participant identity or ``-``, details) for one event."""
    match event:
        case ParticipantConnected(participant=p):
            return p.identity, _summary(p)
        case ParticipantDisconnected(participant=p):
            reason = p.disconnect_reason.name if p.disconnect_reason is not None else "?"
            return p.identity, f"reason={reason}"
        case ParticipantNameChanged(participant=p, old_name=old, new_name=new):
            return p.identity, _change(old, new)
        case ParticipantMetadataChanged(participant=p, old_metadata=old, new_metadata=new):
            return p.identity, _change(old, new)
        case ParticipantAttributesChanged(participant=p, changed_attributes=changed):
            # An empty value is how LiveKit reports a deleted attribute.
            return p.identity, " ".join(
                f"{k}={_show(v)}" if v else f"{k} deleted" for k, v in sorted(changed.items()))
        case RoomMetadataChanged(old_metadata=old, new_metadata=new):
            return "-", _change(old, new)
        case ConnectionStateChanged(state=state):
            return "-", state.value
        case Disconnected(reason=reason, message=message):
            why = f" ({' '.join(message.split())})" if message else ""
            return "-", f"{reason.name}{why}"
        case ConnectionQualityChanged(participant=p, quality=quality):
            return p.identity, quality.name
        case ActiveSpeakersChanged(speakers=speakers):
            return "-", "speakers: " + (", ".join(s.identity for s in speakers) or "none")
        case (TrackPublished(participant=p, publication=pub)
              | TrackUnpublished(participant=p, publication=pub)
              | TrackSubscribed(participant=p, publication=pub)
              | TrackUnsubscribed(participant=p, publication=pub)
              | TrackMuted(participant=p, publication=pub)
              | TrackUnmuted(participant=p, publication=pub)):
            return p.identity, _publication(pub)
        case TrackSubscriptionFailed(participant=p, track_sid=sid, error=error):
            return p.identity, f"{sid}: {' '.join(error.split())}"
        case LocalTrackPublished(publication=pub) | LocalTrackUnpublished(publication=pub):
            return "(local)", _publication(pub)
        case LocalTrackSubscribed(track=track):
            return "(local)", f"{track.sid} {_show(track.name)} {track.kind.name}"
        case DataReceived(packet=packet):
            return _ident(packet.participant), _packet(packet)
        case SipDTMFReceived(dtmf=dtmf):
            return _ident(dtmf.participant), f"digit={_show(dtmf.digit)} code={dtmf.code}"
        case TranscriptionReceived(participant=p, segments=segments):
            return _ident(p), " | ".join(
                _show(s.text) + ("" if s.final else " (interim)") for s in segments)
        case E2EEStateChanged(participant=p, state=state):
            return p.identity, state.name
        case _:  # Connected, Reconnecting, Reconnected carry no fields
            return "-", ""

