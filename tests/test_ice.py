"""Where a client gathers ICE candidates, against each server, with default options."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest

import room
from room.events import DataReceived
from room.transport.ice import DEVSERVER_NODE_ID, client_host_addresses
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
