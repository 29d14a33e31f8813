"""The asyncio boundary: where aiortc (asyncio-only) meets `room`'s AnyIO code.

aiortc and everything it owns (peer connections, data channels, ICE, DTLS, SCTP) runs on
*one* asyncio event loop in a dedicated daemon thread, `AiortcLoop`. The rest of `room`
runs on the caller's AnyIO backend (asyncio or Trio) and talks to it through two calls:

- ``await loop.run(coro_fn, *args)`` runs a coroutine on the aiortc loop and waits for its
  result without blocking the caller's loop. Cancelling the caller cancels the coroutine
  and waits (briefly) for it to finish, so nothing outlives its owner.
- ``loop.caller_soon()`` returns a thread-safe "call soon" for the *caller's* loop, which
  aiortc-side callbacks use to hand incoming data over (FIFO, never blocking the aiortc
  loop).

Why a thread for both backends rather than aiortc on the caller's loop under asyncio: one
code path behaves identically on asyncio and Trio, and the measured cost is small (see
docs/trio-bridge.md and ``python -m bench.bridge``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import anyio
import sniffio

__all__ = ["AiortcLoop", "aiortc_loop", "call_soon_in_caller"]

_log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

# How long a cancelled caller waits for the aiortc-side coroutine to wind down.
_CANCEL_GRACE = 5.0


def call_soon_in_caller() -> Callable[[Callable[[], None]], None]:
    """A thread-safe, non-blocking "run this soon" for the current AnyIO event loop."""
    library = sniffio.current_async_library()
    if library == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()

        def trio_soon(fn: Callable[[], None]) -> None:
            try:
                token.run_sync_soon(fn)
            except trio.RunFinishedError:
                _log.debug("caller's trio run has finished; callback dropped")

        return trio_soon
    loop = asyncio.get_running_loop()

    def asyncio_soon(fn: Callable[[], None]) -> None:
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # loop closed
            _log.debug("caller's asyncio loop is closed; callback dropped")

    return asyncio_soon


class AiortcLoop:
    """An asyncio event loop in a daemon thread (started on first use)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    ready.set()
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name="room-aiortc", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the aiortc loop from any thread (fire and track)."""
        return asyncio.run_coroutine_threadsafe(_as_coro(coro), self.loop)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run the plain function ``fn(*args)`` on the aiortc loop soon (FIFO)."""
        self.loop.call_soon_threadsafe(fn, *args)

    async def run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args)`` on the aiortc loop and return its result to the AnyIO caller."""
        done = anyio.Event()
        soon = call_soon_in_caller()
        future = asyncio.run_coroutine_threadsafe(_as_coro(fn(*args, **kwargs)), self.loop)
        future.add_done_callback(lambda _: soon(done.set))
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_GRACE):
                await done.wait()
            raise
        return future.result()


async def _as_coro(aw: Awaitable[T]) -> T:
    return await aw


_shared = AiortcLoop()


def aiortc_loop() -> AiortcLoop:
    """The process-wide aiortc loop (one thread for every room and dev server)."""
    return _shared
