"""A deliberately small HTTP/1.1 + WebSocket server on AnyIO (h11 and wsproto).

One request per TCP connection (``Connection: close``) is all the dev server needs: plain
requests (``/rtc/validate``) get a text answer; WebSocket upgrades (``/rtc``) are handed,
after the handler has accepted them, to a `WebSocket` for the rest of the connection.
Runs on asyncio and Trio alike.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import anyio
import h11
import wsproto
import wsproto.events as wse
from anyio.abc import ByteStream

__all__ = ["HttpRequest", "Reject", "WebSocket", "serve_connection"]

_log = logging.getLogger(__name__)

_MAX_HEADER_BYTES = 64 * 1024
_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; last one wins

    @property
    def is_websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


@dataclass(frozen=True, slots=True)
class Reject:
    """A plain HTTP answer (also used to refuse a WebSocket upgrade)."""

    status: int
    text: str


class WebSocket:
    """A server-side WebSocket after the upgrade: binary messages in and out."""

    def __init__(self, stream: ByteStream, conn: wsproto.WSConnection, max_message: int) -> None:
        self._stream = stream
        self._conn = conn
        self._max = max_message
        self._lock = anyio.Lock()
        self._buffer = bytearray()
        self._closed = False

    async def receive(self) -> bytes | str | None:
        """The next whole message, or None once the connection is closed."""
        while True:
            for event in self._conn.events():
                if isinstance(event, wse.Message):
                    self._buffer += event.data if isinstance(event.data, bytes) else (
                        event.data.encode())
                    if len(self._buffer) > self._max:
                        await self.close(1009, "message too big")
                        return None
                    if event.message_finished:
                        data = bytes(self._buffer)
                        self._buffer.clear()
                        return data.decode("utf-8", "replace") if isinstance(
                            event, wse.TextMessage) else data
                elif isinstance(event, wse.Ping):
                    await self._write(self._conn.send(event.response()))
                elif isinstance(event, wse.CloseConnection):
                    if self._conn.state == wsproto.connection.ConnectionState.REMOTE_CLOSING:
                        await self._write(self._conn.send(event.response()))
                    await self._shutdown()
                    return None
            if self._closed:
                return None
            try:
                data = await self._stream.receive(_READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                    OSError):
                await self._shutdown()
                return None
            try:
                self._conn.receive_data(data)
            except wsproto.utilities.RemoteProtocolError:
                await self._shutdown()
                return None

    async def send(self, data: bytes) -> bool:
        """Send one binary message; False if the connection is gone."""
        if self._closed:
            return False
        try:
            return await self._write(self._conn.send(wse.BytesMessage(data=data)))
        except wsproto.utilities.LocalProtocolError:
            return False

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self._closed and self._conn.state == wsproto.connection.ConnectionState.OPEN:
            with contextlib.suppress(wsproto.utilities.LocalProtocolError):
                await self._write(self._conn.send(wse.CloseConnection(code=code, reason=reason)))
        await self._shutdown()

    async def _write(self, data: bytes) -> bool:
        try:
            async with self._lock:
                await self._stream.send(data)
            return True
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self._shutdown()
            return False

    async def _shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()


HttpHandler = Callable[[HttpRequest], Awaitable[Reject | None]]
WsHandler = Callable[[HttpRequest, WebSocket], Awaitable[None]]


async def serve_connection(
    stream: ByteStream, on_request: HttpHandler, on_websocket: WsHandler,
    *, max_message: int = 1 << 20, header_timeout: float = 10.0,
) -> None:
    """Serve one connection: ``on_request`` answers (a `Reject`) or, for an upgrade,
    accepts by returning None, after which ``on_websocket`` owns the WebSocket."""
    async with stream:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADER_BYTES)
        request: HttpRequest | None = None
        with anyio.move_on_after(header_timeout):
            request = await _read_request(stream, conn)
        if request is None:
            return
        try:
            answer = await on_request(request)
        except Exception:
            _log.exception("dev server: request handler failed")
            answer = Reject(500, "internal server error")
        if answer is None and not request.is_websocket:
            answer = Reject(400, "WebSocket upgrade required")
        if answer is not None:
            await _respond(stream, conn, answer)
            return
        ws_conn = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        target = request.path + ("?" if request.query else "")
        ws_conn.initiate_upgrade_connection(_raw_headers(request), target)
        accepted = False
        for event in ws_conn.events():
            if isinstance(event, wse.Request):
                await stream.send(ws_conn.send(wse.AcceptConnection()))
                accepted = True
        if not accepted:
            return
        trailing, _closed = conn.trailing_data
        if trailing:
            ws_conn.receive_data(bytes(trailing))
        ws = WebSocket(stream, ws_conn, max_message)
        try:
            await on_websocket(request, ws)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await ws.close()


async def _read_request(stream: ByteStream, conn: h11.Connection) -> HttpRequest | None:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            await _respond(stream, conn, Reject(exc.error_status_hint, "bad request"))
            return None
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive(_READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return None
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            target = event.target.decode("latin-1")
            parts = urlsplit(target)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in event.headers}
            return HttpRequest(event.method.decode("latin-1"), parts.path, query, headers)
        return None


async def _respond(stream: ByteStream, conn: h11.Connection, answer: Reject) -> None:
    body = answer.text.encode()
    try:
        if conn.our_state in (h11.SEND_RESPONSE, h11.IDLE):
            data = conn.send(h11.Response(status_code=answer.status, headers=[
                ("content-type", "text/plain; charset=utf-8"),
                ("content-length", str(len(body))),
                ("connection", "close"),
            ]))
            data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            await stream.send(data)
    except (h11.LocalProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError,
            OSError):
        pass


def _raw_headers(request: HttpRequest) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]
