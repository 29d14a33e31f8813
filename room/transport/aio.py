"""The asyncio boundary: where aiortc (asyncio-only) meets `room`'s AnyIO code.

aiortc and everything it owns (peer connections, data channels, ICE, DTLS, SCTP) runs on
*one* asyncio event loop in a dedicated daemon thread, `AiortcLoop`. The rest of `room`
runs on the caller's AnyIO backend (asyncio or Trio) and talks to it through these calls:

- ``await loop.run(coro_fn, *args)`` runs a coroutine on the aiortc loop and waits for its
  result without blocking the caller's loop. Cancelling the caller cancels the coroutine
  and waits (briefly) for it to finish, so nothing outlives its owner. A result that
  arrives after the caller gave up is handed to ``on_orphan`` (a closer), never leaked.
- ``await loop.run_detached(coro_fn, *args)``, and ``run`` of a coroutine function marked
  `uncancellable`, is for closing: once asked for, the coroutine runs to completion on the
  aiortc loop whatever happens to the caller, who may stop waiting (by being cancelled).
- ``loop.call_soon(fn, *args)`` posts a plain call to the aiortc loop (FIFO, no waiting).
- ``call_soon_in_caller()`` returns a thread-safe "call soon" for the *caller's* loop, which
  aiortc-side callbacks use to hand incoming data over (FIFO, never blocking the aiortc
  loop).

Errors never vanish and never take a loop down: a failing posted callback is logged (with
its traceback) and the next one runs; aiortc's event handlers report through
`report_handler_errors`; the aiortc loop's own unhandled errors go to this module's logger.
A forked child process gets a fresh aiortc loop on first use (the parent's thread does not
exist in the child).

Why a thread for both backends rather than aiortc on the caller's loop under asyncio: one
code path behaves identically on asyncio and Trio, and the measured cost is small (see
docs/trio-bridge.md and ``python -m bench.bridge``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar, TypeVarTuple

import anyio
import sniffio

__all__ = [
    "AiortcLoop",
    "FarEndError",
    "aiortc_loop",
    "call_soon_in_caller",
    "report_handler_errors",
    "uncancellable",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")

# How long a cancelled caller waits for the aiortc-side coroutine to wind down.
_CANCEL_GRACE = 5.0
# The attribute `uncancellable` sets on the coroutine functions it marks.
_UNCANCELLABLE = "__room_uncancellable__"

# Tasks started on an aiortc loop that nobody may be awaiting any more (detached calls,
# closers of orphaned results, the inner task of an `uncancellable` coroutine): asyncio
# holds tasks only weakly, so they are kept here until done.
_detached: set[asyncio.Future[Any]] = set()


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def _exc_info(exc: BaseException) -> tuple[type[BaseException], BaseException, Any]:
    return type(exc), exc, exc.__traceback__


class FarEndError(Exception):
    """A failure that is the far end's doing (a description it should not have sent), not
    a bug here: when nobody waits for the call any more it is logged as a warning."""


class _Mailbox:
    """Batches cross-thread calls: callbacks queue up in a deque and one wakeup of the
    target loop runs all that are there. Under load this turns one self-pipe write and
    one loop wakeup per packet into one per batch. FIFO; never blocks the poster.

    A callback that raises is logged with its traceback and the following ones still
    run: this includes `BaseException`s such as a stray ``asyncio.CancelledError`` (which
    would otherwise end the batch, leave the mailbox marked as scheduled and so drop every
    later callback, or on Trio crash the run). Only ``KeyboardInterrupt`` and
    ``SystemExit`` go through, after putting the rest of the batch back in front."""

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
            for i, fn in enumerate(batch):
                try:
                    fn()
                except (KeyboardInterrupt, SystemExit):
                    self._put_back(batch[i + 1:])
                    raise
                except BaseException:
                    _log.exception("cross-thread callback %s failed; carrying on", _name(fn))

    def _put_back(self, rest: list[Callable[[], None]]) -> None:
        with self._lock:
            self._queue.extendleft(reversed(rest))
            if not self._queue:
                self._scheduled = False
                return
        self._wake(self._drain)  # still marked as scheduled: wake up again for the rest


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


def report_handler_errors(emitter: Any, what: str, log: logging.Logger = _log) -> None:
    """Log, with its traceback, any exception raised by an event handler of ``emitter`` (an
    aiortc object: a pyee event emitter), and let aiortc carry on.

    Without an ``error`` listener pyee raises a handler's exception into whoever emitted
    the event, inside aiortc: the remaining handlers are skipped, and an exception from a
    ``message`` handler unwinds aiortc's receive path, which can end the connection."""

    def report(exc: BaseException) -> None:
        log.error("%s: event handler failed", what, exc_info=_exc_info(exc))

    emitter.on("error", report)


