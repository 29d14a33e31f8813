"""A LiveKit participant driven by hand, for tests of what a server does around resumes.

`room`'s own client hides its signalling; these tests need to hold it: drop the
WebSocket without a word while the peer connections live on, reopen it with
``reconnect=1&sid=...``, send a ``sync_state`` of their choosing, and see every message
the server sends, in order. `RawSignal` is one signalling WebSocket spoken with wsproto
over an AnyIO TCP stream (so `RawSignal.abort` can end it with no close frame at all);
`RawParticipant` adds both peer connections (`room.transport.peer.Peer`, as the client
uses them), answers the server's offers, and records the data packets it receives.

    async with RawParticipant.joined(url, token, host_addresses=...) as p:
        await p.send_reliable(models.DataPacket(sequence=1, user=...))
        await p.cut()                      # WebSocket gone, PCs up
        first = await p.resume()           # reconnect=1&sid=<p.sid>
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import wsproto
import wsproto.events as wse
from anyio.abc import SocketStream, TaskGroup
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from room.transport.aio import aiortc_loop, call_soon_in_caller
from room.transport.ice import candidate_to_json, client_host_addresses, sdp_candidates
from room.transport.peer import LOSSY, RELIABLE, Peer
from room.transport.url import signal_params, signal_url

__all__ = ["RawParticipant", "RawSignal", "Refused"]


class Refused(Exception):
    """The server refused the WebSocket upgrade: ``status`` and ``body``."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class RawSignal:
    """One signalling WebSocket: `SignalRequest` out, `SignalResponse` in."""

    def __init__(self, stream: SocketStream, conn: wsproto.WSConnection) -> None:
        self._stream = stream
        self._conn = conn
        self._buffer = bytearray()
        self._sending = anyio.Lock()
        self.closed = False
        self.close_code: int | None = None  # the server's close frame, if it sent one

    @classmethod
    async def open(cls, url: str, token: str, params: dict[str, str]) -> RawSignal:
        """Connect and upgrade; raises `Refused` if the server says no."""
        parts = urlsplit(signal_url(url, params))
        assert parts.hostname is not None and parts.port is not None
        stream = await anyio.connect_tcp(parts.hostname, parts.port)
        conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send(conn.send(wse.Request(
            host=parts.netloc, target=f"{parts.path}?{parts.query}",
            extra_headers=[(b"authorization", f"Bearer {token}".encode())])))
        status, body = 0, bytearray()
        while True:
            try:
                data = await stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                await stream.aclose()
                raise Refused(status, body.decode(errors="replace")) from None
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, wse.AcceptConnection):
                    signal = cls(stream, conn)
                    return signal
                if isinstance(event, wse.RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        await stream.aclose()
                        raise Refused(status, "")
                elif isinstance(event, wse.RejectData):
                    body += event.data
                    if event.body_finished:
                        await stream.aclose()
                        raise Refused(status, body.decode(errors="replace"))

    async def send(self, request: rtc.SignalRequest) -> bool:
        """Send one request; False if the connection is gone."""
        if self.closed:
            return False
        try:
            async with self._sending:
                await self._stream.send(self._conn.send(wse.BytesMessage(
                    data=request.SerializeToString())))
            return True
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError,
                wsproto.utilities.LocalProtocolError):
            await self.abort()
            return False

    async def receive(self) -> rtc.SignalResponse | None:
        """The next message, or None once the connection has ended."""
        while True:
            for event in self._conn.events():
                if isinstance(event, wse.BytesMessage):
                    self._buffer += event.data
                    if event.message_finished:
                        data = bytes(self._buffer)
                        self._buffer.clear()
                        try:
                            return rtc.SignalResponse.FromString(data)
                        except DecodeError:
                            continue
                elif isinstance(event, wse.Ping):
                    with contextlib.suppress(Exception):
                        async with self._sending:
                            await self._stream.send(self._conn.send(event.response()))
                elif isinstance(event, wse.CloseConnection):
                    self.close_code = event.code
                    with contextlib.suppress(Exception):
                        async with self._sending:
                            await self._stream.send(self._conn.send(event.response()))
                    await self.abort()
                    return None
            if self.closed:
                return None
            try:
                data = await self._stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                    OSError):
                await self.abort()
                return None
            try:
                self._conn.receive_data(data)
            except wsproto.utilities.RemoteProtocolError:
                await self.abort()
                return None

    async def abort(self) -> None:
        """Drop the TCP connection: no close frame, no leave (a network fault)."""
        if not self.closed:
            self.closed = True
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()


