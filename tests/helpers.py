"""Shared helpers for the integration tests (real sockets, real dev server)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
from anyio.abc import SocketAttribute, SocketStream

from room import Room
from room.events import RoomEvent, Subscription

E = TypeVar("E", bound=RoomEvent)


def client_tasks() -> list[str]:
    """Names of running tasks that belong to a `room` client (not to the dev server)."""
    names = [t.name or "" for t in anyio.get_running_tasks()]
    return sorted(n for n in names if (n.startswith("room.") and not n.startswith(
        "room.devserver")) or n.startswith("httpx_ws"))


async def next_event(sub: Subscription[RoomEvent], kind: type[E], timeout: float = 5.0) -> E:
    """The next event of type ``kind`` from ``sub`` (others are skipped)."""
    with anyio.fail_after(timeout):
        async for ev in sub:
            if isinstance(ev, kind):
                return ev
    raise AssertionError(f"subscription ended before a {kind.__name__} arrived")


async def collect(sub: Subscription[RoomEvent], count: int, timeout: float = 5.0
                  ) -> list[RoomEvent]:
    out: list[RoomEvent] = []
    with anyio.fail_after(timeout):
        async for ev in sub:
            out.append(ev)
            if len(out) == count:
                break
    return out


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]],
                     timeout: float = 5.0) -> None:
    """Poll ``predicate`` (plain or async) until it holds; fail after ``timeout`` s."""
    with anyio.fail_after(timeout):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.02)


async def aiortc_tasks() -> int:
    """How many tasks are alive on the aiortc loop (besides the one counting)."""
    import asyncio

    from room.transport.aio import aiortc_loop

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1

    return await aiortc_loop().run(count)


async def known(r: Room, *identities: str, timeout: float = 6.0) -> None:
    """Until ``r`` knows every one of ``identities``: LiveKit servers announce participants
    that publish nothing up to 3 s after they join (or after a batch interval)."""
    await wait_until(lambda: all(i in r.remote_participants for i in identities), timeout)


@asynccontextmanager
async def port_forward(host: str, port: int) -> AsyncIterator[int]:
    """A TCP forwarder on 127.0.0.1 to ``host:port`` (as ``ssh -L`` or ``kubectl
    port-forward`` make one); yields its local port. Ends with the block."""

    async def pipe(src: SocketStream, dst: SocketStream) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError,
                                 anyio.ClosedResourceError, OSError):
            async for chunk in src:
                await dst.send(chunk)
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError,
                                 OSError):
            await dst.send_eof()

    async def serve(client: SocketStream) -> None:
        async with client, await anyio.connect_tcp(host, port) as upstream, \
                anyio.create_task_group() as tg:
            tg.start_soon(pipe, client, upstream)
            await pipe(upstream, client)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield listener.extra(SocketAttribute.local_port)
        tg.cancel_scope.cancel()
