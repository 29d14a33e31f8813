"""The dev server's rooms and participant sessions (all mutation is synchronous).

A `Session` is one joined participant: its `ParticipantInfo`, its grants and, while it
has a signalling connection, an outbox (a bounded memory stream drained by that
connection's writer task). A session outlives its connection: one that drops without a
``leave`` leaves the session in the room, and a resume (``reconnect=1``) attaches a new
one (`Session.attach`). Nothing here awaits, so room state changes are atomic with
respect to other connections; a participant whose outbox overflows is disconnected
rather than allowed to stall the room.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from collections.abc import Iterable, Mapping

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from livekit.protocol import models, rtc

from room.devserver.auth import Grants
from room.devserver.http import WebSocket
from room.devserver.sfu import RoomMedia
from room.devserver.webrtc import SessionRtc

__all__ = ["DevRoom", "Session", "new_sid"]

_log = logging.getLogger(__name__)

_OUTBOX = 4096
# How many participants' latest updates a session remembers (livekit-server: 128).
_UPDATE_MEMORY = 128
# livekit-server's default limits for what participants may set about themselves (bytes).
MAX_NAME = 256
MAX_METADATA = 512 * 1024
MAX_ATTRIBUTES = 64 * 1024

_KINDS = {"ingress": 1, "egress": 2, "sip": 3, "agent": 4}


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(9).replace("-", "x").replace("_", "y")


class Session:
    """One participant's presence in a room, as the server sees it."""

    def __init__(self, grants: Grants, protocol: int, client_protocol: int = 0) -> None:
        self.grants = grants
        self.protocol = protocol
        now = time.time()
        self.info = models.ParticipantInfo(
            sid=new_sid("PA_"),
            identity=grants.identity,
            name=grants.name,
            metadata=grants.metadata,
            attributes=dict(grants.attributes),
            state=models.ParticipantInfo.State.ACTIVE,
            joined_at=int(now),
            joined_at_ms=int(now * 1000),
            version=1,
            # What the client said it speaks (RPC v2 over data streams from 1 on): other
            # clients choose how to call it from this, as with a LiveKit server.
            client_protocol=client_protocol,
            kind=_KINDS.get(grants.kind, 0),  # type: ignore[arg-type]
            permission=models.ParticipantPermission(
                can_subscribe=grants.can_subscribe,
                can_publish=grants.can_publish,
                can_publish_data=grants.can_publish_data,
                hidden=grants.hidden,
                can_update_metadata=grants.can_update_own_metadata,
            ),
        )
        # The signalling connection it has now (none while it is away: see `attach`).
        self.ws: WebSocket | None = None
        self.outbox: MemoryObjectSendStream[rtc.SignalResponse | None] | None = None
        self.closed = anyio.Event()
        self.close_reason = models.DisconnectReason.UNKNOWN_REASON
        self.rtc: SessionRtc | None = None  # its peer connections (owned by the server)
        # A simulated network partition, until then (monotonic): nothing is sent to it
        # or taken from it.
        self.partitioned_until = 0.0
        # The highest reliable data sequence relayed from it (aiortc loop only).
        self.last_reliable_sequence = 0
        # When its last signal request arrived (monotonic), and the latest update sent
        # (or meant) for each participant, as livekit-server keeps them: a resume is told
        # who left since that request (`departed_since`).
        self.last_signal_at = time.monotonic()
        self._updates: collections.OrderedDict[str, tuple[str, int, int, float]] = (
            collections.OrderedDict())
        # Its peer connections failed (monotonic deadline): it is removed then unless it
        # resumes first (see `room.devserver.faults`).
        self.failed_until: float | None = None
        # Whether it is sent every published track (the join's ``auto_subscribe``).
        self.auto_subscribe = True
        # The participants whose connection quality it has been told (sids).
        self.quality_told: set[str] = set()

    @property
    def subscriber_primary(self) -> bool:
        """Whether its subscriber connection is the primary one, as livekit-server decides:
        the client's protocol supports it (> 2) and its token may subscribe. If not, no
        subscriber connection is offered and data reaches it on its publisher connection."""
        return self.protocol > 2 and self.grants.can_subscribe

    @property
    def identity(self) -> str:
        return self.info.identity

    @property
    def hidden(self) -> bool:
        return self.grants.hidden

    @property
    def partitioned(self) -> bool:
        return time.monotonic() < self.partitioned_until

    def send(self, msg: rtc.SignalResponse) -> None:
        """Queue ``msg`` on its signalling connection; a participant too slow to keep up
        is disconnected. While it has no connection (away, about to resume) the message
        is lost, as on livekit-server; participant updates are remembered regardless."""
        if self.closed.is_set():
            return
        if msg.WhichOneof("message") == "update":
            self._note(msg.update.participants)
        if self.outbox is None or self.partitioned:
            return
        try:
            self.outbox.send_nowait(msg)
        except anyio.WouldBlock:
            _log.warning("dev server: %s is not reading; disconnecting it", self.identity)
            self.close(models.DisconnectReason.CONNECTION_TIMEOUT)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # that connection is ending; its task lets the session know

    def attach(self, ws: WebSocket) -> MemoryObjectReceiveStream[rtc.SignalResponse | None]:
        """Make ``ws`` its signalling connection, and return the stream of what to write
        to it. A previous connection is let go: its writer sends what is queued and
        closes it (livekit-server closes the old WebSocket of a resumed session)."""
        if self.outbox is not None:
            self.outbox.close()
        self.ws = ws
        self.outbox, inbox = anyio.create_memory_object_stream[rtc.SignalResponse | None](
            _OUTBOX)
        return inbox

    def detach(self, ws: WebSocket | None) -> bool:
        """``ws`` is gone: if it was its signalling connection, it has none now (True)."""
        if ws is None or self.ws is not ws:
            return False
        self.ws = None
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        return True

    def end_signal(self) -> None:
        """Close its signalling connection once what is queued is written (a final
        ``leave``); the session itself goes on, waiting for a resume."""
        if self.outbox is not None:
            self.outbox.close()

    def close(self, reason: models.DisconnectReason) -> None:
        """Mark the session over; its tasks notice and clean up (a queued final message
        still goes out before the connection closes)."""
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()
            if self.outbox is not None:
                self.outbox.close()

    def _note(self, infos: Iterable[models.ParticipantInfo]) -> None:
        now = time.monotonic()
        for info in infos:
            self._updates[info.sid] = (info.identity, info.version, info.state, now)
            self._updates.move_to_end(info.sid)
        while len(self._updates) > _UPDATE_MEMORY:
            self._updates.popitem(last=False)

    def departed_since(self, since: float) -> list[models.ParticipantInfo]:
        """Those whose latest update for it, made at ``since`` or later, said they left
        (livekit-server's sendDisconnectUpdatesForReconnect: sid, identity, version,
        state only), newest first."""
        gone: list[models.ParticipantInfo] = []
        for sid, (identity, version, state, at) in reversed(self._updates.items()):
            if at < since:
                break
            if state == models.ParticipantInfo.State.DISCONNECTED:
                gone.append(models.ParticipantInfo(
                    sid=sid, identity=identity, version=version,
                    state=models.ParticipantInfo.State.DISCONNECTED))
        return gone


