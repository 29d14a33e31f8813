"""ICE details: which local addresses to gather, and LiveKit's JSON trickle candidates.

aioice gathers host candidates from every interface except loopback, as libwebrtc does,
and a LiveKit server offers its own candidates on its node's non-loopback address: that is
what a client must do against any real server, even one on the same machine. `room`'s own
dev server is different: on a loopback address it offers only loopback candidates, so a
client talking to it over loopback gathers on loopback only (`client_host_addresses`).
The user may also name the addresses explicitly (``RtcConfiguration.host_addresses``).
`use_host_addresses` applies the choice to the aiortc work of the current task.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import aioice.ice
import anyio
from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

__all__ = [
    "DEVSERVER_NODE_ID",
    "candidate_from_json",
    "client_host_addresses",
    "candidate_to_json",
    "host_addresses_for",
    "resolve_host",
    "sdp_candidates",
    "server_host_addresses",
    "use_host_addresses",
]

_log = logging.getLogger(__name__)

# The node id `room.devserver` reports in its join response's ``server_info``: how a client
# knows it talks to the dev server rather than to livekit-server.
DEVSERVER_NODE_ID = "room-devserver"

_HOST_ADDRESSES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "room_ice_host_addresses", default=None)
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _HOST_ADDRESSES.get()
    if chosen is None:
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


aioice.ice.get_host_addresses = _get_host_addresses


@contextmanager
def use_host_addresses(addresses: Sequence[str] | None) -> Iterator[None]:
    """Gather host candidates only on ``addresses`` (None: every non-loopback interface)
    for ICE work started inside this block on the current task (and tasks it creates)."""
    token = _HOST_ADDRESSES.set(tuple(addresses) if addresses is not None else None)
    try:
        yield
    finally:
        _HOST_ADDRESSES.reset(token)


def host_addresses_for(host: str) -> tuple[str, ...] | None:
    """Where a client should gather host candidates to reach a server at ``host``:
    loopback only when ``host`` is a loopback address or ``localhost``, else None (every
    non-loopback interface, aioice's default).

    Any other host name counts as not loopback: it is not resolved here, since resolving
    blocks (this runs on an event loop). Resolve it first, without blocking, with
    `resolve_host`."""
    if not host:
        return None
    if host.lower().rstrip(".") == "localhost":
        return ("127.0.0.1",)
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return (str(ip),) if ip.is_loopback else None


async def resolve_host(host: str) -> str:
    """The first IP address ``host`` resolves to, looked up without blocking the event
    loop; ``host`` itself when it is already an IP address (or empty) or cannot be
    resolved."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return host
    if not host:
        return host
    try:
        infos = await anyio.getaddrinfo(host, None)
    except OSError:
        return host
    return str(infos[0][4][0]) if infos else host


def client_host_addresses(
    url_host: str, server_node_id: str, configured: Sequence[str] | None,
) -> tuple[str, ...] | None:
    """Where a client gathers host candidates: ``configured`` when given; loopback only
    for `room`'s dev server reached over loopback; else None (every non-loopback
    interface, like libwebrtc), whatever the URL, since a real server never offers
    loopback candidates.

    ``url_host`` is an IP address, ``localhost``, or a name already resolved to one
    (`resolve_host`); an unresolved name never blocks here (see `host_addresses_for`)."""
    if configured is not None:
        return tuple(configured)
    if server_node_id == DEVSERVER_NODE_ID:
        return host_addresses_for(url_host)
    return None


def server_host_addresses(bind_host: str) -> tuple[str, ...] | None:
    """Where a server bound to ``bind_host`` gathers: that address, or every interface.
    A host name other than ``localhost`` is not resolved (`host_addresses_for`): pass
    the address it resolves to (`resolve_host`)."""
    try:
        ip = ipaddress.ip_address(bind_host.strip("[]"))
    except ValueError:
        return host_addresses_for(bind_host)
    return None if ip.is_unspecified else (str(ip),)


def candidate_to_json(candidate: RTCIceCandidate) -> str:
    """LiveKit's trickle format: the JSON of an RTCIceCandidateInit."""
    return json.dumps({
        "candidate": "candidate:" + candidate_to_sdp(candidate),
        "sdpMid": candidate.sdpMid,
        "sdpMLineIndex": candidate.sdpMLineIndex,
        "usernameFragment": None,
    })


def candidate_from_json(text: str) -> RTCIceCandidate | None:
    """Parse a trickled candidate; None for end-of-candidates or anything unusable."""
    try:
        init = json.loads(text)
        line = str(init.get("candidate") or "")
        if not line:
            return None
        if line.startswith("a="):
            line = line[2:]
        if line.startswith("candidate:"):
            line = line[len("candidate:"):]
        candidate = candidate_from_sdp(line)
        candidate.sdpMid = init.get("sdpMid")
        index = init.get("sdpMLineIndex")
        candidate.sdpMLineIndex = int(index) if index is not None else None
        return candidate
    except (ValueError, TypeError, AttributeError, AssertionError, IndexError,
            RecursionError, OverflowError):
        _log.warning("unusable trickle candidate ignored: %.200s", text)
        return None


def sdp_candidates(sdp: str) -> list[RTCIceCandidate]:
    """The candidates embedded in an SDP (aiortc puts all of them there)."""
    out: list[RTCIceCandidate] = []
    mid: str | None = None
    index = -1
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            index += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:"):]
        elif line.startswith("a=candidate:"):
            try:
                c = candidate_from_sdp(line[len("a=candidate:"):])
            except (ValueError, AssertionError, IndexError):
                continue
            c.sdpMid = mid
            c.sdpMLineIndex = index
            out.append(c)
    return out
