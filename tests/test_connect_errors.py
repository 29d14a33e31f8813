"""Every way a connect can fail gives `ConnectError` naming the cause, in time, tokenless."""

from __future__ import annotations

import socket
import time
import warnings
from collections.abc import AsyncIterator

import anyio
import jwt
import pytest
from livekit import api as lkapi

import room
from room.devserver.auth import mint_token
from tests.helpers import client_tasks
from tests.servers import Server

pytestmark = pytest.mark.anyio

FAST = room.RoomOptions(connect_timeout=3.0)


async def expect_connect_error(url: str, token: str, *words: str,
                               options: room.RoomOptions = FAST) -> str:
    started = time.monotonic()
    with pytest.raises(room.ConnectError) as info:
        async with room.Room.connect(url, token, options=options):
            pytest.fail("connect() should have failed")
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert elapsed < options.connect_timeout + 1.0, elapsed
    if token:
        assert token not in message
    for word in words:
        assert word in message.lower(), message
    assert client_tasks() == []
    return message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_token_from_livekit_api_is_accepted(server: Server) -> None:
    srv = server
    token = (lkapi.AccessToken(srv.api_key, srv.api_secret)
             .with_identity("lk-user").with_name("From livekit-api")
             .with_metadata("md").with_attributes({"k": "v"})
             .with_grants(lkapi.VideoGrants(room_join=True, room="r",
                                            can_update_own_metadata=True))
             .to_jwt())
    async with room.Room.connect(srv.url, token) as r:
        me = r.local_participant
        assert (me.identity, me.name, me.metadata, me.attributes) == (
            "lk-user", "From livekit-api", "md", {"k": "v"})
        await me.set_metadata("updated")
        assert me.metadata == "updated"


async def test_bad_signature(server: Server) -> None:
    token = mint_token(server.api_key, "not-the-secret", "eve", room="r")
    await expect_connect_error(server.url, token, "invalid token")


async def test_garbage_token(server: Server) -> None:
    await expect_connect_error(server.url, "not-a-jwt-at-all", "invalid token")


async def test_unknown_api_key(server: Server) -> None:
    token = mint_token("other-key", server.api_secret, "eve", room="r")
    msg = await expect_connect_error(server.url, token, "invalid token")
    assert "api key" in msg.lower()


def signed(claims: dict[str, object], secret: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dev secret is short on purpose
        return jwt.encode(claims, secret, algorithm="HS256")


async def test_expired_token(server: Server) -> None:
    now = int(time.time())
    token = signed({"iss": server.api_key, "sub": "late", "nbf": now - 7200,
                    "exp": now - 3600, "video": {"room": "r", "roomJoin": True}},
                   server.api_secret)
    await expect_connect_error(server.url, token, "expired token")


async def test_token_without_room_join(server: Server) -> None:
    now = int(time.time())
    token = signed({"iss": server.api_key, "sub": "x", "nbf": now, "exp": now + 60,
                    "video": {"room": "r", "roomJoin": False}}, server.api_secret)
    await expect_connect_error(server.url, token, "permission", "permissions denied")


async def test_wrong_url_path(server: Server) -> None:
    token = server.token("a", room="r")
    await expect_connect_error(server.url + "/not/livekit", token, "wrong url")


async def test_wrong_scheme() -> None:
    await expect_connect_error("ftp://127.0.0.1:1", "tok", "wrong url")


async def test_closed_port() -> None:
    port = free_port()
    await expect_connect_error(f"ws://127.0.0.1:{port}", "tok-123", "unreachable")


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never answers."""
    held: list[anyio.abc.SocketStream] = []

    async def hold(stream: anyio.abc.SocketStream) -> None:
        held.append(stream)
        await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        yield f"ws://127.0.0.1:{port}"
        tg.cancel_scope.cancel()
    await listener.aclose()


async def test_connect_timeout(silent_server: str) -> None:
    opts = room.RoomOptions(connect_timeout=0.5)
    msg = await expect_connect_error(silent_server, "secret-token", "timed out", options=opts)
    assert "0.5" in msg


async def test_cancelling_a_hanging_connect_leaves_nothing(silent_server: str) -> None:
    started = time.monotonic()
    with anyio.move_on_after(0.3) as scope:
        async with room.Room.connect(silent_server, "tok"):
            pytest.fail("should not connect")
    assert scope.cancelled_caught
    assert time.monotonic() - started < 1.5
    assert client_tasks() == []


async def test_bad_options_and_arguments() -> None:
    with pytest.raises(ValueError):
        room.RoomOptions(connect_timeout=0)
    with pytest.raises(TypeError):
        room.Room.connect("ws://x", "t", options=object())  # type: ignore[arg-type]
    await expect_connect_error("ws://127.0.0.1:1", "", "token")
