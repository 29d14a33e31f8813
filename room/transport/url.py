"""Building the signalling URLs from what the user gave us (pure functions)."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit

from room.errors import ConnectError

__all__ = ["PROTOCOL_VERSION", "SDK_VERSION", "signal_params", "signal_url", "validate_url"]

# The signal protocol version we speak (the Rust SDK sends 16 or 17; 16 is the last
# version without single-peer-connection behaviour, which we do not implement).
PROTOCOL_VERSION = 16
SDK_VERSION = "0.1.0"

_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def _base(url: str) -> tuple[str, str, str]:
    if not isinstance(url, str) or not url:
        raise ConnectError("the server URL must be a non-empty str")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced IPv6 bracket
        raise ConnectError(f"wrong URL {url!r}: {exc}") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ConnectError(
            f"wrong URL {url!r}: expected ws://, wss://, http:// or https:// and a host")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConnectError(f"wrong URL {url!r}: invalid port") from None
    return scheme, parts.netloc, parts.path.rstrip("/")


def signal_params(*, auto_subscribe: bool, adaptive_stream: bool = False,
                  reconnect: bool = False, participant_sid: str = "",
                  reconnect_reason: int = 0) -> dict[str, str]:
    """The query parameters an official client sends on ``/rtc``."""
    params = {
        "sdk": "python",
        "version": SDK_VERSION,
        "protocol": str(PROTOCOL_VERSION),
        "auto_subscribe": "1" if auto_subscribe else "0",
        "adaptive_stream": "1" if adaptive_stream else "0",
        "os": platform.system().lower(),
        "os_version": platform.release(),
        "device_model": platform.machine(),
    }
    if reconnect:
        params["reconnect"] = "1"
        params["sid"] = participant_sid
        params["reconnect_reason"] = str(reconnect_reason)  # models.ReconnectReason
    return params


def signal_url(url: str, params: Mapping[str, str]) -> str:
    """``ws(s)://host[/prefix]/rtc?...`` for the user's server URL."""
    scheme, netloc, path = _base(url)
    return urlunsplit((scheme, netloc, f"{path}/rtc", urlencode(params), ""))


def validate_url(url: str, params: Mapping[str, str]) -> str:
    """``http(s)://host[/prefix]/rtc/validate?...``: asks the server why a join failed."""
    scheme, netloc, path = _base(url)
    http = "https" if scheme == "wss" else "http"
    return urlunsplit((http, netloc, f"{path}/rtc/validate", urlencode(params), ""))