class DevRoom:
    """A room: its `models.Room` and the sessions in it, keyed by identity.

    Presence is announced as livekit-server announces it: changes a participant makes to
    itself (metadata, name, attributes) reach everyone at once, but joins, leaves and
    other state changes of a participant that publishes nothing are queued, one pending
    update per identity, and sent to everyone by `flush` (the server calls it every
    ``presence_interval`` seconds; livekit-server's interval is 3 s). A later joiner still
    sees everyone at once in its join response. ``presence_interval=0`` announces
    everything at once.
    """

    def __init__(self, name: str, *, presence_interval: float = 0.0) -> None:
        self.model = models.Room(
            sid=new_sid("RM_"), name=name, creation_time=int(time.time()),
            creation_time_ms=int(time.time() * 1000), empty_timeout=300, departure_timeout=20,
        )
        self.sessions: dict[str, Session] = {}
        self.presence_interval = presence_interval
        # Queued presence updates, by identity: (info snapshot, why it closed).
        self._batched: dict[str, tuple[models.ParticipantInfo, int]] = {}
        # Recent user packet nonces (livekit-server keeps 100), from both loops.
        self._nonces: collections.deque[bytes] = collections.deque(maxlen=100)
        self._nonce_lock = threading.Lock()
        self.media = RoomMedia(self)

    @property
    def name(self) -> str:
        return self.model.name

    def visible_infos(self, viewer: Session | None = None) -> list[models.ParticipantInfo]:
        return [s.info for s in self.sessions.values() if not s.hidden and s is not viewer]

    def join(self, session: Session) -> None:
        old = self.sessions.get(session.identity)
        if old is not None:
            old.send(rtc.SignalResponse(leave=rtc.LeaveRequest(
                reason=models.DisconnectReason.DUPLICATE_IDENTITY,
                action=rtc.LeaveRequest.Action.DISCONNECT)))
            self.leave(old, models.DisconnectReason.DUPLICATE_IDENTITY, notify_self=False)
        self.sessions[session.identity] = session
        self.model.num_participants = len(self.sessions)
        self._announce(session.info, to_self=None)
        self.media.joined(session)

    def leave(self, session: Session, reason: models.DisconnectReason,
              *, notify_self: bool = False) -> None:
        """Remove ``session`` (if still current) and tell the others it is gone."""
        if self.sessions.get(session.identity) is not session:
            session.close(reason)
            return
        del self.sessions[session.identity]
        self.model.num_participants = len(self.sessions)
        self.media.left(session)
        if notify_self:
            session.send(rtc.SignalResponse(leave=rtc.LeaveRequest(
                reason=reason, action=rtc.LeaveRequest.Action.DISCONNECT)))
        session.close(reason)
        gone = models.ParticipantInfo()
        gone.CopyFrom(session.info)
        gone.state = models.ParticipantInfo.State.DISCONNECTED
        gone.disconnect_reason = reason
        gone.version += 1
        if not session.hidden:
            self._announce(gone, to_self=None, close_reason=reason)

    def update_participant(
        self, session: Session, *, name: str, metadata: str, attributes: Mapping[str, str]
    ) -> tuple[rtc.RequestResponse.Reason, str]:
        """Apply a participant's own update (LiveKit semantics: empty name/metadata are
        ignored, an empty attribute value deletes the key)."""
        if not session.grants.can_update_own_metadata:
            return rtc.RequestResponse.Reason.NOT_ALLOWED, (
                "does not have permission to update own metadata")
        if len(name.encode()) > MAX_NAME:
            return rtc.RequestResponse.Reason.LIMIT_EXCEEDED, "exceeds name length limit"
        if len(metadata.encode()) > MAX_METADATA:
            return rtc.RequestResponse.Reason.LIMIT_EXCEEDED, "exceeds metadata size limit"
        # livekit-server checks the size of the update's attributes, not of the result.
        if sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items()
               ) > MAX_ATTRIBUTES:
            return rtc.RequestResponse.Reason.LIMIT_EXCEEDED, "exceeds attributes size limit"
        merged = dict(session.info.attributes)
        for key, value in attributes.items():
            if value:
                merged[key] = value
            else:
                merged.pop(key, None)
        info = session.info
        changed = False
        if name and name != info.name:
            info.name, changed = name, True
        if metadata and metadata != info.metadata:
            info.metadata, changed = metadata, True
        if merged != dict(info.attributes):
            info.attributes.clear()
            info.attributes.update(merged)
            changed = True
        if changed:
            self.changed(session)
        return rtc.RequestResponse.Reason.OK, ""

    def changed(self, session: Session) -> None:
        """``session``'s info was changed (by itself or by the server API): a new version,
        announced to everyone at once, as livekit-server announces such changes."""
        session.info.version += 1
        self._announce(session.info, to_self=session, immediate=True)

    def repeated_nonce(self, nonce: bytes) -> bool:
        """Whether a user packet with this 16-byte ``nonce`` was seen lately in this room
        (livekit-server drops the repeat); remembers it if not. Any thread."""
        if len(nonce) != 16:
            return False
        with self._nonce_lock:
            if nonce in self._nonces:
                return True
            self._nonces.append(nonce)
            return False

    def set_metadata(self, metadata: str) -> None:
        self.model.metadata = metadata
        self.model.version.unix_micro = int(time.time() * 1_000_000)
        self.model.version.ticks += 1
        self.broadcast(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=self.model)))

    def broadcast(self, msg: rtc.SignalResponse, *, exclude: Session | None = None) -> None:
        for s in list(self.sessions.values()):
            if s is not exclude:
                s.send(msg)

    def _announce(self, info: models.ParticipantInfo, *, to_self: Session | None,
                  immediate: bool = False, close_reason: int = 0) -> None:
        """Tell the room about ``info`` (a change of that participant), as livekit-server
        does: at once if ``immediate`` or the participant publishes, else at the next
        `flush`. ``to_self``: the participant itself, told at once (for its own
        changes); otherwise it learns with everyone else. Hidden participants are
        announced only to themselves."""
        snapshot = models.ParticipantInfo()
        snapshot.CopyFrom(info)
        hidden = info.permission.hidden
        if to_self is not None and (hidden or not (
                immediate or info.is_publisher or not self.presence_interval)):
            to_self.send(_update([snapshot]))
        if hidden:
            return
        pending = self._batched.pop(info.identity, None)
        updates: list[tuple[models.ParticipantInfo, int]] = []
        if pending is not None:
            older, _ = pending
            if older.sid == snapshot.sid:
                if older.version > snapshot.version:  # out of order: keep the newer
                    self._batched[info.identity] = pending
                    return
            else:
                # Another session of that identity is queued: announce the switch now.
                older.state = models.ParticipantInfo.State.DISCONNECTED
                updates.append((older, _SYNTHESIZED))
                immediate = True
        if immediate or snapshot.is_publisher or not self.presence_interval:
            updates.append((snapshot, close_reason))
            self._send_updates(updates)
        else:
            self._batched[info.identity] = (snapshot, close_reason)

    def flush(self) -> None:
        """Send the queued presence updates to everyone."""
        if self._batched:
            updates = list(self._batched.values())
            self._batched.clear()
            self._send_updates(updates)

    def _send_updates(self, updates: list[tuple[models.ParticipantInfo, int]]) -> None:
        # Clients that reconnect by identity (protocol > 11) are not told about a session
        # replaced by a newer one of the same identity: the newer one's info says it all.
        everything = _update([info for info, _ in updates])
        filtered = _update([info for info, why in updates if why not in _SKIPPABLE])
        for s in list(self.sessions.values()):
            msg = filtered if s.protocol > 11 else everything
            if msg.update.participants:
                s.send(msg)


# A queued update of a session replaced by another of the same identity.
_SYNTHESIZED = -1
_SKIPPABLE = (_SYNTHESIZED, models.DisconnectReason.DUPLICATE_IDENTITY)


def _update(infos: list[models.ParticipantInfo]) -> rtc.SignalResponse:
    return rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=infos))
