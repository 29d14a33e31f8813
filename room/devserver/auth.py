"""LiveKit access tokens: minting (for tests and the CLI) and checking (for the dev server).

A token is an HS256 JWT signed with the API secret: ``iss`` is the API key, ``sub`` the
identity, and the ``video`` claim holds the grants. Tokens from LiveKit's own tools with
the same key and secret are accepted; refusals carry the status and text a LiveKit server
gives, so clients can explain them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

__all__ = ["AuthError", "Grants", "admin_token", "mint_token", "verify_api_token",
           "verify_token"]

# Clock skew allowed on exp/nbf, as LiveKit's server allows.
_LEEWAY = 60.0


class AuthError(Exception):
    """A token was refused: ``status`` is the HTTP status, ``str(exc)`` the plain reason."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True, slots=True)
class Grants:
    """What a verified token allows."""

    identity: str
    room: str
    name: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    kind: str = ""
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_update_own_metadata: bool = False
    hidden: bool = False
    agent: bool = False  # kind "agent" or the legacy video.agent grant


def mint_token(
    api_key: str, api_secret: str, identity: str, *, room: str, name: str | None = None,
    metadata: str | None = None, attributes: Mapping[str, str] | None = None,
    can_publish: bool = True, can_subscribe: bool = True, can_publish_data: bool = True,
    can_update_own_metadata: bool = True, hidden: bool = False, ttl: float = 3600.0,
    kind: str | None = None,
) -> str:
    """An access token for ``identity`` to join ``room``, valid for ``ttl`` seconds."""
    if not identity:
        raise ValueError("identity must not be empty")
    if not room:
        raise ValueError("room must not be empty")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": api_key,
        "sub": identity,
        "nbf": now,
        "exp": now + int(ttl),
        "video": {
            "room": room,
            "roomJoin": True,
            "canPublish": can_publish,
            "canSubscribe": can_subscribe,
            "canPublishData": can_publish_data,
            "canUpdateOwnMetadata": can_update_own_metadata,
            "hidden": hidden,
        },
    }
    if name:
        claims["name"] = name
    if metadata:
        claims["metadata"] = metadata
    if attributes:
        claims["attributes"] = dict(attributes)
    if kind:
        claims["kind"] = kind
    with warnings.catch_warnings():
        # Short secrets (the dev default "secret") are the user's choice for local use.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, api_secret, algorithm="HS256")


def admin_token(api_key: str, api_secret: str, *, room: str = "", room_admin: bool = True,
                room_list: bool = False, room_create: bool = False, ttl: float = 600.0) -> str:
    """A token for LiveKit's server API (not for joining): ``roomAdmin`` of ``room``,
    and ``roomList`` / ``roomCreate`` when asked."""
    now = int(time.time())
    video: dict[str, Any] = {}
    if room:
        video["room"] = room
    if room_admin:
        video["roomAdmin"] = True
    if room_list:
        video["roomList"] = True
    if room_create:
        video["roomCreate"] = True
    claims = {"iss": api_key, "nbf": now, "exp": now + int(ttl), "video": video}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, api_secret, algorithm="HS256")


def verify_token(token: str | None, keys: Mapping[str, str]) -> Grants:
    """Check ``token`` against ``keys`` (API key → secret) and return its grants."""
    if not token:
        raise AuthError(401, "no permissions to access the room")
    claims = _verified_claims(token, keys, require=("exp",))
    video = claims.get("video")
    if not isinstance(video, dict):
        raise AuthError(401, "no permissions to access the room")
    if not video.get("roomJoin"):
        raise AuthError(401, "permissions denied")
    identity = claims.get("sub") or claims.get("identity") or ""
    if not isinstance(identity, str) or not identity:
        raise AuthError(400, "identity cannot be empty")
    room = video.get("room") or ""
    if not isinstance(room, str) or not room:
        raise AuthError(400, "no room name")
    attributes = claims.get("attributes") or {}
    if not isinstance(attributes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()):
        raise AuthError(401, "invalid authorization token: attributes must map str to str")
    return Grants(
        identity=_utf8(identity),
        room=_utf8(room),
        name=_str(claims.get("name")),
        metadata=_str(claims.get("metadata")),
        attributes={_utf8(k): _utf8(v) for k, v in attributes.items() if v},
        kind=_str(claims.get("kind")),
        can_publish=_flag(video, "canPublish", True),
        can_subscribe=_flag(video, "canSubscribe", True),
        # As on livekit-server: without its own flag, publishing data follows canPublish.
        can_publish_data=_flag(video, "canPublishData", _flag(video, "canPublish", True)),
        agent=bool(video.get("agent")) or _str(claims.get("kind")) == "agent",
        can_update_own_metadata=_flag(video, "canUpdateOwnMetadata", False),
        hidden=_flag(video, "hidden", False),
    )


def verify_api_token(token: str, keys: Mapping[str, str]) -> Mapping[str, Any]:
    """Check a server API token (signature, and ``exp``/``nbf`` when present, as
    livekit-server checks them) and return its ``video`` grant ({} if it has none).
    Unlike a join token it needs no identity, room or ``roomJoin``."""
    video = _verified_claims(token, keys, require=()).get("video")
    return video if isinstance(video, dict) else {}


def _verified_claims(token: str, keys: Mapping[str, str], *, require: tuple[str, ...]
                     ) -> dict[str, Any]:
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AuthError(401, "invalid authorization token") from None
    api_key = str(unverified.get("iss", ""))
    secret = keys.get(api_key)
    if secret is None:
        raise AuthError(401, f"invalid API key: {_utf8(api_key)}")  # a key is no secret
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            claims: dict[str, Any] = jwt.decode(
                token, secret, algorithms=["HS256"], leeway=_LEEWAY,
                options={"require": list(require)})
    except jwt.ExpiredSignatureError:
        raise AuthError(
            401, "invalid authorization token: token has invalid claims: token is expired"
        ) from None
    except jwt.ImmatureSignatureError:
        raise AuthError(
            401, "invalid authorization token: token has invalid claims: token is not valid yet"
        ) from None
    except jwt.InvalidSignatureError:
        raise AuthError(401, "invalid authorization token: signature is invalid") from None
    except jwt.PyJWTError as exc:
        raise AuthError(401, f"invalid authorization token: {exc}") from None
    return claims


def _flag(video: Mapping[str, Any], key: str, default: bool) -> bool:
    value = video.get(key)
    return default if value is None else bool(value)


def _str(value: object) -> str:
    return _utf8(value) if isinstance(value, str) else ""


def _utf8(text: str) -> str:
    """``text`` with lone surrogates (JSON may escape them: "\\ud800") replaced by U+FFFD,
    as Go's JSON decoder in livekit-server replaces them: protobuf strings must be UTF-8."""
    if text.isascii():
        return text
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
