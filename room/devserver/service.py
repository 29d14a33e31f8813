"""LiveKit's server API on the dev server: the Twirp ``RoomService``.

livekit-server serves ``POST /twirp/livekit.RoomService/<Method>`` on its HTTP port, and
so does the dev server, the same way: both Twirp encodings (``application/protobuf``, and
``application/json`` with either field spelling in, the proto names out), the same
authorization (a bearer token whose ``video`` grant has ``roomList`` for ``ListRooms``,
``roomCreate`` for ``CreateRoom``/``DeleteRoom``, and ``roomAdmin`` with that ``room`` for
the rest) and the same answers, refusals included (a JSON body ``{"code", "msg"}`` with the
matching HTTP status, and livekit-server's wording). Code written with ``livekit-api``
therefore works against either. `RoomService` holds the rules; its public methods take
and return the protocol's messages without authorization, and `DevServer`'s own controls
(``rooms()``, ``remove_participant()``...) are thin calls to them.

Rooms live as they do on livekit-server: one made by ``CreateRoom`` stays, empty, for its
``empty_timeout``; one that everybody has left stays for its ``departure_timeout`` (still
listed, metadata kept, found again by whoever rejoins); then it is gone. Since nothing is
announced when an empty room ends, expiry is applied whenever the rooms are looked at.

Everything here runs on the server's event loop and never awaits while it changes a
room, so each call is atomic with respect to the connections. Packets sent with
``SendData`` leave through the participants' data channels on the aiortc loop, as
relayed ones do (`room.devserver.webrtc`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from livekit.protocol import models, rtc
from livekit.protocol import room as proto_room

from room.devserver.auth import AuthError, verify_api_token
from room.devserver.http import HttpRequest, Reject, Response
from room.devserver.rooms import DevRoom, Session
from room.devserver.webrtc import SessionRtc
from room.transport.aio import aiortc_loop

__all__ = ["ROOM_SERVICE_PATH", "RoomService", "TwirpError"]

_log = logging.getLogger(__name__)

ROOM_SERVICE_PATH = "/twirp/livekit.RoomService/"

# livekit-server's default limits (its `limit` config), in bytes.
MAX_ROOM_NAME = 256
MAX_PARTICIPANT_NAME = 256
MAX_METADATA = 512 * 1024
MAX_ATTRIBUTES = 64 * 1024

# Twirp error code -> HTTP status (the Twirp specification's table).
_HTTP_STATUS = {
    "canceled": 408, "unknown": 500, "invalid_argument": 400, "malformed": 400,
    "deadline_exceeded": 408, "not_found": 404, "bad_route": 404, "already_exists": 409,
    "permission_denied": 403, "unauthenticated": 401, "resource_exhausted": 429,
    "failed_precondition": 412, "aborted": 409, "out_of_range": 400, "unimplemented": 501,
    "internal": 500, "unavailable": 503, "dataloss": 500,
}

_SERVICE = proto_room.DESCRIPTOR.services_by_name["RoomService"]
_REQUEST_TYPES: dict[str, type[Message]] = {
    m.name: GetMessageClass(m.input_type) for m in _SERVICE.methods}

M = TypeVar("M", bound=Message)
Grant = Mapping[str, Any] | None  # a verified token's ``video`` grant; None: no token


class TwirpError(Exception):
    """A Twirp error answer: ``code`` (Twirp's name), ``msg`` and optional ``meta``."""

    def __init__(self, code: str, msg: str, meta: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.meta = dict(meta or {})

    @property
    def status(self) -> int:
        return _HTTP_STATUS.get(self.code, 500)

    def body(self) -> bytes:
        doc: dict[str, Any] = {"code": self.code, "msg": self.msg}
        if self.meta:
            doc["meta"] = self.meta
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _relayed(code: str, msg: str) -> TwirpError:
    """An error livekit-server raises behind its internal RPC layer, whose conversion to
    Twirp prefixes the message: ``"twirp error unknown: participant does not exist"``."""
    return TwirpError(code, f"twirp error unknown: {msg}")


def _too_large(what: str, limit: int) -> TwirpError:
    return TwirpError("invalid_argument", f"{what} {limit}", {"argument": what})


def _denied() -> TwirpError:
    return TwirpError("unauthenticated", "permissions denied")


def _require(grant: Grant, flag: str) -> None:
    if not grant or not grant.get(flag):
        raise _denied()


def _require_admin(grant: Grant, room: str) -> None:
    if not grant or not grant.get("roomAdmin") or str(grant.get("room") or "") != room:
        raise _denied()


def _check_metadata(metadata: str) -> None:
    if len(metadata.encode()) > MAX_METADATA:
        raise _too_large("metadata size exceeds limits", MAX_METADATA)


class RoomService:
    """The ``RoomService`` over the dev server's rooms (see the module docstring).

    ``rooms`` is the server's registry (name → `DevRoom`), shared: the service adds rooms
    to it and ends them; the server's connections find their room through `room_for_join`
    and report an emptied one with `room_emptied`. ``keys`` maps API keys to secrets.
    """

    def __init__(self, rooms: dict[str, DevRoom], keys: Mapping[str, str], *,
                 presence_interval: float = 0.0) -> None:
        self._rooms = rooms
        self._keys = keys
        self._presence_interval = presence_interval
        # Empty rooms, by name: (room, empty since (monotonic), seconds it may stay so).
        self._idle: dict[str, tuple[DevRoom, float, int]] = {}
        self._twirp: dict[str, Callable[[Grant, Any], Message]] = {
            "CreateRoom": self._twirp_create_room,
            "ListRooms": self._twirp_list_rooms,
            "DeleteRoom": self._twirp_delete_room,
            "ListParticipants": self._twirp_list_participants,
            "GetParticipant": self._twirp_get_participant,
            "RemoveParticipant": self._twirp_remove_participant,
            "UpdateParticipant": self._twirp_update_participant,
            "UpdateRoomMetadata": self._twirp_update_room_metadata,
            "SendData": self._twirp_send_data,
            "MutePublishedTrack": self._twirp_mute_published_track,
        }

    # -- the rooms' lifetime (called by the server) ------------------------------------

    def room_for_join(self, name: str) -> DevRoom:
        """The room a participant joining ``name`` enters, made if there is none."""
        room = self._live(name)
        if room is None:
            room = self._rooms[name] = DevRoom(name, presence_interval=self._presence_interval)
        self._idle.pop(name, None)
        return room

    def room_for_resume(self, name: str) -> DevRoom:
        """The room a participant resuming in ``name`` would find. livekit-server makes
        the room if there is none (the resume then fails for want of the participant),
        and such a room, never joined, lives for its ``empty_timeout`` like one made by
        ``CreateRoom``."""
        room = self._live(name)
        if room is None:
            room = self._rooms[name] = DevRoom(name, presence_interval=self._presence_interval)
            self._idle[name] = (room, time.monotonic(), room.model.empty_timeout)
        return room

    def room_emptied(self, room: DevRoom) -> None:
        """Note that ``room`` may have lost its last participant: if so, it stays for its
        ``departure_timeout``."""
        if not room.sessions and self._rooms.get(room.name) is room:
            self._idle[room.name] = (room, time.monotonic(), room.model.departure_timeout)

    def expire(self) -> None:
        """Forget the empty rooms whose time is up."""
        now = time.monotonic()
        for name, (room, since, timeout) in list(self._idle.items()):
            if room.sessions or self._rooms.get(name) is not room:
                del self._idle[name]
            elif now - since >= timeout:
                del self._idle[name]
                del self._rooms[name]

    def _live(self, name: str) -> DevRoom | None:
        self.expire()
        return self._rooms.get(name)

    def _session(self, room_name: str, identity: str) -> tuple[DevRoom, Session] | None:
        room = self._live(room_name)
        session = room.sessions.get(identity) if room is not None else None
        return None if room is None or session is None else (room, session)

    # -- the operations (no authorization: callers have checked it) --------------------

    def create_room(self, req: proto_room.CreateRoomRequest) -> models.Room:
        """Make an empty room (kept for its ``empty_timeout``), or return the existing one
        of that name unchanged."""
        if len(req.name.encode()) > MAX_ROOM_NAME:
            raise _relayed("invalid_argument",
                           f"room name length exceeds limits: max length {MAX_ROOM_NAME}")
        _check_metadata(req.metadata)
        room = self._live(req.name)
        if room is None:
            room = DevRoom(req.name, presence_interval=self._presence_interval)
            model = room.model
            if req.empty_timeout:
                model.empty_timeout = req.empty_timeout
            if req.departure_timeout:
                model.departure_timeout = req.departure_timeout
            model.max_participants = req.max_participants
            model.metadata = req.metadata
            self._rooms[req.name] = room
            self._idle[req.name] = (room, time.monotonic(), model.empty_timeout)
        return _copy(room.model)

    def list_rooms(self, req: proto_room.ListRoomsRequest) -> proto_room.ListRoomsResponse:
        """The live rooms (all, or those named), by name."""
        self.expire()
        wanted = set(req.names)
        return proto_room.ListRoomsResponse(rooms=[
            _copy(self._rooms[name].model) for name in sorted(self._rooms)
            if not wanted or name in wanted])

    def delete_room(self, req: proto_room.DeleteRoomRequest) -> proto_room.DeleteRoomResponse:
        """Disconnect everyone in the room (reason ROOM_DELETED) and end it."""
        room = self._live(req.room)
        if room is None:
            raise _relayed("not_found", "requested room does not exist")
        for session in list(room.sessions.values()):
            room.leave(session, models.DisconnectReason.ROOM_DELETED, notify_self=True)
        del self._rooms[req.room]
        self._idle.pop(req.room, None)
        return proto_room.DeleteRoomResponse()

    def list_participants(self, req: proto_room.ListParticipantsRequest
                          ) -> proto_room.ListParticipantsResponse:
        """Everyone in the room, hidden participants included (none if no such room)."""
        room = self._live(req.room)
        sessions = list(room.sessions.values()) if room is not None else []
        return proto_room.ListParticipantsResponse(
            participants=[_copy(s.info) for s in sessions])

    def get_participant(self, req: proto_room.RoomParticipantIdentity
                        ) -> models.ParticipantInfo:
        found = self._session(req.room, req.identity)
        if found is None:
            raise _relayed("not_found", "participant does not exist")
        return _copy(found[1].info)

    def remove_participant(self, req: proto_room.RoomParticipantIdentity
                           ) -> proto_room.RemoveParticipantResponse:
        """Disconnect the participant (reason PARTICIPANT_REMOVED)."""
        found = self._session(req.room, req.identity)
        if found is None:
            raise _relayed("not_found", "participant does not exist")
        room, session = found
        room.leave(session, models.DisconnectReason.PARTICIPANT_REMOVED, notify_self=True)
        self.room_emptied(room)
        return proto_room.RemoveParticipantResponse()

    def update_participant(self, req: proto_room.UpdateParticipantRequest
                           ) -> models.ParticipantInfo:
        """Change a participant's name, metadata, attributes and permission, and tell
        the room (the participant included) at once. As livekit-server: an empty name or
        metadata leaves it unchanged, an empty attribute value deletes the key."""
        _check_participant_update(req)
        found = self._session(req.room, req.identity)
        if found is None:
            raise _relayed("not_found", "participant does not exist")
        room, session = found
        info = session.info
        changed = False
        if req.name and req.name != info.name:
            info.name, changed = req.name, True
        if req.metadata and req.metadata != info.metadata:
            info.metadata, changed = req.metadata, True
        if req.attributes:
            merged = dict(info.attributes)
            for key, value in req.attributes.items():
                if value:
                    merged[key] = value
                else:
                    merged.pop(key, None)
            if merged != dict(info.attributes):
                info.attributes.clear()
                info.attributes.update(merged)
                changed = True
        if req.HasField("permission") and req.permission != info.permission:
            _set_permission(session, req.permission)
            changed = True
        if changed:
            room.changed(session)
        return _copy(info)

    def update_room_metadata(self, req: proto_room.UpdateRoomMetadataRequest) -> models.Room:
        """Set the room's metadata and tell everyone in it (a ``room_update``)."""
        _check_metadata(req.metadata)
        room = self._live(req.room)
        if room is None:
            raise _relayed("not_found", "requested room does not exist")
        room.set_metadata(req.metadata)
        return _copy(room.model)

    def send_data(self, req: proto_room.SendDataRequest) -> proto_room.SendDataResponse:
        """Deliver a server-sent user packet (no sender) to the participants named by
        ``destination_identities``/``destination_sids`` (everyone if none), reliably or
        not as ``kind`` says. A packet repeating one of the room's recent 16-byte nonces
        is dropped."""
        if req.nonce and len(req.nonce) != 16:
            raise TwirpError("invalid_argument", "nonce should be 16-bytes or not present, "
                                                 f"got: {len(req.nonce)} bytes")
        room = self._live(req.room)
        if room is None:
            # livekit-server finds no node hosting the room (after a 3 s wait).
            raise _relayed("unavailable", "no response from servers")
        if room.repeated_nonce(req.nonce):
            _log.info("dev server: repeated SendData nonce in %s; dropped", room.name)
            return proto_room.SendDataResponse()
        packet = models.DataPacket(
            kind=req.kind, destination_identities=list(req.destination_identities),
            user=models.UserPacket(
                payload=req.data, destination_sids=list(req.destination_sids),
                destination_identities=list(req.destination_identities), nonce=req.nonce))
        if req.HasField("topic"):
            packet.user.topic = req.topic
        data = packet.SerializeToString()
        sids, identities = set(req.destination_sids), set(req.destination_identities)
        targets = [s.rtc for s in room.sessions.values() if s.rtc is not None and (
            not (sids or identities) or s.info.sid in sids or s.identity in identities)]
        label = "_reliable" if req.kind == models.DataPacket.Kind.RELIABLE else "_lossy"
        if targets:
            aiortc_loop().call_soon(_deliver, targets, label, data)
        return proto_room.SendDataResponse()

    def mute_published_track(self, req: proto_room.MuteRoomTrackRequest
                             ) -> proto_room.MuteRoomTrackResponse:
        """Ask the participant to mute a track it publishes. As livekit-server (remote
        unmute disabled): unmuting is refused; the participant is told even about a track
        the server does not know, and the answer then carries no track."""
        found = self._session(req.room, req.identity)
        if found is None:
            # livekit-server finds no node hosting the participant (after a 3 s wait).
            raise _relayed("unavailable", "no response from servers")
        if not req.muted:
            raise _relayed("failed_precondition", "remote unmute not enabled")
        _room, session = found
        session.send(rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid=req.track_sid,
                                                                  muted=True)))
        response = proto_room.MuteRoomTrackResponse()
        for track in session.info.tracks:  # none yet: the dev server carries no media
            if track.sid == req.track_sid:
                track.muted = True
                response.track.CopyFrom(track)
        return response

    # -- Twirp -------------------------------------------------------------------------

    def handle(self, request: HttpRequest) -> Reject | Response:
        """Answer one HTTP request for ``/twirp/livekit.RoomService/...``."""
        try:
            grant = self._grant(request)
        except AuthError as exc:  # refused before Twirp sees it: a plain-text answer
            return Reject(exc.status, exc.text)
        try:
            return self._serve(request, grant)
        except TwirpError as exc:
            return Response(exc.status, exc.body(), "application/json")

    def _grant(self, request: HttpRequest) -> Grant:
        auth = request.headers.get("authorization", "")
        if auth:
            if not auth.startswith("Bearer "):
                raise AuthError(401, "invalid authorization header. Must start with Bearer ")
            token = auth[len("Bearer "):]
        else:
            token = request.query.get("access_token", "")
        return verify_api_token(token, self._keys) if token else None

    def _serve(self, request: HttpRequest, grant: Grant) -> Response:
        route = f"{request.method} {request.path}"
        if request.method != "POST":
            raise _bad_route(f"unsupported method {_quote(request.method)} "
                             "(only POST is allowed)", route)
        parts = request.path.split("/")
        method = parts[-1]
        if parts[-2] != "livekit.RoomService" or method not in _REQUEST_TYPES:
            raise _bad_route(f"no handler for path {_quote(request.path)}", route)
        content_type = request.headers.get("content-type", "")
        encoding = content_type.split(";", 1)[0].strip().lower()
        if encoding not in ("application/json", "application/protobuf"):
            raise _bad_route(f"unexpected Content-Type: {_quote(content_type)}", route)
        req = _decode(request.body, _REQUEST_TYPES[method], json_=encoding == "application/json")
        serve = self._twirp.get(method)
        if serve is None:
            _require_admin(grant, getattr(req, "room", ""))
            raise TwirpError("unimplemented", f"{method} is not supported by the dev server")
        answer = serve(grant, req)
        if encoding == "application/json":
            doc = json_format.MessageToDict(answer, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)
            body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        else:
            body = answer.SerializeToString()
        return Response(200, body, encoding)

    # Each checks what livekit-server checks, in its order, then does the operation.

    def _twirp_create_room(self, grant: Grant, req: proto_room.CreateRoomRequest
                           ) -> Message:
        _require(grant, "roomCreate")
        return self.create_room(req)

    def _twirp_list_rooms(self, grant: Grant, req: proto_room.ListRoomsRequest) -> Message:
        _require(grant, "roomList")
        return self.list_rooms(req)

    def _twirp_delete_room(self, grant: Grant, req: proto_room.DeleteRoomRequest) -> Message:
        _require(grant, "roomCreate")
        return self.delete_room(req)

    def _twirp_list_participants(self, grant: Grant,
                                 req: proto_room.ListParticipantsRequest) -> Message:
        _require_admin(grant, req.room)
        return self.list_participants(req)

    def _twirp_get_participant(self, grant: Grant, req: proto_room.RoomParticipantIdentity
                               ) -> Message:
        _require_admin(grant, req.room)
        return self.get_participant(req)

    def _twirp_remove_participant(self, grant: Grant,
                                  req: proto_room.RoomParticipantIdentity) -> Message:
        _require_admin(grant, req.room)
        return self.remove_participant(req)

    def _twirp_update_participant(self, grant: Grant,
                                  req: proto_room.UpdateParticipantRequest) -> Message:
        _check_participant_update(req)  # before the grant, as livekit-server does
        _require_admin(grant, req.room)
        return self.update_participant(req)

    def _twirp_update_room_metadata(self, grant: Grant,
                                    req: proto_room.UpdateRoomMetadataRequest) -> Message:
        _check_metadata(req.metadata)  # before the grant, as livekit-server does
        _require_admin(grant, req.room)
        return self.update_room_metadata(req)

    def _twirp_send_data(self, grant: Grant, req: proto_room.SendDataRequest) -> Message:
        _require_admin(grant, req.room)
        return self.send_data(req)

    def _twirp_mute_published_track(self, grant: Grant,
                                    req: proto_room.MuteRoomTrackRequest) -> Message:
        _require_admin(grant, req.room)
        return self.mute_published_track(req)


