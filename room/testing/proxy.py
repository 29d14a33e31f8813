"""A TCP proxy that breaks connections on demand: signalling faults for any server.

Clients connect to ``proxy.url`` instead of the server's; every connection is relayed to
the server as is (WebSocket upgrade and frames included), until the test calls:

- `TcpProxy.cut`: every live connection is closed at once, in both directions, without a
  WebSocket close frame (what a NAT rebinding, a Wi-Fi handover or a load balancer
  restart gives a client). New connections are accepted as before.
- `TcpProxy.stall`: the live connections stop carrying bytes, in both directions, but
  stay open (a silent network: only keepalives can notice); new connections work.
  `TcpProxy.unstall` lets them go on.
- `TcpProxy.refuse`: new connections are closed as soon as they are accepted, until
  `TcpProxy.accept` (the server is unreachable).
- `TcpProxy.cut_after_messages`: the next connection(s) are cut as soon as the server
  has sent ``n`` WebSocket messages on each (1: right after the join response, before any
  offer: the client has joined, but its peer connections cannot come up).

It runs in the test's task group on loopback (``async with TcpProxy(host, port) as
proxy``); media and data do not go through it (they go over the peer connections).
`room.testing.Scenario` puts one in front of the agent under test, so that cutting the
agent's signalling works on livekit-server as on the dev server.
"""

from __future__ import annotations

from contextlib import suppress
from types import TracebackType

import anyio
from anyio.abc import SocketStream, TaskGroup

__all__ = ["TcpProxy"]


class _Pair:
    def __init__(self, client: SocketStream, upstream: SocketStream) -> None:
        self.client = client
        self.upstream = upstream
        self.scope = anyio.CancelScope()
        self.flowing = anyio.Event()
        self.flowing.set()
        self.cut_after: int | None = None  # WebSocket messages from the server
        self.opened_at = anyio.current_time()


class _MessageCounter:
    """Finds where the server's ``n``-th WebSocket message ends in the bytes it sends:
    its HTTP upgrade response, then frames (unmasked, from a server; a message may span
    several frames, the last with FIN; control frames do not count)."""

    def __init__(self, messages: int) -> None:
        self.left = messages
        self.buffer = b""
        self.in_headers = True

    def feed(self, data: bytes) -> int | None:
        """Of ``data``, how many bytes to forward before cutting (None: all, go on)."""
        start = len(self.buffer)
        self.buffer += data
        pos = 0
        if self.in_headers:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            self.in_headers = False
            pos = end + 4
        while True:
            header = self.buffer[pos:pos + 2]
            if len(header) < 2:
                break
            fin, opcode, length = header[0] & 0x80, header[0] & 0x0F, header[1] & 0x7F
            at = pos + 2
            if length >= 126:
                size = 2 if length == 126 else 8
                if len(self.buffer) < at + size:
                    break
                length = int.from_bytes(self.buffer[at:at + size], "big")
                at += size
            if header[1] & 0x80:
                at += 4  # masked (not from a server, but be exact)
            if len(self.buffer) < at + length:
                break
            pos = at + length
            if fin and opcode < 8:
                self.left -= 1
                if self.left == 0:
                    return max(0, pos - start)
        self.buffer = self.buffer[pos:]
        return None


class TcpProxy:
    """Relays ``127.0.0.1:<port>`` to ``target_host:target_port``; see the module doc."""

    def __init__(self, target_host: str, target_port: int, *,
                 source_host: str | None = None) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.source_host = source_host  # the address to connect to the target from
        self.port = 0
        self.connections = 0  # accepted so far
        self.cuts = 0  # connections cut so far
        self._pairs: set[_Pair] = set()
        self._refusing = False
        self._cut_after: int | None = None
        self._cut_connections = 0
        self._tg: TaskGroup | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> TcpProxy:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(listener.serve, self._handle)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(exc_type, exc, tb)

    def cut(self, *, older_than: float = 0.0) -> int:
        """Close every live connection (opened at least ``older_than`` seconds ago) now;
        how many there were."""
        now = anyio.current_time()
        pairs = [pair for pair in self._pairs if now - pair.opened_at >= older_than]
        for pair in pairs:
            pair.scope.cancel()
        self.cuts += len(pairs)
        return len(pairs)

    def stall(self) -> None:
        """Stop carrying bytes on the live connections (new ones are not affected)."""
        for pair in self._pairs:
            pair.flowing = anyio.Event()

    def unstall(self) -> None:
        for pair in self._pairs:
            pair.flowing.set()

    def refuse(self) -> None:
        self._refusing = True

    def accept(self) -> None:
        self._refusing = False

    def cut_after_messages(self, n: int = 1, *, connections: int = 1) -> None:
        """Cut each of the next ``connections`` connections once the server has sent ``n``
        WebSocket messages on it (what follows them in the same read is not delivered);
        the connections after those are relayed as usual."""
        if n < 1 or connections < 1:
            raise ValueError("n and connections must be at least 1")
        self._cut_after, self._cut_connections = n, connections

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            if self._refusing:
                return
            self.connections += 1
            try:
                upstream = await anyio.connect_tcp(self.target_host, self.target_port,
                                                   local_host=self.source_host)
            except OSError:
                return
            async with upstream:
                pair = _Pair(client, upstream)
                if self._cut_connections > 0:
                    pair.cut_after = self._cut_after
                    self._cut_connections -= 1
                self._pairs.add(pair)
                try:
                    with pair.scope:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._pump, pair, client, upstream, tg)
                            tg.start_soon(self._pump, pair, upstream, client, tg)
                finally:
                    self._pairs.discard(pair)
                    # Closed without a goodbye: abort both ends (no lingering FIN waits).
                    for stream in (client, upstream):
                        with suppress(Exception):
                            await anyio.aclose_forcefully(stream)

    async def _pump(self, pair: _Pair, source: SocketStream, sink: SocketStream,
                    tg: TaskGroup) -> None:
        counter = (_MessageCounter(pair.cut_after)
                   if pair.cut_after is not None and source is pair.upstream else None)
        try:
            while True:
                data = await source.receive()
                await pair.flowing.wait()
                if counter is not None and (until := counter.feed(data)) is not None:
                    if until:
                        await sink.send(data[:until])
                    self.cuts += 1
                    pair.scope.cancel()
                    return
                await sink.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                OSError):
            pass
        tg.cancel_scope.cancel()
