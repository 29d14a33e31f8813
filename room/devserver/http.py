"""A deliberately small HTTP/1.1 + WebSocket server on AnyIO (h11 and wsproto).

One request per TCP connection (``Connection: close``) is all the dev server needs: plain
requests (``/rtc/validate``, the Twirp server API) have their body read, up to a bound,
and get an answer (a `Reject`, or a `Response` with a body and content type of the
handler's choosing); WebSocket upgrades (``/rtc``) are handed, after the handler has
accepted them, to a `WebSocket` for the rest of the connection. Plain answers carry the
CORS headers livekit-server sends, and CORS preflight requests are answered here, as it
answers them, without reaching the handler (`CorsPolicy`). Runs on asyncio and Trio alike.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import anyio
import h11
import wsproto
import wsproto.events as wse
from anyio.abc import ByteStream

__all__ = [
    "LIVEKIT_CORS",
    "CorsPolicy",
    "HttpRequest",
    "Reject",
    "Response",
    "WebSocket",
    "serve_connection",
]

_log = logging.getLogger(__name__)

_MAX_HEADER_BYTES = 64 * 1024
# Request bodies larger than this are refused with 413 (the server API's largest
# legitimate request, 512 KiB of metadata, stays well below it even JSON-escaped).
MAX_BODY = 4 * 1024 * 1024
_READ_SIZE = 65536
# How long we keep reading (and discarding) what a client still sends after we refused
# its body, so that closing the socket does not reset the connection before the client
# has read our answer.
_LINGER = 1.0


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; last one wins
    body: bytes = b""  # plain requests only (a WebSocket upgrade has none)

    @property
    def is_websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


@dataclass(frozen=True, slots=True)
class Reject:
    """A plain-text HTTP answer (also used to refuse a WebSocket upgrade)."""

    status: int
    text: str


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer with a body and content type of the handler's choosing.

    ``headers`` are added as given (lower-case names); the framing headers
    (``content-length``, ``connection``) and the CORS ones are the server's."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Cross-origin rules for plain answers, as livekit-server applies them.

    livekit-server lets every origin read every answer (it relies on tokens, not origins):
    a request with an ``Origin`` gets it echoed in ``Access-Control-Allow-Origin`` with
    ``Access-Control-Expose-Headers: *``, every answer says ``Vary: Origin``, and a
    preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered 204 with
    the method and headers asked for, cacheable for a day, whatever the path. Browsers
    need this: livekit-client reads the 404 of ``/rtc/v1/validate`` (or the 401 of a
    refused token) with ``fetch()``, which a cross-origin page can only do when the
    answer allows its origin.
    """

    methods: frozenset[str] = frozenset({"OPTIONS", "HEAD", "GET", "POST", "PATCH", "DELETE"})
    max_age: int = 86400
    # Answers on these paths say ``Access-Control-Allow-Origin: *`` even without an
    # ``Origin`` (livekit-server's token middleware sets it for the join checks).
    any_origin_paths: frozenset[str] = field(
        default_factory=lambda: frozenset({"/rtc/validate", "/rtc/v1/validate"}))

    def is_preflight(self, request: HttpRequest) -> bool:
        return request.method == "OPTIONS" and bool(
            request.headers.get("access-control-request-method"))

    def preflight(self, request: HttpRequest) -> Response:
        """The answer to a preflight request (it never reaches the handler: preflights
        carry no credentials)."""
        headers = [("vary", "Origin, Access-Control-Request-Method, "
                            "Access-Control-Request-Headers")]
        origin = request.headers.get("origin", "")
        method = request.headers.get("access-control-request-method", "")
        if origin and self._allows(method):
            headers += [("access-control-allow-origin", origin),
                        ("access-control-allow-methods", method)]
            asked = request.headers.get("access-control-request-headers", "")
            if asked:  # any header is allowed: echo what was asked
                headers.append(("access-control-allow-headers", asked))
            headers.append(("access-control-max-age", str(self.max_age)))
        return Response(204, headers=tuple(headers))

    def headers(self, request: HttpRequest) -> list[tuple[str, str]]:
        """The CORS headers of a plain answer to ``request``."""
        headers = [("vary", "Origin")]
        origin = request.headers.get("origin", "")
        any_origin = request.path in self.any_origin_paths
        if origin and self._allows(request.method):
            if not any_origin:
                headers.append(("access-control-allow-origin", origin))
            headers.append(("access-control-expose-headers", "*"))
        if any_origin:
            headers.append(("access-control-allow-origin", "*"))
        return headers

    def _allows(self, method: str) -> bool:
        return method == "OPTIONS" or method in self.methods  # case-sensitive, as there


LIVEKIT_CORS = CorsPolicy()


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
                    # Once we have sent our close frame, wsproto refuses to send a pong.
                    if self._conn.state == wsproto.connection.ConnectionState.OPEN:
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

    async def abort(self) -> None:
        """Drop the connection at once, without a close frame (a network fault)."""
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


HttpHandler = Callable[[HttpRequest], Awaitable[Reject | Response | None]]
WsHandler = Callable[[HttpRequest, WebSocket], Awaitable[None]]


