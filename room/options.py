"""Connection options, as frozen dataclasses."""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from room.errors import UnsupportedFeatureError
from room.types import TrackSource

__all__ = [
    "ContinualGatheringPolicy",
    "ReconnectPolicy",
    "IceServer",
    "IceTransportType",
    "RoomOptions",
    "RtcConfiguration",
    "TrackPublishOptions",
    "VideoCodec",
    "VideoEncoding",
]


class IceTransportType(enum.Enum):
    """Which ICE candidates the peer connections may use."""

    ALL = "all"
    RELAY = "relay"


class ContinualGatheringPolicy(enum.Enum):
    """Whether ICE keeps gathering candidates after the first round.

    Only ``GATHER_ONCE`` is supported (aiortc gathers every candidate once, before the
    offer); ``GATHER_CONTINUALLY`` raises `UnsupportedFeatureError`.
    """

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

    ``continual_gathering_policy`` must be ``GATHER_ONCE`` (the default): continual
    gathering is not supported yet and raises `UnsupportedFeatureError`.
    """

    ice_transport_type: IceTransportType = IceTransportType.ALL
    continual_gathering_policy: ContinualGatheringPolicy = ContinualGatheringPolicy.GATHER_ONCE
    ice_servers: Sequence[IceServer] = ()
    host_addresses: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.continual_gathering_policy, ContinualGatheringPolicy):
            raise TypeError("continual_gathering_policy must be a ContinualGatheringPolicy")
        if self.continual_gathering_policy is ContinualGatheringPolicy.GATHER_CONTINUALLY:
            raise UnsupportedFeatureError(
                "RtcConfiguration(continual_gathering_policy=GATHER_CONTINUALLY): continual "
                "ICE gathering is not supported yet (aiortc gathers candidates once, before "
                "the offer). Use ContinualGatheringPolicy.GATHER_ONCE, the default; a room "
                "whose network changes recovers by reconnecting (RoomOptions.reconnect).")
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
class ReconnectPolicy:
    """How the room repairs a broken connection (see docs/reliability.md).

    At most ``max_attempts`` attempts (resume or full rejoin), spaced by ``base_delay *
    n**2`` seconds before the n-th retry (the first attempt goes at once), never more than
    ``max_delay`` apart, and none after ``give_up_after`` seconds of trouble: then the
    room ends with `Disconnected`. The defaults are LiveKit's own clients'. It also
    counts and spaces the fresh attempts of a first join whose signalling is lost after
    the join response, within ``connect_timeout``.
    """

    max_attempts: int = 10
    base_delay: float = 0.3
    max_delay: float = 7.0
    give_up_after: float = 60.0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_attempts, int) and self.max_attempts >= 1):
            raise ValueError("max_attempts must be a positive int")
        if not 0 <= self.base_delay <= self.max_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")
        if not self.give_up_after > 0:
            raise ValueError("give_up_after must be positive")

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait before the next attempt, after ``failed_attempts`` failures."""
        return min(self.max_delay, self.base_delay * failed_attempts ** 2)


