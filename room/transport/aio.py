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
import collections
import logging
import os
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


class _Mailbox:
    """Batches cross-thread calls: callbacks queue up in a deque and one wakeup of the
    target loop runs all that are there. Under load this turns one self-pipe write and
    one loop wakeup per packet into one per batch. FIFO; never blocks the poster."""

    def __init__(self, wake: Callable[[Callable[[], None]], object]) -> None:
        self._wake = wake
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._queue.append(fn)
            if self._scheduled:
                return
            self._scheduled = True
        self._wake(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._scheduled = False
                    return
                batch = list(self._queue)
                self._queue.clear()
            for fn in batch:
                try:
                    fn()
                except Exception:
                    _log.exception("cross-thread callback failed")


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

        return _Mailbox(trio_soon).post
    loop = asyncio.get_running_loop()

    def asyncio_soon(fn: Callable[[], None]) -> None:
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # loop closed
            _log.debug("caller's asyncio loop is closed; callback dropped")

    return _Mailbox(asyncio_soon).post


class AiortcLoop:
    """An asyncio event loop in a daemon thread (started on first use)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._mailbox: _Mailbox | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                # A plain selector loop, whatever event-loop policy the program installed
                # (trio-asyncio's, for one, cannot run in another thread).
                loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    ready.set()
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name="room-aiortc", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run the plain function ``fn(*args)`` on the aiortc loop soon (FIFO)."""
        if self._mailbox is None:
            loop = self.loop
            with self._lock:
                if self._mailbox is None:
                    self._mailbox = _Mailbox(loop.call_soon_threadsafe)
        self._mailbox.post(lambda: fn(*args))

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


class InlineAiortcLoop(AiortcLoop):
    """The rejected alternative, kept for measurement: aiortc on the caller's own asyncio
    loop (no thread). Works only when every room and server in the process runs on one
    asyncio loop; selected by ``ROOM_AIORTC=inline`` (see ``python -m bench.bridge``)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        asyncio.get_running_loop().call_soon(fn, *args)

    async def run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        if sniffio.current_async_library() != "asyncio":
            raise RuntimeError("ROOM_AIORTC=inline works only on the asyncio backend")
        return await fn(*args, **kwargs)


_shared: AiortcLoop = (InlineAiortcLoop() if os.environ.get("ROOM_AIORTC") == "inline"
                       else AiortcLoop())


def aiortc_loop() -> AiortcLoop:
    """The process-wide aiortc loop (one thread for every room and dev server)."""
    return _shared