def _check_participant_update(req: proto_room.UpdateParticipantRequest) -> None:
    if len(req.name.encode()) > MAX_PARTICIPANT_NAME:
        raise _too_large("name length exceeds limits", MAX_PARTICIPANT_NAME)
    _check_metadata(req.metadata)
    size = sum(len(k.encode()) + len(v.encode()) for k, v in req.attributes.items())
    if size > MAX_ATTRIBUTES:
        raise _too_large("attribute size exceeds limits", MAX_ATTRIBUTES)


def _set_permission(session: Session, permission: models.ParticipantPermission) -> None:
    session.info.permission.CopyFrom(permission)
    # What the server enforces comes from the grants (data relay, own metadata updates).
    session.grants = replace(
        session.grants, can_publish=permission.can_publish,
        can_subscribe=permission.can_subscribe, can_publish_data=permission.can_publish_data,
        can_update_own_metadata=permission.can_update_metadata, hidden=permission.hidden)


def _deliver(targets: Sequence[SessionRtc], label: str, data: bytes) -> None:
    for target in targets:  # on the aiortc loop, where `forward` runs
        target.forward(label, data)


def _decode(body: bytes, cls: type[Message], *, json_: bool) -> Any:
    req = cls()
    if json_:
        # Like Go's json.Decoder: the first JSON value counts, whatever follows it.
        try:
            doc, _end = json.JSONDecoder().raw_decode(body.decode().lstrip(" \t\r\n"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            _check_base64(doc, req)
            json_format.ParseDict(doc, req, ignore_unknown_fields=True)
        except (ValueError, TypeError, AttributeError, json_format.Error):
            raise TwirpError("malformed", "the json request could not be decoded") from None
    else:
        try:
            req.ParseFromString(body)
        except DecodeError:
            raise TwirpError("malformed", "the protobuf request could not be decoded") from None
    return req


def _check_base64(doc: Mapping[str, Any], req: Message) -> None:
    """Refuse what Go's protojson refuses in a ``bytes`` field and Python's decoder would
    let through: characters outside the standard or the URL-safe base64 alphabet."""
    for f in req.DESCRIPTOR.fields:
        if f.type != f.TYPE_BYTES:
            continue
        value = doc.get(f.name, doc.get(f.json_name))
        if isinstance(value, str) and not _BASE64.fullmatch(value):
            raise ValueError(f"{f.name} is not base64")


_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}|[A-Za-z0-9_-]*={0,2}")


def _bad_route(msg: str, route: str) -> TwirpError:
    return TwirpError("bad_route", msg, {"twirp_invalid_route": route})


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # close to Go's %q


def _copy(msg: M) -> M:
    out = type(msg)()
    out.CopyFrom(msg)
    return out