@dataclass(frozen=True, slots=True)
class RoomOptions:
    """How to connect.

    ``connect_timeout`` bounds the whole join (seconds). ``event_buffer_bytes`` is how much
    each ``Room.events()`` subscriber may have pending (every event is charged its payload
    plus 320 bytes) before it is cut off and its iterator raises `EventStreamOverflowError`;
    ``event_buffer_size``, if not None, also caps the number of pending events (see
    docs/events.md). ``stream_buffer_bytes`` is the same budget for each incoming data
    stream reader (see docs/streams.md). ``request_timeout`` bounds how long
    ``set_metadata`` and friends wait for the server's answer. ``rpc_drain_timeout`` is
    how long running RPC invocations may go on when the room is left before they are
    cancelled. ``reconnect`` is how a broken connection is repaired (`ReconnectPolicy`);
    None ends the room at the first fault.

    Not supported yet, and refused with `UnsupportedFeatureError` rather than ignored:
    ``dynacast=True`` and any ``e2ee`` other than None.
    """

    auto_subscribe: bool = True
    dynacast: bool = False
    e2ee: object | None = None
    rtc_config: RtcConfiguration | None = None
    connect_timeout: float = 10.0
    request_timeout: float = 10.0
    event_buffer_size: int | None = None
    event_buffer_bytes: int = 16 * 1024 * 1024
    stream_buffer_bytes: int = 16 * 1024 * 1024
    rpc_drain_timeout: float = 5.0
    reconnect: ReconnectPolicy | None = field(default_factory=ReconnectPolicy)

    def __post_init__(self) -> None:
        if self.dynacast:
            raise UnsupportedFeatureError(
                "RoomOptions(dynacast=True): dynacast is not supported yet (room publishes "
                "no simulcast video whose unused layers it could pause). Leave dynacast at "
                "False, the default.")
        if self.e2ee is not None:
            raise UnsupportedFeatureError(
                "RoomOptions(e2ee=...): end-to-end encryption (E2EE) is not supported yet. "
                "Leave e2ee at None, the default: media and data are still encrypted on "
                "the wire (DTLS, and TLS with wss://) but the server can read them; to "
                "keep data from the server, encrypt payloads yourself before "
                "publish_data.")
        if self.reconnect is not None and not isinstance(self.reconnect, ReconnectPolicy):
            raise TypeError("reconnect must be a ReconnectPolicy or None")
        if not self.connect_timeout > 0:
            raise ValueError("connect_timeout must be positive")
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be positive")
        if self.rpc_drain_timeout < 0:
            raise ValueError("rpc_drain_timeout must not be negative")
        if self.event_buffer_size is not None and not _positive_int(self.event_buffer_size):
            raise ValueError("event_buffer_size must be None or an int of at least 1")
        for name in ("event_buffer_bytes", "stream_buffer_bytes"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be an int of at least 1")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class VideoCodec(enum.IntEnum):
    """Video codecs (LiveKit's numbering). aiortc sends VP8 and H264 only."""

    VP8 = 0
    H264 = 1
    AV1 = 2
    VP9 = 3
    H265 = 4


_SENDABLE_CODECS = {VideoCodec.VP8: "vp8", VideoCodec.H264: "h264"}


@dataclass(frozen=True, slots=True)
class VideoEncoding:
    """A video track's encoding ceiling: bits per second and frames per second."""

    max_bitrate: int
    max_framerate: float = 30.0

    def __post_init__(self) -> None:
        if not _positive_int(self.max_bitrate):
            raise ValueError("max_bitrate must be a positive int (bits per second)")
        if not self.max_framerate > 0:
            raise ValueError("max_framerate must be positive")


@dataclass(frozen=True, slots=True)
class TrackPublishOptions:
    """How to publish a track (see docs/media.md).

    ``dtx`` and ``red`` are what the server is told about an audio track; aiortc's Opus
    encoder makes neither (no discontinuous transmission, no redundancy), so the server
    is told ``disable_red`` whatever ``red`` says. Not supported, and refused with
    `UnsupportedFeatureError` rather than ignored: ``simulcast=True``, and video codecs
    other than VP8 and H264.
    """

    source: TrackSource = TrackSource.UNKNOWN
    dtx: bool = True
    red: bool = True
    simulcast: bool = False
    video_codec: VideoCodec = VideoCodec.VP8
    video_encoding: VideoEncoding | None = None
    stream: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.source, TrackSource):
            raise TypeError("source must be a TrackSource")
        if self.simulcast:
            raise UnsupportedFeatureError(
                "TrackPublishOptions(simulcast=True): aiortc cannot send simulcast "
                "layers. Leave simulcast at False, the default.")
        if self.video_codec not in _SENDABLE_CODECS:
            raise UnsupportedFeatureError(
                f"TrackPublishOptions(video_codec={VideoCodec(self.video_codec).name}): "
                "aiortc sends VP8 and H264 only.")
        if self.video_encoding is not None and not isinstance(self.video_encoding,
                                                              VideoEncoding):
            raise TypeError("video_encoding must be a VideoEncoding or None")
        if not isinstance(self.stream, str):
            raise TypeError("stream must be a str")

    @property
    def codec_name(self) -> str:
        return _SENDABLE_CODECS[self.video_codec]
