"""Connection options, as frozen dataclasses."""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "ContinualGatheringPolicy",
    "IceServer",
    "IceTransportType",
    "RoomOptions",
    "RtcConfiguration",
]


class IceTransportType(enum.Enum):
    """Which ICE candidates the peer connections may use."""

    ALL = "all"
    RELAY = "relay"


class ContinualGatheringPolicy(enum.Enum):
    """Whether ICE keeps gathering candidates after the first round."""

    GATHER_ONCE = "gather_once"
    GATHER_CONTINUALLY = "gather_continually"


@dataclass(frozen=True, slots=True)
class IceServer:
    """A STUN or TURN server; ``credential`` is kept out of the repr."""

    urls: Sequence[str]
    username: str = ""
    credential: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class RtcConfiguration:
    """WebRTC settings; ``ice_servers`` here are used in addition to the server's.

    ``host_addresses``: the local IP addresses to gather host ICE candidates on. None (the
    default) means every non-loopback interface, as libwebrtc does, except against
    `room`'s own dev server reached over loopback, where it means loopback only. Name
    addresses when some interfaces cannot reach the server: gathering on them is useless
    and, with STUN servers listed, slow (see docs/networking.md).
    """

    ice_transport_type: IceTransportType = IceTransportType.ALL
    continual_gathering_policy: ContinualGatheringPolicy = (
        ContinualGatheringPolicy.GATHER_CONTINUALLY
    )
    ice_servers: Sequence[IceServer] = ()
    host_addresses: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.host_addresses is not None:
            if isinstance(self.host_addresses, str):
                raise TypeError("host_addresses must be a sequence of IP addresses, not a str")
            for address in self.host_addresses:
                try:
                    ipaddress.ip_address(address)
                except (TypeError, ValueError):
                    raise ValueError(f"host_addresses: {address!r} is not an IP address"
                                     ) from None


@dataclass(frozen=True, slots=True)
class RoomOptions:
    """How to connect.

    ``connect_timeout`` bounds the whole join (seconds). ``event_buffer_size`` is the number
    of events each ``Room.events()`` subscriber may have pending before its iterator raises
    `EventStreamOverflowError` (see docs/events.md). ``request_timeout`` bounds how long
    ``set_metadata`` and friends wait for the server's answer. ``rpc_drain_timeout`` is
    how long running RPC invocations may go on when the room is left before they are
    cancelled.
    """

    auto_subscribe: bool = True
    dynacast: bool = False
    e2ee: object | None = None
    rtc_config: RtcConfiguration | None = None
    connect_timeout: float = 10.0
    request_timeout: float = 10.0
    event_buffer_size: int = 1024
    rpc_drain_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.connect_timeout > 0:
            raise ValueError("connect_timeout must be positive")
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be positive")
        if self.rpc_drain_timeout < 0:
            raise ValueError("rpc_drain_timeout must not be negative")
        if self.event_buffer_size < 1:
            raise ValueError("event_buffer_size must be at least 1")
