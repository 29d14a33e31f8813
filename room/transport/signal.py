"""The signalling connection: LiveKit's protobuf-over-WebSocket channel, on httpx-ws.

`connect_signal` opens ``<url>/rtc`` with the token in the ``Authorization`` header and
returns once the server's ``JoinResponse`` has arrived. When the upgrade is refused it asks
``/rtc/validate`` why, so `ConnectError` can say so. The token never appears in a message.
The caller owns the connection's lifetime through the `contextlib.AsyncExitStack` it passes.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from urllib.parse import urlsplit

import httpx
import wsproto.utilities
from google.protobuf.message import DecodeError
from httpx_ws import (
    AsyncWebSocketSession,
    HTTPXWSException,
    WebSocketDisconnect,
    WebSocketUpgradeError,
    aconnect_ws,
)
from livekit.protocol import rtc

from room.errors import ConnectError
from room.transport.url import signal_url, validate_url
from room.types import DisconnectReason

__all__ = ["ResumeRefused", "SignalClosed", "SignalConnection", "connect_signal",
           "resume_signal"]

_log = logging.getLogger(__name__)

# Largest signalling frame we accept (the join response of a big room is large).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class SignalClosed(Exception):
    """The signalling WebSocket is closed; ``reason`` says how."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SignalConnection:
    """A joined signalling WebSocket: send `SignalRequest`, receive `SignalResponse`."""

    def __init__(self, ws: AsyncWebSocketSession) -> None:
        self._ws = ws

    async def send(self, request: rtc.SignalRequest) -> None:
        try:
            await self._ws.send_bytes(request.SerializeToString())
        except wsproto.utilities.LocalProtocolError as exc:
            # wsproto's message quotes the whole event, frame bytes included: not for a log.
            raise SignalClosed("signal connection lost while sending (the WebSocket was "
                               "already closed)") from exc
        except (HTTPXWSException, httpx.HTTPError, OSError) as exc:
            raise SignalClosed(f"signal connection lost while sending: {exc!r}") from exc

    async def receive(self) -> rtc.SignalResponse | None:
        """The next message; None for a frame that is not a valid ``SignalResponse``."""
        try:
            data = await self._ws.receive_bytes()
        except WebSocketDisconnect as exc:
            raise SignalClosed(f"server closed the signal connection ({exc.code} "
                               f"{exc.reason})".strip()) from exc
        except (HTTPXWSException, httpx.HTTPError, OSError) as exc:
            raise SignalClosed(f"signal connection lost: {exc!r}") from exc
        try:
            return rtc.SignalResponse.FromString(data)
        except DecodeError:
            _log.warning("malformed signal frame (%d bytes) ignored", len(data))
            return None

    async def aclose(self) -> None:
        try:
            await self._ws.close()
        except Exception:
            _log.debug("error while closing the signal connection", exc_info=True)


class ResumeRefused(Exception):
    """The server will not resume that session (it sent ``leave`` instead of
    ``reconnect``): only a full rejoin can go on."""

    def __init__(self, leave: rtc.LeaveRequest) -> None:
        super().__init__(f"resume refused ({DisconnectReason.from_wire(leave.reason).name})")
        self.leave = leave


async def connect_signal(
    stack: AsyncExitStack, url: str, token: str, params: dict[str, str]
) -> tuple[SignalConnection, rtc.JoinResponse]:
    """Open the signal connection and wait for the join response.

    Raises `ConnectError` saying why the server refused or could not be reached. Bound it
    with a cancel scope: it waits for the server as long as it is allowed to.
    """
    conn, first, where = await _open(stack, url, token, params, "join response")
    which = first.WhichOneof("message")
    if which == "leave":
        reason = DisconnectReason.from_wire(first.leave.reason)
        raise ConnectError(f"{where} refused the join ({reason.name})")
    if which != "join":
        raise ConnectError(f"{where} sent {which!r} before the join response")
    return conn, first.join


