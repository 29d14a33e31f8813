"""The asyncio boundary (`room.transport.aio`): closes that cancellation cannot cut short,
results nobody waits for any more, forked children, and errors in callbacks."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import warnings

import anyio
import anyio.to_thread
import pytest

from room.transport.aio import aiortc_loop, call_soon_in_caller, uncancellable
from room.transport.peer import RELIABLE, Peer
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

_LOGGER = "room.transport.aio"


async def _noop() -> None:
    pass


async def _make_peer(name: str) -> Peer:
    return Peer(name=name, host_addresses=("127.0.0.1",))


# -- closing: once asked for, it completes --------------------------------------------------


async def test_an_uncancellable_close_completes_when_its_caller_is_cancelled() -> None:
    loop = aiortc_loop()
    steps: list[str] = []

    @uncancellable
    async def close() -> None:
        steps.append("started")
        await asyncio.sleep(0.2)
        steps.append("transports closed")
        await asyncio.sleep(0.1)
        steps.append("done")

    started = time.monotonic()
    with anyio.move_on_after(0.05):
        await loop.run(close)
    assert time.monotonic() - started < 0.25, "the cancelled caller kept waiting"
    await wait_until(lambda: steps == ["started", "transports closed", "done"])

    # Asked for by a caller that is cancelled already: it still runs, whole.
    steps.clear()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await loop.run(close)
    await wait_until(lambda: steps == ["started", "transports closed", "done"])


async def test_run_detached_completes_and_reports_a_late_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=_LOGGER)
    loop = aiortc_loop()
    steps: list[str] = []

    async def close(fail: bool) -> str:
        steps.append("started")
        await asyncio.sleep(0.15)
        steps.append("done")
        if fail:
            raise OSError("socket already gone")
        return "closed"

    assert await loop.run_detached(close, False) == "closed"
    steps.clear()
    with anyio.move_on_after(0.05):
        await loop.run_detached(close, True)
    assert steps == ["started"]
    await wait_until(lambda: steps == ["started", "done"])
    await wait_until(lambda: "failed after its caller stopped waiting" in caplog.text)
    record = next(r for r in caplog.records if "stopped waiting" in r.getMessage())
    assert record.name == _LOGGER and record.exc_info is not None
    assert isinstance(record.exc_info[1], OSError)


async def test_a_late_failure_of_the_far_ends_doing_is_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    """A description the far end should not have sent, refused after the caller left (the
    room was closing), is the far end's fault: a warning, not an error with a traceback
    (found by the 100,000-example fuzz run)."""
    from room.transport.aio import FarEndError

    caplog.set_level(logging.WARNING, logger=_LOGGER)
    loop = aiortc_loop()

    async def refuse() -> None:
        await asyncio.sleep(0.1)
        raise FarEndError("answer refused: Media sections in answer do not match offer")

    with anyio.move_on_after(0.02):
        await loop.run_detached(refuse)
    await wait_until(lambda: "stopped waiting" in caplog.text)
    record = next(r for r in caplog.records if "stopped waiting" in r.getMessage())
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "do not match" in record.getMessage()


async def test_an_answer_with_no_offer_is_ignored_and_a_bad_one_refused() -> None:
    from room.transport.peer import NegotiationError, Peer

    async def run() -> tuple[bool, str]:
        peer = Peer(name="test")
        try:
            ignored = await peer.accept_answer("v=0\r\n")
            await peer.offer_with_channels()
            try:
                await peer.accept_answer("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n")
            except NegotiationError as exc:
                return ignored, str(exc)
            return ignored, "accepted"
        finally:
            await peer.close()

    ignored, refused = await aiortc_loop().run(run)
    assert ignored is False
    assert refused.startswith("test: answer refused"), refused


async def test_a_peer_closes_completely_even_if_its_closer_is_cancelled() -> None:
    """The close of a peer connection whose sockets are open (ICE gathered) is asked for
    by a caller that is already cancelled (a teardown whose bound has run out), and the
    aiortc loop is busy, so the close cannot start before its caller has left: the
    connection and its transports still end up closed."""
    loop = aiortc_loop()
    peer = await loop.run(_make_peer, "closing")
    try:
        await loop.run(peer.offer_with_channels)

        async def states() -> tuple[str, str]:
            assert peer.pc.sctp is not None
            return peer.pc.connectionState, peer.pc.sctp.transport.transport.state

        assert (await loop.run(states))[1] != "closed"
        busy = threading.Event()
        loop.call_soon(busy.wait, 10)  # so the close cannot start before its caller leaves
        with anyio.CancelScope() as scope:
            scope.cancel()
            await loop.run(peer.close)
        busy.set()

        async def closed() -> bool:
            return await loop.run(states) == ("closed", "closed")

        await wait_until(closed)
    finally:
        await loop.run(peer.close)


# -- results nobody waits for any more ------------------------------------------------------


class _Resource:
    def __init__(self) -> None:
        self.closed = False


async def test_a_result_that_arrives_after_its_caller_gave_up_is_released() -> None:
    loop = aiortc_loop()
    started, proceed = threading.Event(), threading.Event()
    released: list[_Resource] = []
    returned: list[_Resource] = []

    async def create() -> _Resource:
        started.set()
        # Busy on the aiortc loop (as while creating a peer connection): the caller's
        # cancellation cannot get in before the result exists.
        proceed.wait(10)
        return _Resource()

    async def close(resource: _Resource) -> None:  # on the aiortc loop
        await asyncio.sleep(0)
        resource.closed = True
        released.append(resource)

    scopes: list[anyio.CancelScope] = []

    async def caller() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            returned.append(await loop.run(create, on_orphan=close))

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        assert await anyio.to_thread.run_sync(started.wait, 10)
        scopes[0].cancel()
        await anyio.sleep(0.1)  # the caller gives up
        proceed.set()
    assert returned == []
    await wait_until(lambda: len(released) == 1)
    assert released[0].closed


async def test_a_call_given_up_before_it_started_never_runs() -> None:
    loop = aiortc_loop()
    proceed = threading.Event()
    ran: list[str] = []

    async def create() -> str:
        ran.append("create")
        return "resource"

    loop.call_soon(proceed.wait, 10)  # the aiortc loop is busy for a while
    threading.Timer(0.3, proceed.set).start()
    with anyio.move_on_after(0.05):
        await loop.run(create, on_orphan=ran.append)
    await loop.run(_noop)
    assert ran == []


# -- fork --------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_fresh_aiortc_loop(anyio_backend: str) -> None:
    """The parent's aiortc thread does not exist in a forked child; the child's first
    call must start its own instead of waiting forever for the parent's."""
    loop = aiortc_loop()
    parent_loop = loop.loop  # the parent's aiortc thread runs
    anyio.run(loop.run, _noop, backend=anyio_backend)
    with warnings.catch_warnings():  # Python 3.12+ warns about forking with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            async def where() -> int:
                return id(asyncio.get_running_loop())

            child_loop_id = anyio.run(loop.run, where, backend=anyio_backend)
            code = 0 if child_loop_id != id(parent_loop) else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung waiting for its parent's aiortc loop")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's loop is untouched.
    assert loop.loop is parent_loop
    anyio.run(loop.run, _noop, backend=anyio_backend)


