"""The room's state as a pure, I/O-free object (in the manner of h11 and wsproto).

`RoomState` is built from the server's ``JoinResponse`` and then fed every room-related
``SignalResponse``; `RoomState.handle` updates the participants, publications and room
metadata it owns and returns the events that the change causes, in the order a user should
see them. It never raises on server input: unknown participants, duplicate joins,
out-of-order (stale) updates and messages it does not know are logged and ignored. It has
no clock and no sockets, so hypothesis can drive it with arbitrary server histories
(tests/test_state_machine.py).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from livekit.protocol import models, rtc

from room.data import DataPacket, SipDTMF, TranscriptionSegment
from room.events._types import (
    ActiveSpeakersChanged,
    ConnectionQualityChanged,
    DataReceived,
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
    TrackUnmuted,
    TrackUnpublished,
    TranscriptionReceived,
)
from room.participant import LocalParticipant, Participant, RemoteParticipant
from room.publication import RemoteTrackPublication
from room.types import ConnectionQuality, DataPacketKind, DisconnectReason, ParticipantKind

__all__ = ["RoomState"]

_log = logging.getLogger(__name__)

_DISCONNECTED = models.ParticipantInfo.State.DISCONNECTED
# How many departed participant sids we remember, to ignore their late (stale) updates.
_DEPARTED_MEMORY = 4096


class RoomState:
    """Participants and room metadata, kept in step with the server's messages."""

    def __init__(self, join: rtc.JoinResponse, local: LocalParticipant) -> None:
        self.sid = join.room.sid
        self.name = join.room.name
        self.metadata = join.room.metadata
        self.local = local
        self.remote: dict[str, RemoteParticipant] = {}
        self._departed: OrderedDict[str, None] = OrderedDict()
        self._speakers: list[Participant] = []
        for info in join.other_participants:
            if (info.state != _DISCONNECTED and info.identity and info.sid
                    and info.identity != local.identity and info.sid != local.sid):
                self.remote[info.identity] = _new_remote(info)

    def rejoined(self, join: rtc.JoinResponse) -> list[RoomEvent]:
        """After a full rejoin (a new session): take its join response, and return the
        events that bring what the user saw in line with it: the departure of whoever is
        no longer there (reason unknown: it happened while we were away), the arrival of
        newcomers, and the changes of those who stayed, of us and of the room. The
        participant objects of those who stayed, and ours, are kept."""
        events: list[RoomEvent] = []
        local, info = self.local, join.participant
        local.sid = info.sid
        local.version = 0
        if info.HasField("permission"):
            local.can_publish_data = info.permission.can_publish_data
        events += _apply_info(local, info)
        if join.room.sid:
            self.sid = join.room.sid
        events += self._on_room(join.room)
        now = {i.identity: i for i in join.other_participants
               if i.identity and i.sid and i.state != _DISCONNECTED
               and i.identity != local.identity and i.sid != local.sid}
        for identity, p in list(self.remote.items()):
            fresh = now.get(identity)
            if fresh is None or fresh.sid != p.sid:
                events += self._remove(p, DisconnectReason.UNKNOWN_REASON)
            elif fresh.version >= p.version:
                events += _apply_info(p, fresh)
        for identity, fresh in now.items():
            if identity not in self.remote:
                p = _new_remote(fresh)
                self.remote[identity] = p
                events.append(ParticipantConnected(p))
                events += [TrackPublished(pub, p) for pub in _remote_pubs(p).values()]
        if self._speakers:
            for speaker in self._speakers:
                speaker.is_speaking = False
            self._speakers = []
            events.append(ActiveSpeakersChanged([]))
        return events

    @property
    def active_speakers(self) -> list[Participant]:
        return list(self._speakers)

    def participant_by_sid(self, sid: str) -> Participant | None:
        if sid and sid == self.local.sid:
            return self.local
        for p in self.remote.values():
            if p.sid == sid:
                return p
        return None

    def handle(self, msg: rtc.SignalResponse) -> list[RoomEvent]:
        """Apply one server message; return the events it causes (maybe none)."""
        which = msg.WhichOneof("message")
        if which == "update":
            return self._on_participants(msg.update.participants)
        if which == "room_update":
            return self._on_room(msg.room_update.room)
        if which == "speakers_changed":
            return self._on_speakers(msg.speakers_changed.speakers)
        if which == "connection_quality":
            return self._on_quality(msg.connection_quality.updates)
        _log.debug("room state ignores %s", which)
        return []

    def handle_data(self, packet: models.DataPacket, kind: DataPacketKind) -> list[RoomEvent]:
        """The events a received data packet causes (``kind``: the channel it came on).

        The sender is the participant the server stamped (``participant_identity``); a
        packet from the server itself has none, and one from someone not announced yet
        keeps only the identity.
        """
        which = packet.WhichOneof("value")
        identity = packet.participant_identity
        if not identity and which == "user":
            identity = packet.user.participant_identity  # older servers stamp only this
        sender = self.remote.get(identity) if identity else None
        if which == "user":
            user = packet.user
            topic = user.topic if user.HasField("topic") else None
            return [DataReceived(DataPacket(bytes(user.payload), kind, sender, topic,
                                            identity))]
        if which == "sip_dtmf":
            dtmf = packet.sip_dtmf
            return [SipDTMFReceived(SipDTMF(dtmf.code, dtmf.digit, sender, identity))]
        if which == "transcription":
            tr = packet.transcription
            who: Participant | None = (
                self.local if tr.transcribed_participant_identity == self.local.identity
                else self.remote.get(tr.transcribed_participant_identity))
            publication = who.track_publications.get(tr.track_id) if who else None
            segments = [TranscriptionSegment(s.id, s.text, s.start_time, s.end_time, s.final,
                                             s.language) for s in tr.segments]
            return [TranscriptionReceived(segments, who, publication)]
        _log.debug("data packet %s not handled here", which)
        return []

    # -- participants ------------------------------------------------------------------

    def _on_participants(self, infos: Sequence[models.ParticipantInfo]) -> list[RoomEvent]:
        events: list[RoomEvent] = []
        for info in infos:
            if info.sid == self.local.sid or (info.identity == self.local.identity
                                              and info.identity):
                if (info.sid and info.sid == self.local.sid
                        and info.version >= self.local.version):
                    events += _apply_info(self.local, info)
                continue
            if not info.identity or not info.sid:
                _log.warning("participant update without identity or sid ignored")
                continue
            if info.state == _DISCONNECTED:
                events += self._on_departure(info)
                continue
            if info.sid in self._departed:
                continue  # a late update about someone who has already left
            known = self.remote.get(info.identity)
            if known is not None and known.sid != info.sid:
                # Same identity, new session: the old one is gone (duplicate identity).
                events += self._remove(known, DisconnectReason.DUPLICATE_IDENTITY)
                known = None
            if known is None:
                p = _new_remote(info)
                self.remote[p.identity] = p
                events.append(ParticipantConnected(p))
                events += [TrackPublished(pub, p) for pub in _remote_pubs(p).values()]
            elif info.version >= known.version:
                events += _apply_info(known, info)
        return events

    def _on_departure(self, info: models.ParticipantInfo) -> list[RoomEvent]:
        known = self.remote.get(info.identity)
        if known is None or known.sid != info.sid:
            self._remember_departed(info.sid)
            return []
        return self._remove(known, DisconnectReason.from_wire(info.disconnect_reason))

    def _remove(self, p: RemoteParticipant, reason: DisconnectReason) -> list[RoomEvent]:
        del self.remote[p.identity]
        self._remember_departed(p.sid)
        p.disconnect_reason = reason
        events: list[RoomEvent] = []
        pubs = _remote_pubs(p)
        for sid in list(pubs):
            events.append(TrackUnpublished(pubs.pop(sid), p))
        if p in self._speakers:
            self._speakers = [s for s in self._speakers if s is not p]
            p.is_speaking = False
            events.append(ActiveSpeakersChanged(list(self._speakers)))
        events.append(ParticipantDisconnected(p))
        return events

    def _remember_departed(self, sid: str) -> None:
        self._departed[sid] = None
        while len(self._departed) > _DEPARTED_MEMORY:
            self._departed.popitem(last=False)

    # -- room ----------------------------------------------------------------------------

    def _on_room(self, room: models.Room) -> list[RoomEvent]:
        if room.sid and not self.sid:
            self.sid = room.sid
        if room.name:
            self.name = room.name
        if room.metadata == self.metadata:
            return []
        old, self.metadata = self.metadata, room.metadata
        return [RoomMetadataChanged(old, room.metadata)]

    # -- speakers and quality ------------------------------------------------------------

    def _on_speakers(self, speakers: Sequence[models.SpeakerInfo]) -> list[RoomEvent]:
        # The server sends only the speakers whose state changed.
        active = {id(p): p for p in self._speakers}
        for info in speakers:
            p = self.participant_by_sid(info.sid)
            if p is None:
                continue
            p.audio_level = info.level
            p.is_speaking = info.active
            if info.active:
                active[id(p)] = p
            else:
                active.pop(id(p), None)
        ordered = sorted(active.values(), key=lambda p: p.audio_level, reverse=True)
        if [id(p) for p in ordered] == [id(p) for p in self._speakers]:
            self._speakers = ordered
            return []
        self._speakers = ordered
        return [ActiveSpeakersChanged(list(ordered))]

    def _on_quality(self, updates: Sequence[rtc.ConnectionQualityInfo]) -> list[RoomEvent]:
        events: list[RoomEvent] = []
        for info in updates:
            p = self.participant_by_sid(info.participant_sid)
            if p is None or info.quality not in ConnectionQuality._value2member_map_:
                continue
            quality = ConnectionQuality(info.quality)
            if quality != p.connection_quality:
                p.connection_quality = quality
                events.append(ConnectionQualityChanged(p, quality))
        return events


