"""`RoomState` against a model of what a LiveKit server tells a client about a room.

A hypothesis `RuleBasedStateMachine` keeps two models:

* the *server*: the live remote participants (sid, identity, name, metadata, attributes,
  version, tracks with their muted flags), the local participant and the room metadata.
  Every server-side change bumps the participant's ``version`` and produces a snapshot
  (a ``ParticipantInfo``) that is sent at once or held back and delivered later, so the
  client sees duplicates, stale (older) versions and out-of-order deliveries;
* the *client's expected view*: what a correct client makes of the snapshots it has been
  given, in the order it was given them (newest version of each session wins, a departed
  session never comes back, a new session for a known identity replaces the old one).

Each rule builds `rtc.SignalResponse` messages, works out the events a correct client emits
for them, feeds them to `RoomState.handle` and compares. The invariants compare the whole
state with the expected view after every step.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from livekit.protocol import models, rtc

from room.events import (
    ActiveSpeakersChanged,
    ConnectionQualityChanged,
    ParticipantAttributesChanged,
    ParticipantConnected,
    ParticipantDisconnected,
    ParticipantMetadataChanged,
    ParticipantNameChanged,
    RoomEvent,
    RoomMetadataChanged,
    TrackMuted,
    TrackPublished,
    TrackUnmuted,
    TrackUnpublished,
)
from room.participant import LocalParticipant, Participant
from room.state import RoomState
from room.types import ConnectionQuality, DisconnectReason

_State = models.ParticipantInfo.State
JOINING, JOINED, ACTIVE, DISCONNECTED = (
    int(_State.JOINING), int(_State.JOINED), int(_State.ACTIVE), int(_State.DISCONNECTED))
LIVE_STATES = (JOINING, JOINED, ACTIVE)

ROOM_SID, ROOM_NAME = "RM_test", "test-room"
LOCAL_SID, LOCAL_IDENTITY = "PA_local", "me"
IDENTITIES = ("alice", "bob", "carol", "dave")
NAMES = ("", "Alice", "Bob", "Zoë")
METADATA = ("", "m1", '{"role": "host"}', "m3")
ATTR_KEYS = ("a", "b", "c")
ATTR_VALUES = ("x", "y")
# Wire values of DisconnectReason; 999 is newer than the library (-> UNKNOWN_REASON).
REASONS = (0, 1, 2, 4, 9, 14, 999)
QUALITIES = (0, 1, 2, 3, 7)  # 7 is not a ConnectionQuality: ignored
GOOD = int(ConnectionQuality.GOOD)

names = st.sampled_from(NAMES)
metadatas = st.sampled_from(METADATA)
attribute_dicts = st.dictionaries(st.sampled_from(ATTR_KEYS), st.sampled_from(ATTR_VALUES),
                                  max_size=3)
# key -> new value, or None to delete the key
attribute_deltas = st.dictionaries(st.sampled_from(ATTR_KEYS),
                                   st.none() | st.sampled_from(ATTR_VALUES), max_size=3)
track_mutes = st.lists(st.booleans(), max_size=2)  # one muted flag per initial track
picks = st.integers(min_value=0, max_value=10_000)  # an index, taken modulo a list's length

Desc = tuple[object, ...]  # a comparable description of one event


@dataclass(frozen=True)
class Snap:
    """One version of one participant session, as the server describes it."""

    sid: str
    identity: str
    version: int
    state: int
    name: str = ""
    metadata: str = ""
    attributes: tuple[tuple[str, str], ...] = ()  # sorted items
    tracks: tuple[tuple[str, bool], ...] = ()  # (track sid, muted), in publication order
    reason: int = 0

    @property
    def attrs(self) -> dict[str, str]:
        return dict(self.attributes)

    def info(self) -> models.ParticipantInfo:
        return models.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            version=self.version,
            state=cast(models.ParticipantInfo.State, self.state),
            name=self.name,
            metadata=self.metadata,
            attributes=self.attrs,
            disconnect_reason=cast(models.DisconnectReason, self.reason),
            tracks=[
                models.TrackInfo(sid=t, name=f"track {t}", type=models.TrackType.AUDIO,
                                 source=models.TrackSource.MICROPHONE, muted=muted)
                for t, muted in self.tracks
            ],
        )


def _attrs(d: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(d.items()))


def _expected_reason(wire: int) -> int:
    return wire if wire in DisconnectReason._value2member_map_ else 0


def _update(msg_infos: Sequence[models.ParticipantInfo]) -> rtc.SignalResponse:
    return rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=list(msg_infos)))


def _describe(ev: RoomEvent) -> Desc:
    match ev:
        case ParticipantConnected(participant=p):
            return ("connected", p.sid)
        case ParticipantDisconnected(participant=p):
            reason = None if p.disconnect_reason is None else int(p.disconnect_reason)
            return ("disconnected", p.sid, reason)
        case ParticipantNameChanged(participant=p, old_name=old, new_name=new):
            return ("name", p.sid, old, new)
        case ParticipantMetadataChanged(participant=p, old_metadata=old, new_metadata=new):
            return ("metadata", p.sid, old, new)
        case ParticipantAttributesChanged(changed_attributes=changed, participant=p):
            return ("attributes", p.sid, _attrs(changed))
        case TrackPublished(publication=pub, participant=p):
            return ("published", p.sid, pub.sid)
        case TrackUnpublished(publication=pub, participant=p):
            return ("unpublished", p.sid, pub.sid)
        case TrackMuted(participant=p, publication=pub):
            return ("muted", p.sid, pub.sid)
        case TrackUnmuted(participant=p, publication=pub):
            return ("unmuted", p.sid, pub.sid)
        case ActiveSpeakersChanged(speakers=speakers):
            return ("speakers", tuple(p.sid for p in speakers))
        case RoomMetadataChanged(old_metadata=old, new_metadata=new):
            return ("room_metadata", old, new)
        case ConnectionQualityChanged(participant=p, quality=q):
            return ("quality", p.sid, int(q))
    return ("unexpected", type(ev).__name__)


def _participant_of(ev: RoomEvent) -> Participant | None:
    p = getattr(ev, "participant", None)
    return p if isinstance(p, Participant) else None


class RoomStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._next_id = 0
        # -- the server ---------------------------------------------------------------
        self.server: dict[str, Snap] = {}  # live remote sessions by identity
        self.server_local = Snap(LOCAL_SID, LOCAL_IDENTITY, 1, ACTIVE)
        self.server_room_metadata = ""
        self.sent: list[Snap] = []  # every snapshot ever sent or held (for re-delivery)
        self.pending: list[Snap] = []  # held back, delivered later (out of order)
        # -- what a correct client makes of what it was given -------------------------
        self.view: dict[str, Snap] = {}  # remote participants by identity
        self.local_view = self.server_local
        self.room_metadata_view = ""
        self.dead: set[str] = set()  # sessions the client knows are over
        self.levels: dict[str, float] = {}  # active speakers: sid -> audio level
        self.quality: dict[str, int] = {LOCAL_SID: GOOD}  # present sids -> quality
        # -- bookkeeping about the events RoomState emitted ---------------------------
        self.initial: set[str] = set()  # sids known from the JoinResponse (no event)
        self.ever_present: set[str] = set()
        self.n_connected: Counter[str] = Counter()
        self.n_disconnected: Counter[str] = Counter()
        self.objects: dict[str, Participant] = {}  # sid -> the participant object
        self.state: RoomState | None = None

    # -- helpers --------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._next_id += 1
        return f"{prefix}_{self._next_id}"

    @property
    def rs(self) -> RoomState:
        assert self.state is not None
        return self.state

    def _speaker_order(self) -> tuple[str, ...]:
        return tuple(sorted(self.levels, key=lambda sid: -self.levels[sid]))

    def _present_sids(self) -> list[str]:
        return [*sorted(s.sid for s in self.view.values()), LOCAL_SID]

    def _candidates(self) -> list[str]:
        """Sids a speaker / quality message may name: present, departed and unknown ones."""
        return self._present_sids() + sorted(self.dead)[:3] + ["PA_nobody"]

    # -- the client model -----------------------------------------------------------------

    def _diff(self, old: Snap, new: Snap, *, remote: bool) -> list[Desc]:
        sid = new.sid
        out: list[Desc] = []
        if old.name != new.name:
            out.append(("name", sid, old.name, new.name))
        if old.metadata != new.metadata:
            out.append(("metadata", sid, old.metadata, new.metadata))
        before, after = old.attrs, new.attrs
        changed = {k: v for k, v in after.items() if before.get(k) != v}
        changed |= {k: "" for k in before if k not in after}
        if changed:
            out.append(("attributes", sid, _attrs(changed)))
        if remote:
            old_tracks, new_tracks = dict(old.tracks), dict(new.tracks)
            for t, muted in new.tracks:
                if t not in old_tracks:
                    out.append(("published", sid, t))
                elif old_tracks[t] != muted:
                    out.append(("muted" if muted else "unmuted", sid, t))
            out += [("unpublished", sid, t) for t in old_tracks if t not in new_tracks]
        return out

    def _model_remove(self, cur: Snap, reason: int) -> list[Desc]:
        del self.view[cur.identity]
        self.dead.add(cur.sid)
        self.quality.pop(cur.sid, None)
        out: list[Desc] = [("unpublished", cur.sid, t) for t, _ in cur.tracks]
        if self.levels.pop(cur.sid, None) is not None:
            out.append(("speakers", self._speaker_order()))
        out.append(("disconnected", cur.sid, _expected_reason(reason)))
        return out

    def _model_add(self, s: Snap) -> list[Desc]:
        self.view[s.identity] = s
        self.quality[s.sid] = GOOD
        self.ever_present.add(s.sid)
        return [("connected", s.sid)] + [("published", s.sid, t) for t, _ in s.tracks]

    def _model_apply(self, s: Snap) -> list[Desc]:
        """What a correct client does with one ParticipantInfo; returns the events."""
        if s.sid == LOCAL_SID:
            if s.version < self.local_view.version:
                return []
            changes = self._diff(self.local_view, s, remote=False)
            self.local_view = s
            return changes
        if s.identity == LOCAL_IDENTITY or not s.identity or not s.sid or s.sid in self.dead:
            return []
        cur = self.view.get(s.identity)
        if s.state == DISCONNECTED:
            self.dead.add(s.sid)
            if cur is not None and cur.sid == s.sid:
                return self._model_remove(cur, s.reason)
            return []
        out: list[Desc] = []
        if cur is not None and cur.sid != s.sid:  # a new session for a known identity
            out += self._model_remove(cur, int(DisconnectReason.DUPLICATE_IDENTITY))
            cur = None
        if cur is None:
            return out + self._model_add(s)
        if s.version < cur.version:
            return out  # stale
        out += self._diff(cur, s, remote=True)
        self.view[s.identity] = s
        return out

    # -- driving RoomState ----------------------------------------------------------------

    def _send_infos(self, snaps: Sequence[Snap]) -> None:
        expected: list[Desc] = []
        for s in snaps:
            expected += self._model_apply(s)
        self._deliver(_update([s.info() for s in snaps]), expected)

    def _send_or_hold(self, snap: Snap, hold: bool) -> None:
        self.sent.append(snap)
        if hold:
            self.pending.append(snap)
        else:
            self._send_infos([snap])

    def _deliver(self, msg: rtc.SignalResponse, expected: list[Desc]) -> None:
        events = self.rs.handle(msg)  # must never raise
        assert isinstance(events, list)
        actual = [_describe(e) for e in events]
        assert Counter(actual) == Counter(expected), (
            f"message {msg}\nexpected events {expected}\nactual events   {actual}")
        self._check_order(events)
        self._check_objects(events)
        self._check_applied(events)

    def _check_order(self, events: list[RoomEvent]) -> None:
        """Per participant: ParticipantConnected first, ParticipantDisconnected last."""
        by_sid: dict[str, list[RoomEvent]] = {}
        for e in events:
            p = _participant_of(e)
            if p is not None:
                by_sid.setdefault(p.sid, []).append(e)
        for sid, evs in by_sid.items():
            for i, e in enumerate(evs):
                if isinstance(e, ParticipantConnected):
                    assert i == 0, f"events about {sid} before its ParticipantConnected: {evs}"
                if isinstance(e, ParticipantDisconnected):
                    assert i == len(evs) - 1, f"events about {sid} after it left: {evs}"

    def _check_objects(self, events: list[RoomEvent]) -> None:
        """Events carry the state's own participant objects; count connects/disconnects."""
        rs = self.rs
        for e in events:
            p = _participant_of(e)
            if isinstance(e, ParticipantConnected):
                assert e.participant.sid not in self.objects, "a sid was announced twice"
                self.objects[e.participant.sid] = e.participant
                self.n_connected[e.participant.sid] += 1
            elif p is not None:
                expected_obj = rs.local if p.sid == LOCAL_SID else self.objects.get(p.sid)
                assert p is expected_obj, f"{type(e).__name__} carries a foreign object {p!r}"
            if isinstance(e, ParticipantDisconnected):
                self.n_disconnected[e.participant.sid] += 1
            if isinstance(e, ActiveSpeakersChanged):
                for s in e.speakers:
                    assert s is (rs.local if s.sid == LOCAL_SID else self.objects[s.sid])

    def _check_applied(self, events: list[RoomEvent]) -> None:
        """The state already reflects every event when the list is returned (the last
        event about a thing describes its current value)."""
        rs = self.rs
        seen: set[tuple[object, ...]] = set()

        def last(*key: object) -> bool:
            if key in seen:
                return False
            seen.add(key)
            return True

        for e in reversed(events):
            match e:
                case ParticipantConnected(participant=p) if last("presence", id(p)):
                    assert rs.remote.get(p.identity) is p
                case ParticipantDisconnected(participant=p) if last("presence", id(p)):
                    assert all(q is not p for q in rs.remote.values())
                case ParticipantNameChanged(participant=p, new_name=new) if last("name", id(p)):
                    assert p.name == new
                case ParticipantMetadataChanged(participant=p, new_metadata=new) if last(
                        "meta", id(p)):
                    assert p.metadata == new
                case ParticipantAttributesChanged(changed_attributes=changed, participant=p):
                    for k, v in changed.items():
                        if last("attr", id(p), k):
                            assert p.attributes.get(k, "") == v
                case (TrackPublished(publication=pub, participant=p)
                      | TrackUnpublished(publication=pub, participant=p)) if last("pub", id(pub)):
                    present = p.track_publications.get(pub.sid) is pub
                    assert present == isinstance(e, TrackPublished)
                case (TrackMuted(publication=pub) | TrackUnmuted(publication=pub)) if last(
                        "mute", id(pub)):
                    assert pub.muted == isinstance(e, TrackMuted)
                case ActiveSpeakersChanged(speakers=speakers) if last("speakers"):
                    assert [p.sid for p in speakers] == [p.sid for p in rs.active_speakers]
                case RoomMetadataChanged(new_metadata=new) if last("room"):
                    assert rs.metadata == new
                case ConnectionQualityChanged(participant=p, quality=q) if last("q", id(p)):
                    assert p.connection_quality == q

    # -- the join ---------------------------------------------------------------------------

    @initialize(
        others=st.lists(
            st.tuples(st.sampled_from(IDENTITIES), names, metadatas, attribute_dicts,
                      track_mutes, st.sampled_from(LIVE_STATES), st.integers(1, 5)),
            max_size=3, unique_by=lambda t: t[0]),
        local_name=names,
        local_metadata=metadatas,
        local_attributes=attribute_dicts,
        room_metadata=metadatas,
        junk=st.sets(st.sampled_from(["disconnected", "local_identity", "no_identity",
                                      "no_sid"])),
    )
    def join(
        self,
        others: list[tuple[str, str, str, dict[str, str], list[bool], int, int]],
        local_name: str,
        local_metadata: str,
        local_attributes: dict[str, str],
        room_metadata: str,
        junk: set[str],
    ) -> None:
        self.server_local = self.local_view = Snap(
            LOCAL_SID, LOCAL_IDENTITY, 1, ACTIVE, local_name, local_metadata,
            _attrs(local_attributes))
        self.sent.append(self.server_local)
        self.server_room_metadata = self.room_metadata_view = room_metadata
        infos: list[models.ParticipantInfo] = []
        for identity, name, metadata, attributes, mutes, state, version in others:
            snap = Snap(self._new_id("PA"), identity, version, state, name, metadata,
                        _attrs(attributes), tuple((self._new_id("TR"), m) for m in mutes))
            self.server[identity] = self.view[identity] = snap
            self.sent.append(snap)
            self.initial.add(snap.sid)
            self.ever_present.add(snap.sid)
            self.quality[snap.sid] = GOOD
            infos.append(snap.info())
        # Entries a client must not list as remote participants.
        if "disconnected" in junk:
            gone = Snap(self._new_id("PA"), "eve", 3, DISCONNECTED, reason=1)
            self.dead.add(gone.sid)
            infos.append(gone.info())
        if "local_identity" in junk:
            infos.append(Snap(self._new_id("PA"), LOCAL_IDENTITY, 1, ACTIVE, "ghost").info())
        if "no_identity" in junk:
            infos.append(Snap(self._new_id("PA"), "", 1, ACTIVE, "nobody").info())
        if "no_sid" in junk:
            infos.append(Snap("", "frank", 1, ACTIVE, "no sid").info())
        join = rtc.JoinResponse(
            room=models.Room(sid=ROOM_SID, name=ROOM_NAME, metadata=room_metadata),
            participant=self.server_local.info(),
            other_participants=infos,
            ping_interval=5,
            ping_timeout=15,
        )
        local = LocalParticipant(join.participant)
        self.state = RoomState(join, local)
        for p in self.state.remote.values():
            self.objects[p.sid] = p

    # -- participants joining and leaving ---------------------------------------------------

    @rule(
        identity=st.sampled_from(IDENTITIES),
        name=names,
        metadata=metadatas,
        attributes=attribute_dicts,
        mutes=track_mutes,
        state=st.sampled_from(LIVE_STATES),
        old_notice=st.sampled_from(["none", "before", "after", "batch_before", "batch_after"]),
    )
    def participant_joins(self, identity: str, name: str, metadata: str,
                          attributes: dict[str, str], mutes: list[bool], state: int,
                          old_notice: str) -> None:
        """A new session; if the identity is already in the room, it replaces the old one
        (duplicate identity) and the old one's DISCONNECTED may come before, after, in
        the same message, or never."""
        new = Snap(self._new_id("PA"), identity, 1, state, name, metadata, _attrs(attributes),
                   tuple((self._new_id("TR"), m) for m in mutes))
        old = self.server.get(identity)
        self.server[identity] = new
        self.sent.append(new)
        if old is None:
            self._send_infos([new])
            return
        old_left = dataclasses.replace(old, version=old.version + 1, state=DISCONNECTED,
                                       reason=int(DisconnectReason.DUPLICATE_IDENTITY))
        self.sent.append(old_left)
        match old_notice:
            case "before":
                self._send_infos([old_left])
                self._send_infos([new])
            case "after":
                self._send_infos([new])
                self._send_infos([old_left])
            case "batch_before":
                self._send_infos([old_left, new])
            case "batch_after":
                self._send_infos([new, old_left])
            case _:
                self._send_infos([new])

    @precondition(lambda self: bool(self.server))
    @rule(pick=picks, reason=st.sampled_from(REASONS), hold=st.booleans())
    def participant_leaves(self, pick: int, reason: int, hold: bool) -> None:
        identity = sorted(self.server)[pick % len(self.server)]
        cur = self.server.pop(identity)
        self._send_or_hold(
            dataclasses.replace(cur, version=cur.version + 1, state=DISCONNECTED, reason=reason),
            hold)

    @rule(identity=st.sampled_from(IDENTITIES), reason=st.sampled_from(REASONS),
          version=st.integers(0, 9))
    def unknown_participant_leaves(self, identity: str, reason: int, version: int) -> None:
        """A DISCONNECTED update for a session this client never saw (maybe for an identity
        that is present with another sid)."""
        snap = Snap(self._new_id("PA"), identity, version, DISCONNECTED, "ghost", reason=reason)
        self.sent.append(snap)
        self._send_infos([snap])

    # -- participant updates ----------------------------------------------------------------

    @precondition(lambda self: bool(self.server))
    @rule(pick=picks, name=st.none() | names, metadata=st.none() | metadatas,
          delta=attribute_deltas, state=st.sampled_from(LIVE_STATES), hold=st.booleans())
    def participant_updates(self, pick: int, name: str | None, metadata: str | None,
                            delta: dict[str, str | None], state: int, hold: bool) -> None:
        """Name / metadata / attribute changes (or none: a bare version bump)."""
        identity = sorted(self.server)[pick % len(self.server)]
        cur = self.server[identity]
        new = self._changed(cur, name, metadata, delta, state=state)
        self.server[identity] = new
        self._send_or_hold(new, hold)

    @precondition(lambda self: bool(self.server))
    @rule(pick=picks, op=st.sampled_from(["publish", "unpublish", "mute", "unmute"]),
          which=picks, muted=st.booleans(), hold=st.booleans())
    def participant_tracks(self, pick: int, op: str, which: int, muted: bool,
                           hold: bool) -> None:
        identity = sorted(self.server)[pick % len(self.server)]
        cur = self.server[identity]
        tracks = list(cur.tracks)
        if op == "publish" or not tracks:
            tracks.append((self._new_id("TR"), muted))
        elif op == "unpublish":
            del tracks[which % len(tracks)]
        else:
            i = which % len(tracks)
            tracks[i] = (tracks[i][0], op == "mute")
        new = dataclasses.replace(cur, version=cur.version + 1, tracks=tuple(tracks))
        self.server[identity] = new
        self._send_or_hold(new, hold)

    @rule(name=st.none() | names, metadata=st.none() | metadatas, delta=attribute_deltas,
          hold=st.booleans())
    def local_participant_updates(self, name: str | None, metadata: str | None,
                                  delta: dict[str, str | None], hold: bool) -> None:
        self.server_local = self._changed(self.server_local, name, metadata, delta)
        self._send_or_hold(self.server_local, hold)

    @staticmethod
    def _changed(cur: Snap, name: str | None, metadata: str | None,
                 delta: dict[str, str | None], state: int | None = None) -> Snap:
        attributes = cur.attrs
        for k, v in delta.items():
            if v is None:
                attributes.pop(k, None)
            else:
                attributes[k] = v
        return dataclasses.replace(
            cur,
            version=cur.version + 1,
            state=cur.state if state is None else state,
            name=cur.name if name is None else name,
            metadata=cur.metadata if metadata is None else metadata,
            attributes=_attrs(attributes),
        )

    # -- delayed, duplicate and stale deliveries --------------------------------------------

    @precondition(lambda self: bool(self.pending))
    @rule(which=st.lists(picks, min_size=1, max_size=3))
    def deliver_held(self, which: list[int]) -> None:
        """Held-back snapshots arrive (possibly after newer ones), one message."""
        batch = [self.pending.pop(i % len(self.pending)) for i in which if self.pending]
        self._send_infos(batch)

    @precondition(lambda self: bool(self.sent))
    @rule(which=st.lists(picks, min_size=1, max_size=3))
    def redeliver(self, which: list[int]) -> None:
        """Snapshots the server already sent arrive again: duplicates, or stale versions,
        or news about sessions that are over."""
        self._send_infos([self.sent[i % len(self.sent)] for i in which])

    # -- the room, speakers, connection quality ---------------------------------------------

    @rule(metadata=metadatas, with_name=st.booleans())
    def room_update(self, metadata: str, with_name: bool) -> None:
        self.server_room_metadata = metadata
        expected: list[Desc] = []
        if metadata != self.room_metadata_view:
            expected.append(("room_metadata", self.room_metadata_view, metadata))
            self.room_metadata_view = metadata
        room = (models.Room(sid=ROOM_SID, name=ROOM_NAME, metadata=metadata) if with_name
                else models.Room(metadata=metadata))
        self._deliver(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=room)), expected)

    @rule(entries=st.lists(st.tuples(picks, st.booleans(), st.integers(1, 64)), max_size=4))
    def speakers_changed(self, entries: list[tuple[int, bool, int]]) -> None:
        """The server sends the speakers whose state changed; levels are kept distinct
        among the active speakers so that "loudest first" is a total order."""
        candidates = self._candidates()
        present = set(self._present_sids())
        before = self._speaker_order()
        infos: list[models.SpeakerInfo] = []
        used: set[str] = set()
        for pick, active, level in entries:
            sid = candidates[pick % len(candidates)]
            if sid in used:
                continue
            used.add(sid)
            value = level / 8
            if sid in present:
                if active:
                    taken = {v for s, v in self.levels.items() if s != sid}
                    while value in taken:
                        value += 1 / 8
                    self.levels[sid] = value
                else:
                    self.levels.pop(sid, None)
            infos.append(models.SpeakerInfo(sid=sid, level=value, active=active))
        after = self._speaker_order()
        expected: list[Desc] = [("speakers", after)] if after != before else []
        msg = rtc.SignalResponse(speakers_changed=rtc.SpeakersChanged(speakers=infos))
        self._deliver(msg, expected)

    @rule(entries=st.lists(st.tuples(picks, st.sampled_from(QUALITIES)), max_size=3))
    def connection_quality(self, entries: list[tuple[int, int]]) -> None:
        candidates = self._candidates()
        present = set(self._present_sids())
        expected: list[Desc] = []
        updates: list[rtc.ConnectionQualityInfo] = []
        for pick, quality in entries:
            sid = candidates[pick % len(candidates)]
            if sid in present and quality in QUALITIES[:4] and quality != self.quality[sid]:
                self.quality[sid] = quality
                expected.append(("quality", sid, quality))
            updates.append(rtc.ConnectionQualityInfo(
                participant_sid=sid, quality=cast(models.ConnectionQuality, quality), score=3.5))
        msg = rtc.SignalResponse(connection_quality=rtc.ConnectionQualityUpdate(updates=updates))
        self._deliver(msg, expected)

    # -- junk -------------------------------------------------------------------------------

    @rule(kind=st.sampled_from([
        "empty", "pong", "trickle", "refresh_token", "leave", "track_published", "mute",
        "empty_update", "no_identity", "no_identity_gone", "no_sid", "local_identity",
        "no_speakers", "no_quality", "second_join",
    ]), pick=picks)
    def junk(self, kind: str, pick: int) -> None:
        """Messages the room state has nothing to do with, or malformed participant info:
        no events, no change."""
        sids = [s.sid for s in self.view.values()] or ["PA_nobody"]
        sid = sids[pick % len(sids)]
        identities = sorted(self.view) or ["alice"]
        identity = identities[pick % len(identities)]
        msg: rtc.SignalResponse
        match kind:
            case "empty":
                msg = rtc.SignalResponse()
            case "pong":
                msg = rtc.SignalResponse(pong_resp=rtc.Pong(last_ping_timestamp=1, timestamp=2))
            case "trickle":
                msg = rtc.SignalResponse(trickle=rtc.TrickleRequest(
                    candidateInit='{"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}',
                    target=rtc.SignalTarget.SUBSCRIBER))
            case "refresh_token":
                msg = rtc.SignalResponse(refresh_token="not-a-token")
            case "leave":
                msg = rtc.SignalResponse(leave=rtc.LeaveRequest(
                    can_reconnect=True, reason=models.DisconnectReason.SERVER_SHUTDOWN))
            case "track_published":
                msg = rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(
                    cid="cid", track=models.TrackInfo(sid="TR_local")))
            case "mute":
                msg = rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid="TR_local", muted=True))
            case "empty_update":
                msg = _update([])
            case "no_identity":
                msg = _update([Snap(sid, "", 99, ACTIVE, "evil", "evil").info()])
            case "no_identity_gone":
                msg = _update([Snap(sid, "", 99, DISCONNECTED, reason=4).info()])
            case "no_sid":
                msg = _update([Snap("", identity, 99, DISCONNECTED, reason=4).info(),
                               Snap("", identity, 99, ACTIVE, "no sid").info()])
            case "local_identity":
                msg = _update([Snap("PA_imposter", LOCAL_IDENTITY, 99, ACTIVE, "imposter").info()])
            case "no_speakers":
                msg = rtc.SignalResponse(speakers_changed=rtc.SpeakersChanged())
            case "no_quality":
                msg = rtc.SignalResponse(connection_quality=rtc.ConnectionQualityUpdate())
            case _:
                msg = rtc.SignalResponse(join=rtc.JoinResponse(
                    room=models.Room(sid="RM_other", name="other", metadata="other")))
        self._deliver(msg, [])

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def remote_participants_match(self) -> None:
        if self.state is None:
            return
        rs = self.rs
        assert {i: p.sid for i, p in rs.remote.items()} == {i: s.sid for i, s in self.view.items()}
        for identity, s in self.view.items():
            p = rs.remote[identity]
            assert p is self.objects[s.sid]
            assert (p.identity, p.name, p.metadata, p.attributes, p.version) == (
                identity, s.name, s.metadata, s.attrs, s.version)
            assert {t: pub.muted for t, pub in p.track_publications.items()} == dict(s.tracks)
            assert int(p.connection_quality) == self.quality[s.sid]
            assert p.disconnect_reason is None
            assert rs.participant_by_sid(s.sid) is p

    @invariant()
    def local_room_and_speakers_match(self) -> None:
        if self.state is None:
            return
        rs, lv = self.rs, self.local_view
        assert (rs.local.sid, rs.local.identity) == (LOCAL_SID, LOCAL_IDENTITY)
        assert (rs.local.name, rs.local.metadata, rs.local.attributes, rs.local.version) == (
            lv.name, lv.metadata, lv.attrs, lv.version)
        assert int(rs.local.connection_quality) == self.quality[LOCAL_SID]
        assert (rs.sid, rs.name, rs.metadata) == (ROOM_SID, ROOM_NAME, self.room_metadata_view)
        assert tuple(p.sid for p in rs.active_speakers) == self._speaker_order()
        for p in rs.active_speakers:
            assert p.is_speaking and p.audio_level == self.levels[p.sid]

    @invariant()
    def each_session_announced_once(self) -> None:
        if self.state is None:
            return
        present = {s.sid for s in self.view.values()}
        for sid in self.ever_present:
            assert self.n_connected[sid] == (0 if sid in self.initial else 1), sid
            assert self.n_disconnected[sid] == (0 if sid in present else 1), sid
        assert set(self.n_connected) <= self.ever_present
        assert set(self.n_disconnected) <= self.ever_present
        for sid in self.ever_present - present:  # the reason is kept on the departed object
            assert self.objects[sid].disconnect_reason is not None


RoomStateMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    derandomize=True,
    database=None,
    deadline=None,
)
TestRoomState = RoomStateMachine.TestCase