async def resume_signal(
    stack: AsyncExitStack, url: str, token: str, params: dict[str, str]
) -> tuple[SignalConnection, rtc.ReconnectResponse]:
    """Reopen the signal connection for an existing session (``params`` carry
    ``reconnect=1`` and its ``sid``) and wait for the server's ``reconnect`` answer.

    Raises `ResumeRefused` when the server answers ``leave`` (the session is gone), and
    `ConnectError` as `connect_signal` does otherwise.
    """
    conn, first, where = await _open(stack, url, token, params, "reconnect response")
    which = first.WhichOneof("message")
    if which == "leave":
        raise ResumeRefused(first.leave)
    if which != "reconnect":
        raise ConnectError(f"{where} sent {which!r} before the reconnect response")
    return conn, first.reconnect


async def _open(
    stack: AsyncExitStack, url: str, token: str, params: dict[str, str], awaited: str,
) -> tuple[SignalConnection, rtc.SignalResponse, str]:
    """The WebSocket upgrade, then the server's first message."""
    if not isinstance(token, str) or not token:
        raise ConnectError("the access token must be a non-empty str")
    ws_url = signal_url(url, params)
    where = _where(ws_url)
    headers = {"Authorization": f"Bearer {token}"}
    client = await stack.enter_async_context(httpx.AsyncClient(timeout=None))
    try:
        ws: AsyncWebSocketSession = await stack.enter_async_context(aconnect_ws(
            ws_url, client, headers=headers, keepalive_ping_interval_seconds=None,
            max_message_size_bytes=MAX_MESSAGE_BYTES,
        ))
    except WebSocketUpgradeError as exc:
        raise ConnectError(_redact(
            await _explain_refusal(client, url, params, headers, exc.response, where), token
        )) from None
    except (httpx.HTTPError, OSError) as exc:
        raise ConnectError(
            f"server unreachable at {where}: {_redact(str(exc) or type(exc).__name__, token)}"
        ) from None
    conn = SignalConnection(ws)
    try:
        first = await conn.receive()
    except SignalClosed as exc:
        raise ConnectError(_redact(f"{where} closed the connection before the {awaited}: "
                                   f"{exc.message}", token)) from None
    if first is None:
        raise ConnectError(f"{where} sent a malformed {awaited}")
    return conn, first, where


async def _explain_refusal(
    client: httpx.AsyncClient, url: str, params: dict[str, str], headers: dict[str, str],
    upgrade: httpx.Response, where: str,
) -> str:
    """Ask ``/rtc/validate`` why the upgrade failed, and put it into words."""
    try:
        resp = await client.get(validate_url(url, params), headers=headers, timeout=5.0)
        status, body = resp.status_code, resp.text.strip()[:300]
    except (httpx.HTTPError, OSError):
        status, body = upgrade.status_code, ""
    detail = f": {body}" if body else ""
    if status in (401, 403) and "permission" in body.lower():
        return f"permission denied (HTTP {status} from {where}){detail}"
    if status == 401:
        low = body.lower()
        what = "expired token" if "expired" in low else "invalid token"
        return f"{what} (HTTP 401 from {where}){detail}"
    if status == 403:
        return f"permission denied (HTTP 403 from {where}){detail}"
    if status == 404:
        if "room" in body.lower():
            return f"room not found (HTTP 404 from {where}){detail}"
        return f"wrong URL: no LiveKit server at {where} (HTTP 404){detail}"
    if status >= 500:
        return f"server error (HTTP {status} from {where}){detail}"
    if 200 <= status < 300:
        return (f"{where} refused the WebSocket upgrade (HTTP {upgrade.status_code}) "
                "although /rtc/validate accepted the token")
    return f"join refused (HTTP {status} from {where}){detail}"


def _where(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _redact(text: str, token: str) -> str:
    return text.replace(token, "<token>") if token else text