async def serve_connection(
    stream: ByteStream, on_request: HttpHandler, on_websocket: WsHandler,
    *, max_message: int = 1 << 20, header_timeout: float = 10.0, max_body: int = MAX_BODY,
    cors: CorsPolicy | None = LIVEKIT_CORS,
) -> None:
    """Serve one connection: ``on_request`` answers (a `Reject` or `Response`) or, for an
    upgrade, accepts by returning None, after which ``on_websocket`` owns the WebSocket.

    The client has ``header_timeout`` seconds to send its request, body included; a body
    over ``max_body`` bytes is refused with 413 before the handler sees the request."""
    async with stream:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADER_BYTES)
        request: HttpRequest | None = None
        refusal: Reject | None = None
        with anyio.move_on_after(header_timeout):
            request, refusal = await _read_request(stream, conn, max_body)
        if request is None:
            return
        if refusal is not None:
            await _respond(stream, conn, refusal, request, cors)
            await _linger(stream, 4 * max_body)
            return
        if cors is not None and cors.is_preflight(request):
            await _respond(stream, conn, cors.preflight(request), request, None)
            return
        try:
            answer = await on_request(request)
        except Exception:
            _log.exception("dev server: request handler failed")
            answer = Reject(500, "internal server error")
        if answer is None and not request.is_websocket:
            answer = Reject(400, "WebSocket upgrade required")
        if answer is not None:
            await _respond(stream, conn, answer, request, cors)
            return
        ws_conn = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        target = request.path + ("?" if request.query else "")
        accepted = False
        try:
            ws_conn.initiate_upgrade_connection(_raw_headers(request), target)
            for event in ws_conn.events():
                if isinstance(event, wse.Request):
                    await stream.send(ws_conn.send(wse.AcceptConnection()))
                    accepted = True
        except (h11.ProtocolError, wsproto.utilities.ProtocolError):
            # An upgrade wsproto will not take (no Host, no key, another version...).
            await _respond(stream, conn, Reject(400, "bad WebSocket upgrade request"),
                           request, cors)
            return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return  # the client is gone already
        if not accepted:
            return
        trailing, _closed = conn.trailing_data
        if trailing:
            ws_conn.receive_data(bytes(trailing))
        ws = WebSocket(stream, ws_conn, max_message)
        try:
            await on_websocket(request, ws)
        except Exception:
            # One connection's failure must not end the server's task group (and with it
            # every other connection): log it and close this one.
            _log.exception("dev server: WebSocket handler failed")
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await ws.close()


_TOO_LARGE = Reject(413, "request body too large")


async def _read_request(stream: ByteStream, conn: h11.Connection, max_body: int
                        ) -> tuple[HttpRequest | None, Reject | None]:
    """The request, with its body unless it is an upgrade; or a refusal of it (answered
    by the caller); or (None, None) if there is nothing to answer."""
    head = await _read_head(stream, conn)
    if head is None or head.is_websocket:
        return head, None
    declared = head.headers.get("content-length")  # h11 has checked that it is a number
    if declared is not None and int(declared) > max_body:
        return head, _TOO_LARGE
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return head, Reject(400, "bad request")
        if event is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                await stream.send(conn.send(h11.InformationalResponse(
                    status_code=100, headers=[], reason=_reason(100))))
            if not await _feed(stream, conn):
                return None, None
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                return head, _TOO_LARGE
        elif isinstance(event, h11.EndOfMessage):
            return replace(head, body=bytes(body)), None
        else:
            return None, None


async def _read_head(stream: ByteStream, conn: h11.Connection) -> HttpRequest | None:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            await _respond(stream, conn, Reject(exc.error_status_hint, "bad request"))
            return None
        if event is h11.NEED_DATA:
            if not await _feed(stream, conn):
                return None
            continue
        if isinstance(event, h11.Request):
            target = event.target.decode("latin-1")
            parts = urlsplit(target)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in event.headers}
            return HttpRequest(event.method.decode("latin-1"), parts.path, query, headers)
        return None


async def _feed(stream: ByteStream, conn: h11.Connection) -> bool:
    """Hand h11 what the client sent next; False if the connection is gone."""
    try:
        data = await stream.receive(_READ_SIZE)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return False
    conn.receive_data(data)
    return True


async def _respond(stream: ByteStream, conn: h11.Connection, answer: Reject | Response,
                   request: HttpRequest | None = None, cors: CorsPolicy | None = None) -> None:
    body: bytes
    content_type: str | None
    extra: tuple[tuple[str, str], ...]
    if isinstance(answer, Reject):
        # (text may quote what a client sent: never let it fail to encode)
        body, content_type = answer.text.encode(errors="replace"), "text/plain; charset=utf-8"
        extra = ()
    else:
        body, content_type, extra = answer.body, answer.content_type, answer.headers
    status = answer.status
    bodiless = status in (204, 304) or status < 200
    headers: list[tuple[str, str]] = []
    if content_type and not bodiless:
        headers.append(("content-type", content_type))
    if not bodiless:
        headers.append(("content-length", str(len(body))))
    headers += extra
    if cors is not None and request is not None:
        headers += cors.headers(request)
    headers.append(("connection", "close"))
    try:
        if conn.our_state in (h11.SEND_RESPONSE, h11.IDLE):
            data = conn.send(h11.Response(status_code=status, headers=headers,
                                          reason=_reason(status)))
            if body and not bodiless and (request is None or request.method != "HEAD"):
                data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            await stream.send(data)
    except (h11.LocalProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError,
            OSError):
        pass


async def _linger(stream: ByteStream, limit: int) -> None:
    """After answering a request whose body we did not read: stop sending, then read
    and drop what still comes (up to ``limit`` bytes, for at most a second), so that the
    client reads our answer instead of a connection reset."""
    with anyio.move_on_after(_LINGER), contextlib.suppress(
            anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await stream.send_eof()
        drained = 0
        while drained < limit:
            drained += len(await stream.receive(_READ_SIZE))


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _raw_headers(request: HttpRequest) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]