# -- errors in callbacks ---------------------------------------------------------------------


def _raise_cancelled() -> None:
    # What reading the result of a cancelled asyncio future raises: a BaseException.
    raise asyncio.CancelledError


def _raise_runtime_error() -> None:
    raise RuntimeError("callback bug")


async def test_a_failing_callback_to_the_caller_is_logged_and_the_next_runs(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=_LOGGER)
    soon = call_soon_in_caller()
    ran: list[int] = []

    async def post() -> None:  # on the aiortc thread, as aiortc callbacks do
        soon(_raise_runtime_error)
        soon(_raise_cancelled)
        soon(lambda: ran.append(1))

    await aiortc_loop().run(post)
    await wait_until(lambda: ran == [1])
    soon(lambda: ran.append(2))  # the mailbox still works
    await wait_until(lambda: ran == [1, 2])
    failures = [r for r in caplog.records if r.name == _LOGGER]
    assert [type(r.exc_info[1]) for r in failures if r.exc_info] == [
        RuntimeError, asyncio.CancelledError]
    assert all("_raise_" in r.getMessage() for r in failures)


async def test_a_failing_callback_posted_to_the_aiortc_loop_is_logged_and_the_next_runs(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=_LOGGER)
    loop = aiortc_loop()
    ran: list[int] = []
    loop.call_soon(_raise_runtime_error)
    loop.call_soon(_raise_cancelled)
    loop.call_soon(ran.append, 1)
    await loop.run(_noop)  # FIFO: after the posts
    await wait_until(lambda: ran == [1])
    loop.call_soon(ran.append, 2)
    await loop.run(_noop)
    await wait_until(lambda: ran == [1, 2])
    assert len([r for r in caplog.records if r.name == _LOGGER and r.exc_info]) == 2


async def test_unhandled_errors_on_the_aiortc_loop_are_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    loop = aiortc_loop()

    async def schedule() -> None:
        asyncio.get_running_loop().call_soon(_raise_runtime_error)

    await loop.run(schedule)
    await loop.run(_noop)

    def logged() -> bool:
        return any(r.name == _LOGGER and r.exc_info is not None
                   and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records)

    await wait_until(logged)
    assert not [r for r in caplog.records if r.name == "asyncio"]


async def test_a_failing_aiortc_event_handler_is_logged_and_the_others_run(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="room.transport.peer")
    seen: list[object] = []

    def on_state(state: str) -> None:
        raise RuntimeError(f"state handler bug ({state})")

    def on_data(label: str, data: bytes) -> None:
        raise RuntimeError("data handler bug")

    async def scenario() -> None:
        peer = Peer(name="handlers", host_addresses=("127.0.0.1",), on_state=on_state,
                    on_data=on_data)
        try:
            peer.pc.on("connectionstatechange", lambda: seen.append("state"))
            peer.pc.emit("connectionstatechange")  # as aiortc does
            await peer.offer_with_channels()
            channel = peer._channels[RELIABLE]
            channel.on("message", seen.append)
            channel.emit("message", b"packet")  # as aiortc's SCTP receive path does
        finally:
            await peer.close()

    await aiortc_loop().run(scenario)
    assert seen[:2] == ["state", b"packet"]  # (and "state" again: closing is a change)
    messages = [(r.name, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert ("room.transport.peer", "handlers: event handler failed", True) in messages
    assert ("room.transport.peer", f"handlers {RELIABLE}: event handler failed",
            True) in messages
