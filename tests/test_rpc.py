"""RPC between two real `room` clients through the dev server, on both backends."""

from __future__ import annotations

import time

import anyio
import pytest

import room
from room import RpcError, RpcErrorCode, RpcInvocationData
from tests.helpers import client_tasks, known, wait_until
from tests.servers import Server

pytestmark = pytest.mark.anyio


async def test_round_trip_and_invocation_data(server: Server) -> None:
    srv = server
    async with srv.connect("callee") as callee, \
            srv.connect("caller") as caller:
        seen: list[RpcInvocationData] = []

        @callee.local_participant.rpc_method("greet")
        async def greet(data: RpcInvocationData) -> str:
            seen.append(data)
            return f"hello {data.payload}"

        answer = await caller.local_participant.perform_rpc(
            destination_identity="callee", method="greet", payload="world",
            response_timeout=3.0)
        assert answer == "hello world"
        assert seen[0].caller_identity == "caller"
        assert seen[0].payload == "world"
        assert seen[0].response_timeout == pytest.approx(3.0)


async def test_errors_by_code(server: Server) -> None:
    srv = server
    async with srv.connect("callee") as callee, \
            srv.connect("caller") as caller:
        me = callee.local_participant

        async def refuses(data: RpcInvocationData) -> str:
            raise room.RpcError(4001, "nope", "details")

        async def crashes(data: RpcInvocationData) -> str:
            raise ValueError("internal secret")

        async def too_big(data: RpcInvocationData) -> str:
            return "x" * 20_000

        me.register_rpc_method("refuses", refuses)
        me.register_rpc_method("crashes", crashes)
        me.register_rpc_method("too_big", too_big)
        with pytest.raises(ValueError):
            me.register_rpc_method("refuses", refuses)

        async def call(method: str, payload: str = "", dest: str = "callee") -> room.RpcError:
            with pytest.raises(room.RpcError) as info:
                await caller.local_participant.perform_rpc(
                    destination_identity=dest, method=method, payload=payload,
                    response_timeout=3.0)
            return info.value

        err = await call("refuses")
        assert (err.code, err.message, err.data) == (4001, "nope", "details")
        err = await call("crashes")
        assert err.code == RpcErrorCode.APPLICATION_ERROR
        assert "secret" not in str(err) and "secret" not in (err.data or "")
        assert (await call("too_big")).code == RpcErrorCode.RESPONSE_PAYLOAD_TOO_LARGE
        assert (await call("missing")).code == RpcErrorCode.UNSUPPORTED_METHOD
        assert (await call("x", "y" * 16_000)).code == RpcErrorCode.REQUEST_PAYLOAD_TOO_LARGE
        me.unregister_rpc_method("refuses")
        assert (await call("refuses")).code == RpcErrorCode.UNSUPPORTED_METHOD


async def test_a_call_to_an_identity_not_seen_is_sent_and_times_out_without_an_ack(
        server: Server) -> None:
    """No presence check before calling (LiveKit servers announce participants late): a
    call to nobody goes out, and without an ack it fails with CONNECTION_TIMEOUT."""
    async with server.connect("caller") as caller:
        started = time.monotonic()
        with pytest.raises(room.RpcError) as info:
            await caller.local_participant.perform_rpc(
                destination_identity="nobody", method="x", payload="", response_timeout=3.0)
        assert info.value.code == RpcErrorCode.CONNECTION_TIMEOUT
        assert 6.5 < time.monotonic() - started < 8.5  # the 7 s ack timeout


async def test_a_call_reaches_a_participant_not_announced_yet(server: Server) -> None:
    """Right after joining, the callee may not be announced to the caller yet (livekit:
    up to 3 s): the call is sent anyway and answered."""
    async with server.connect("caller") as caller, server.connect("callee") as callee:
        callee.local_participant.register_rpc_method("hi", lambda data: "hello")
        answer = await caller.local_participant.perform_rpc(
            destination_identity="callee", method="hi", payload="", response_timeout=5.0)
        assert answer == "hello"


async def test_response_timeout(server: Server) -> None:
    srv = server
    async with srv.connect("callee") as callee, \
            srv.connect("caller") as caller:

        @callee.local_participant.rpc_method("slow")
        async def slow(data: RpcInvocationData) -> str:
            await anyio.sleep(5)
            return "late"

        started = time.monotonic()
        with pytest.raises(room.RpcError) as info:
            await caller.local_participant.perform_rpc(
                destination_identity="callee", method="slow", payload="",
                response_timeout=0.5)
        assert info.value.code == RpcErrorCode.RESPONSE_TIMEOUT
        assert time.monotonic() - started < 1.5