class RawParticipant:
    """A participant whose signalling a test holds in its hands (see the module doc).

    Every `SignalResponse` is appended to ``responses`` (across connections, in order)
    and every data packet received to ``packets``; `wait_for` waits for a condition on
    them. Offers are answered, answers and trickled candidates applied, as a client does.
    """

    def __init__(self, url: str, token: str, *, host_addresses: tuple[str, ...] | None,
                 auto_subscribe: bool = True) -> None:
        self.url = url
        self._token = token
        self._hosts = host_addresses
        self._auto_subscribe = auto_subscribe
        self.signal: RawSignal | None = None
        self.join: rtc.JoinResponse | None = None
        self.responses: list[rtc.SignalResponse] = []
        self.packets: list[models.DataPacket] = []
        self.publisher: Peer | None = None
        self.subscriber: Peer | None = None
        self._loop = aiortc_loop()
        self._tg: TaskGroup | None = None
        self._changed = anyio.Event()
        self._sdp_id = 0

    @property
    def sid(self) -> str:
        assert self.join is not None
        return self.join.participant.sid

    @property
    def identity(self) -> str:
        assert self.join is not None
        return self.join.participant.identity

    @classmethod
    @asynccontextmanager
    async def joined(cls, url: str, token: str, *, host_addresses: tuple[str, ...] | None,
                     auto_subscribe: bool = True, connect_rtc: bool = True,
                     ) -> AsyncIterator[RawParticipant]:
        """Join, set up both peer connections (unless not ``connect_rtc``) and wait until
        data flows both ways; leaves nothing running on exit (sends no leave)."""
        self = cls(url, token, host_addresses=host_addresses, auto_subscribe=auto_subscribe)
        self.answer_offers = connect_rtc
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                with anyio.fail_after(20):
                    await self._join(connect_rtc)
                yield self
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    if self.signal is not None:
                        await self.signal.abort()
                    for peer in (self.publisher, self.subscriber):
                        if peer is not None:
                            with anyio.move_on_after(3):
                                await self._loop.run(peer.close)

    async def _join(self, connect_rtc: bool) -> None:
        self.signal = await RawSignal.open(
            self.url, self._token, signal_params(auto_subscribe=self._auto_subscribe))
        first = await self.signal.receive()
        assert first is not None and first.WhichOneof("message") == "join", first
        self.join = first.join
        self.responses.append(first)
        if self._hosts is None:
            self._hosts = client_host_addresses(
                urlsplit(self.url).hostname or "", first.join.server_info.node_id, None)
        soon = call_soon_in_caller()

        def on_data(label: str, data: bytes) -> None:  # aiortc loop
            soon(lambda: self._on_data(data))

        async def make(name: str) -> Peer:
            return Peer(name=f"raw/{name}", host_addresses=self._hosts, on_data=on_data)

        self.publisher = await self._loop.run(make, "publisher")
        self.subscriber = await self._loop.run(make, "subscriber")
        assert self._tg is not None
        self._tg.start_soon(self._read, self.signal)
        if not connect_rtc:
            return
        sdp = await self._loop.run(self.publisher.offer_with_channels)
        await self._describe("offer", sdp, rtc.SignalTarget.PUBLISHER)
        await self._loop.run(self.publisher.wait_open, RELIABLE, LOSSY)
        if first.join.subscriber_primary:
            await self._loop.run(self.subscriber.wait_open, RELIABLE)

    def _on_data(self, data: bytes) -> None:
        try:
            self.packets.append(models.DataPacket.FromString(data))
        except DecodeError:
            return
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _read(self, signal: RawSignal) -> None:
        """Record and act on what ``signal`` brings, until it ends."""
        assert self.publisher is not None and self.subscriber is not None
        while (msg := await signal.receive()) is not None:
            self.responses.append(msg)
            self._notify()
            which = msg.WhichOneof("message")
            try:
                if which == "offer" and self.answer_offers:
                    sdp = await self._loop.run(self.subscriber.answer, msg.offer.sdp)
                    await self._describe("answer", sdp, rtc.SignalTarget.SUBSCRIBER,
                                         msg.offer.id)
                elif which == "answer":
                    await self._loop.run(self.publisher.accept_answer, msg.answer.sdp)
                elif which == "trickle":
                    peer = (self.subscriber if msg.trickle.target == rtc.SignalTarget.SUBSCRIBER
                            else self.publisher)
                    await self._loop.run(peer.add_candidate, msg.trickle.candidateInit)
            except Exception as exc:  # recorded for the test to see
                self.negotiation_error = exc
        self._notify()

    async def _describe(self, kind: str, sdp: str, target: rtc.SignalTarget,
                        sdp_id: int | None = None) -> None:
        assert self.signal is not None
        self._sdp_id += 1
        desc = rtc.SessionDescription(type=kind, sdp=sdp,
                                      id=sdp_id if sdp_id is not None else self._sdp_id)
        await self.signal.send(rtc.SignalRequest(offer=desc) if kind == "offer"
                               else rtc.SignalRequest(answer=desc))
        for candidate in sdp_candidates(sdp):
            await self.signal.send(rtc.SignalRequest(trickle=rtc.TrickleRequest(
                candidateInit=candidate_to_json(candidate), target=target)))

    # -- what a test does with it ------------------------------------------------------

    negotiation_error: Exception | None = None
    answer_offers = True  # False: leave the server's offers unanswered

    async def send(self, request: rtc.SignalRequest) -> bool:
        assert self.signal is not None
        return await self.signal.send(request)

    async def send_reliable(self, packet: models.DataPacket) -> None:
        """Send ``packet`` on our ``_reliable`` channel (as it is: sequence and all)."""
        assert self.publisher is not None
        self._loop.call_soon(self.publisher.send_nowait, RELIABLE, packet.SerializeToString())
        await anyio.lowlevel.checkpoint()

    async def cut(self) -> None:
        """Drop the signalling connection without a word; the PCs stay up."""
        assert self.signal is not None
        await self.signal.abort()

    async def resume(self, *, sid: str | None = None) -> rtc.SignalResponse | None:
        """Reopen signalling with ``reconnect=1&sid=`` (our sid unless ``sid``); returns
        the server's first message (None if it closed at once). Raises `Refused`."""
        params = signal_params(auto_subscribe=self._auto_subscribe, reconnect=True,
                               participant_sid=self.sid if sid is None else sid)
        self.signal = signal = await RawSignal.open(self.url, self._token, params)
        first = await signal.receive()
        if first is not None:
            self.responses.append(first)
            assert self._tg is not None
            self._tg.start_soon(self._read, signal)
        return first

    def since(self, index: int) -> list[rtc.SignalResponse]:
        return self.responses[index:]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def settle(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def user_packets(packets: list[models.DataPacket]) -> list[bytes]:
    return [p.user.payload for p in packets if p.WhichOneof("value") == "user"]