def _new_remote(info: models.ParticipantInfo) -> RemoteParticipant:
    p = RemoteParticipant(info)
    pubs = _remote_pubs(p)
    for t in info.tracks:
        pubs[t.sid] = RemoteTrackPublication(t)
    return p


def _remote_pubs(p: RemoteParticipant) -> dict[str, RemoteTrackPublication]:
    return p._publications  # type: ignore[return-value]


def _apply_info(p: Participant, info: models.ParticipantInfo) -> list[RoomEvent]:
    """Bring ``p`` up to ``info``; return the change events, old and new values included."""
    events: list[RoomEvent] = []
    p.version = info.version
    p.kind = ParticipantKind.from_wire(info.kind)
    if info.name != p.name:
        old_name, p.name = p.name, info.name
        events.append(ParticipantNameChanged(p, old_name, info.name))
    if info.metadata != p.metadata:
        old_meta, p.metadata = p.metadata, info.metadata
        events.append(ParticipantMetadataChanged(p, old_meta, info.metadata))
    changed = _attribute_changes(p._attributes, info.attributes)
    if changed:
        p._attributes = dict(info.attributes)
        events.append(ParticipantAttributesChanged(changed, p))
    if isinstance(p, RemoteParticipant):
        events += _apply_tracks(p, info.tracks)
    return events


def _attribute_changes(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str]:
    changed = {k: v for k, v in new.items() if old.get(k) != v}
    changed.update({k: "" for k in old if k not in new})
    return changed


def _apply_tracks(p: RemoteParticipant, tracks: Sequence[models.TrackInfo]) -> list[RoomEvent]:
    events: list[RoomEvent] = []
    pubs = _remote_pubs(p)
    seen = set()
    for t in tracks:
        seen.add(t.sid)
        pub = pubs.get(t.sid)
        if pub is None:
            pub = pubs[t.sid] = RemoteTrackPublication(t)
            events.append(TrackPublished(pub, p))
            continue
        was_muted = pub.muted
        pub._apply(t)
        if pub.muted != was_muted:
            events.append(TrackMuted(p, pub) if pub.muted else TrackUnmuted(p, pub))
    for sid in [s for s in pubs if s not in seen]:
        events.append(TrackUnpublished(pubs.pop(sid), p))
    return events