async def test_callee_leaving_mid_call_fails_fast(server: Server) -> None:
    srv = server
    opts = room.RoomOptions(rpc_drain_timeout=0.1)
    async with srv.connect("caller") as caller:
        async with srv.connect("callee",
                                     options=opts) as callee:
            started_call = anyio.Event()

            @callee.local_participant.rpc_method("hang")
            async def hang(data: RpcInvocationData) -> str:
                started_call.set()
                await anyio.sleep_forever()
                return ""

            result: list[room.RpcError] = []

            async def call() -> None:
                with pytest.raises(room.RpcError) as info:
                    await caller.local_participant.perform_rpc(
                        destination_identity="callee", method="hang", payload="",
                        response_timeout=30.0)
                result.append(info.value)

            await known(caller, "callee")  # else its departure is never announced
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await started_call.wait()
                left = time.monotonic()
                await callee.disconnect()
        assert result[0].code == RpcErrorCode.RECIPIENT_DISCONNECTED
        # As soon as the server announces the departure (at its next presence batch).
        assert time.monotonic() - left < srv.presence_delay + 1.5


async def test_invocations_run_concurrently(server: Server) -> None:
    srv = server
    async with srv.connect("callee") as callee, \
            srv.connect("caller") as caller:
        release = anyio.Event()

        @callee.local_participant.rpc_method("wait")
        async def wait(data: RpcInvocationData) -> str:
            await release.wait()
            return "released"

        @callee.local_participant.rpc_method("now")
        async def now(data: RpcInvocationData) -> str:
            return "now"

        results: list[str] = []

        async def call(method: str) -> None:
            results.append(await caller.local_participant.perform_rpc(
                destination_identity="callee", method=method, payload="",
                response_timeout=5.0))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "wait")
            with anyio.fail_after(3):
                await call("now")  # not stuck behind the waiting invocation
            release.set()
        assert results == ["now", "released"]


async def test_disconnect_during_100_invocations_ends_within_the_grace_period(
        server: Server) -> None:
    srv = server
    grace = 0.5
    opts = room.RoomOptions(rpc_drain_timeout=grace)
    async with srv.connect("caller") as caller:
        errors: list[int] = []
        running = 0
        all_running = anyio.Event()
        async with srv.connect("callee",
                                     options=opts) as callee:

            @callee.local_participant.rpc_method("forever")
            async def forever(data: RpcInvocationData) -> str:
                nonlocal running
                running += 1
                if running == 100:
                    all_running.set()
                await anyio.sleep_forever()
                return ""

            async def call() -> None:
                try:
                    await caller.local_participant.perform_rpc(
                        destination_identity="callee", method="forever", payload="",
                        response_timeout=30.0)
                except room.RpcError as exc:
                    errors.append(exc.code)

            await known(caller, "callee")  # else its departure is never announced
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(call)
                with anyio.fail_after(20):
                    await all_running.wait()
                started = time.monotonic()
                await callee.disconnect()
                took = time.monotonic() - started
        assert grace <= took < grace + 1.5, took
        assert errors == [RpcErrorCode.RECIPIENT_DISCONNECTED] * 100
        # The callee's invocation tasks are gone (only the caller's room runs).
        assert not [t for t in client_tasks() if "_invoke" in t]
    assert client_tasks() == []


async def test_disconnect_from_inside_a_handler_does_not_wait_for_that_handler(
        server: Server) -> None:
    """A handler that leaves the room: ``disconnect()`` returns promptly (it does not wait
    out the drain period for the very invocation that called it), and the room ends."""
    async with server.connect("callee", options=room.RoomOptions(rpc_drain_timeout=5.0)
                              ) as callee, server.connect("caller") as caller:
        took: list[float] = []

        @callee.local_participant.rpc_method("leave")
        async def leave(data: RpcInvocationData) -> str:
            started = time.monotonic()
            await callee.disconnect()
            took.append(time.monotonic() - started)
            return "bye"

        with pytest.raises(RpcError):
            await caller.local_participant.perform_rpc(
                destination_identity="callee", method="leave", payload="", response_timeout=3.0)
        await wait_until(lambda: bool(took), timeout=5.0)
        assert took[0] < 2.5, took  # the goodbye is bounded by 2 s; the drain would be 5 s
        assert not callee.isconnected()
