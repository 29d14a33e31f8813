"""Where a client gathers ICE candidates, against each server, with default options."""

from __future__ import annotations

import socket
import time
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

import room
from room.events import DataReceived
from room.transport.ice import (
    DEVSERVER_NODE_ID,
    client_host_addresses,
    resolve_host,
    server_host_addresses,
)
from tests.helpers import next_event, port_forward
from tests.servers import Server

pytestmark = pytest.mark.anyio


def test_loopback_only_for_the_dev_server_reached_over_loopback() -> None:
    assert client_host_addresses("127.0.0.1", DEVSERVER_NODE_ID, None) == ("127.0.0.1",)
    assert client_host_addresses("localhost", DEVSERVER_NODE_ID, None) == ("127.0.0.1",)
    assert client_host_addresses("10.1.2.3", DEVSERVER_NODE_ID, None) is None
    # Any other server: every non-loopback interface, whatever the URL.
    assert client_host_addresses("127.0.0.1", "ND_x7Yz", None) is None
    assert client_host_addresses("localhost", "", None) is None
    # What the user names wins.
    assert client_host_addresses("127.0.0.1", "ND_x7Yz", ["10.0.0.2"]) == ("10.0.0.2",)
    assert client_host_addresses("10.1.2.3", DEVSERVER_NODE_ID, []) == ()


def test_choosing_addresses_never_resolves_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """This runs on the event loop during connect (and on the dev server for each join):
    a blocking DNS lookup there would stall every task. Names arrive resolved
    (`resolve_host`); an unresolved one other than localhost counts as not loopback."""

    def blocking_lookup(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError(f"blocking DNS lookup of {args[0]!r} on the event loop")

    for name in ("gethostbyname", "gethostbyname_ex", "getaddrinfo"):
        monkeypatch.setattr(socket, name, blocking_lookup)
    assert client_host_addresses("media.example.invalid", DEVSERVER_NODE_ID, None) is None
    assert client_host_addresses("LOCALHOST", DEVSERVER_NODE_ID, None) == ("127.0.0.1",)
    assert client_host_addresses("[::1]", DEVSERVER_NODE_ID, None) == ("::1",)
    assert server_host_addresses("media.example.invalid") is None
    assert server_host_addresses("localhost") == ("127.0.0.1",)
    assert server_host_addresses("127.0.0.2") == ("127.0.0.2",)
    assert server_host_addresses("0.0.0.0") is None


async def test_resolve_host_without_blocking() -> None:
    assert await resolve_host("127.0.0.1") == "127.0.0.1"
    assert await resolve_host("[::1]") == "[::1]"
    assert await resolve_host("") == ""
    assert await resolve_host("localhost") in ("127.0.0.1", "::1")
    resolved = await resolve_host("localhost")
    assert client_host_addresses(resolved, DEVSERVER_NODE_ID, None) == (resolved,)


def test_host_addresses_must_be_ip_addresses() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        room.RtcConfiguration(host_addresses=["eth0"])
    with pytest.raises(TypeError):
        room.RtcConfiguration(host_addresses="10.0.0.2")


async def test_a_server_reached_through_a_local_port_forward(server: Server) -> None:
    """The server is reached as ``ws://127.0.0.1:<port>`` through a forward (as with
    ``ssh -L`` or ``kubectl port-forward``), with default options. Its media is not on
    loopback: livekit-server's is on its node address, which a client gathering only on
    loopback could never reach. Only `room`'s own dev server gets loopback-only
    gathering (its media is on the loopback address it is bound to)."""
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    async with port_forward(parts.hostname, parts.port) as local:
        started = time.monotonic()
        async with room.Room.connect(f"ws://127.0.0.1:{local}",
                                     server.token("alice", room="r")) as alice, \
                server.connect("bob") as bob:
            took = time.monotonic() - started
            to_bob, to_alice = bob.events(DataReceived), alice.events(DataReceived)
            await alice.local_participant.publish_data(b"via the forward")
            await bob.local_participant.publish_data(b"and back")
            assert (await next_event(to_bob, DataReceived)).packet.data == b"via the forward"
            assert (await next_event(to_alice, DataReceived)).packet.data == b"and back"
    # With every interface gathered, those that cannot reach the server's STUN/TURN
    # stall gathering (aiortc does not trickle): see docs/networking.md.
    assert took < 15.0, took