def uncancellable(
    fn: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Mark a coroutine function that must run to completion once started (a close).

    On the aiortc loop, cancelling whoever awaits it no longer interrupts it half-way (it
    runs as its own task, shielded; a failure nobody awaits any more is logged), and
    `AiortcLoop.run` treats it as `AiortcLoop.run_detached`: started even when the caller
    is already cancelled, never cancelled by the caller."""

    @functools.wraps(fn)
    async def shielded(*args: P.args, **kwargs: P.kwargs) -> T:
        task = _detach(fn(*args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            _report_unawaited(task, _name(fn))
            raise

    setattr(shielded, _UNCANCELLABLE, True)
    return shielded


def _detach(aw: Awaitable[T]) -> asyncio.Future[T]:
    """Run ``aw`` as a task of the running loop, held until done."""
    task = asyncio.ensure_future(aw)
    _detached.add(task)
    task.add_done_callback(_detached.discard)
    return task


def _report_unawaited(task: asyncio.Future[Any], what: str) -> None:
    """Log the failure of ``task``, which nobody awaits any more, once it is done."""

    def report(t: asyncio.Future[Any]) -> None:
        if not t.cancelled() and (exc := t.exception()) is not None:
            _log.error("%s failed after its caller stopped waiting", what,
                       exc_info=_exc_info(exc))

    task.add_done_callback(report)


def _on_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The aiortc loop's exception handler: report through `logging` (this module's
    logger) what asyncio's default handler would print to its own ``asyncio`` logger
    (a failed callback, a task exception never retrieved)."""
    exc = context.get("exception")
    details = "".join(f"\n  {key}: {value!r}" for key, value in sorted(context.items())
                      if key not in ("message", "exception"))
    _log.error("on the aiortc loop: %s%s", context.get("message") or "unhandled error",
               details, exc_info=_exc_info(exc) if isinstance(exc, BaseException) else None)


class _Call(Generic[T]):
    """One `AiortcLoop.run`: the aiortc-side task, and who owns its outcome.

    The caller owns the outcome until it gives up (`abandon`); after that, a result is
    handed to ``on_orphan`` on the aiortc loop and a failure is logged. Whichever of
    `abandon` (caller's thread) and `_finished` (aiortc thread) comes second sees both
    facts under the lock, so an outcome is released exactly once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Awaitable[T]],
                 args: tuple[Any, ...],
                 on_orphan: Callable[[T], object] | None, detached: bool) -> None:
        self._loop = loop
        self._fn = fn
        self._args = args
        self._on_orphan = on_orphan
        self._detached = detached
        self._lock = threading.Lock()
        self._abandoned = False
        self._task: asyncio.Future[T] | None = None
        self._outcome: asyncio.Future[T] | None = None
        self._soon = call_soon_in_caller()
        self.done = anyio.Event()  # the outcome is there (or the call never started)

    def start(self) -> None:
        self._loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:  # aiortc thread
        with self._lock:
            if self._abandoned and not self._detached:  # given up before it started
                self._soon(self.done.set)
                return
            task = self._task = self._loop.create_task(self._body())
        task.add_done_callback(self._finished)

    async def _body(self) -> T:
        return await self._fn(*self._args)

    def _finished(self, task: asyncio.Future[T]) -> None:  # aiortc thread
        with self._lock:
            self._outcome = task
            orphaned = self._abandoned
        if orphaned:
            self._release(task)
        self._soon(self.done.set)

    def abandon(self) -> None:
        """The caller stops waiting (caller's thread): cancel the call unless detached,
        and release an outcome that is already there."""
        with self._lock:
            self._abandoned = True
            task, outcome = self._task, self._outcome
        with contextlib.suppress(RuntimeError):  # the aiortc loop is closed: nothing to do
            if outcome is not None:
                self._loop.call_soon_threadsafe(self._release, outcome)
            elif task is not None and not self._detached:
                self._loop.call_soon_threadsafe(task.cancel)

    def _release(self, task: asyncio.Future[T]) -> None:  # aiortc thread
        what = _name(self._fn)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, FarEndError):
            _log.warning("%s failed after its caller stopped waiting: %s", what, exc)
            return
        if exc is not None:
            _log.error("%s failed after its caller stopped waiting", what,
                       exc_info=_exc_info(exc))
            return
        result = task.result()
        if self._on_orphan is None:
            _log.debug("result of %s dropped: its caller stopped waiting", what)
            return
        _log.debug("result of %s released: its caller stopped waiting", what)
        try:
            closing = self._on_orphan(result)
        except Exception:
            _log.exception("releasing the orphaned result of %s failed", what)
            return
        if inspect.isawaitable(closing):
            _report_unawaited(_detach(closing), f"releasing the orphaned result of {what}")

    def result(self) -> T:
        assert self._outcome is not None
        if self._outcome.cancelled():
            raise concurrent.futures.CancelledError(
                f"{_name(self._fn)} was cancelled on the aiortc loop")
        return self._outcome.result()


_instances: weakref.WeakSet[AiortcLoop] = weakref.WeakSet()


class AiortcLoop:
    """An asyncio event loop in a daemon thread (started on first use)."""

    _loop: asyncio.AbstractEventLoop | None
    _thread: threading.Thread | None
    _lock: threading.Lock
    _mailbox: _Mailbox | None

    def __init__(self) -> None:
        self._forget()
        _instances.add(self)

    def _forget(self) -> None:
        """Start from scratch: no loop, no thread (the state after a fork in the child,
        where the parent's thread does not exist; its loop is left as it is)."""
        self._loop = None
        self._thread = None
        self._lock = threading.Lock()
        self._mailbox = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                # A plain selector loop, whatever event-loop policy the program installed
                # (trio-asyncio's, for one, cannot run in another thread).
                loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop()
                loop.set_exception_handler(_on_loop_exception)

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
        mailbox = self._mailbox
        if mailbox is None:
            loop = self.loop
            with self._lock:
                if self._mailbox is None:
                    self._mailbox = _Mailbox(loop.call_soon_threadsafe)
                mailbox = self._mailbox
        mailbox.post(lambda: fn(*args))

    async def run(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts,
                  on_orphan: Callable[[T], object] | None = None) -> T:
        """Run ``fn(*args)`` on the aiortc loop and return its result to the AnyIO caller.

        If the caller is cancelled, so is the coroutine, and the caller waits for it
        (shielded, at most 5 s). A result produced all the same (the coroutine finished
        before the cancellation reached it, or did not let it through) cannot be returned:
        it is passed to ``on_orphan`` on the aiortc loop (for a created peer connection,
        say, its close; an awaitable it returns is run there), never silently leaked. A
        coroutine function marked `uncancellable` runs as with `run_detached`."""
        if getattr(fn, _UNCANCELLABLE, False):
            return await self.run_detached(fn, *args, on_orphan=on_orphan)
        return await self._run(fn, args, on_orphan, detached=False)

    async def run_detached(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts,
                           on_orphan: Callable[[T], object] | None = None) -> T:
        """Like `run`, but a cancelled caller stops waiting at once and the coroutine is
        left to run to completion on the aiortc loop: for closing, which must not stop
        half-way (sockets and transports left open). The coroutine is started even if the
        caller is already cancelled; a failure after the caller left is logged."""
        return await self._run(fn, args, on_orphan, detached=True)

    async def _run(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...],
                   on_orphan: Callable[[T], object] | None, *, detached: bool) -> T:
        call = _Call(self.loop, fn, args, on_orphan, detached)
        call.start()
        try:
            await call.done.wait()
        except BaseException:
            call.abandon()
            if not detached:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_GRACE):
                    await call.done.wait()
            raise
        return call.result()


class InlineAiortcLoop(AiortcLoop):
    """The rejected alternative, kept for measurement: aiortc on the caller's own asyncio
    loop (no thread). Works only when every room and server in the process runs on one
    asyncio loop; selected by ``ROOM_AIORTC=inline`` (see ``python -m bench.bridge``).
    Nothing is orphaned here (the caller awaits the coroutine itself), and `uncancellable`
    coroutines shield themselves."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        asyncio.get_running_loop().call_soon(fn, *args)

    async def run(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts,
                  on_orphan: Callable[[T], object] | None = None) -> T:
        if sniffio.current_async_library() != "asyncio":
            raise RuntimeError("ROOM_AIORTC=inline works only on the asyncio backend")
        return await fn(*args)

    async def run_detached(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts,
                           on_orphan: Callable[[T], object] | None = None) -> T:
        if sniffio.current_async_library() != "asyncio":
            raise RuntimeError("ROOM_AIORTC=inline works only on the asyncio backend")
        task = _detach(_as_coro(fn(*args)))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            _report_unawaited(task, _name(fn))
            raise


async def _as_coro(aw: Awaitable[T]) -> T:
    return await aw


def _after_fork_in_child() -> None:
    """The aiortc thread does not survive a fork: the child starts its own on first use."""
    for instance in list(_instances):
        instance._forget()
    _detached.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)

_shared: AiortcLoop = (InlineAiortcLoop() if os.environ.get("ROOM_AIORTC") == "inline"
                       else AiortcLoop())


def aiortc_loop() -> AiortcLoop:
    """The process-wide aiortc loop (one thread for every room and dev server)."""
    return _shared
