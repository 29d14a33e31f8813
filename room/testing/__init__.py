"""Testing toolkit for agents built on `room`, and its pytest plugin (the ``room`` entry
point): the ``livekit_server`` fixture.

    @pytest.mark.anyio
    async def test_agent(livekit_server):
        token = livekit_server.token("agent", room="r")
        async with room.Room.connect(livekit_server.url, token) as r:
            ...

The fixture yields a `RoomServer`: by default a fresh `room.devserver.DevServer` on
127.0.0.1 for each test, on the test's AnyIO backend. ``--livekit-server SPEC`` (or the
``ROOM_TEST_SERVER`` environment variable) points it at a real livekit-server instead: a
binary to start, or ``ws://KEY:SECRET@HOST:PORT``; several specs, comma-separated, run
each such test once per server (see `room.testing.servers`). The fixture is async, so
use it from ``pytest.mark.anyio`` tests.

The rest of the toolkit (docs/testing.md):

- `room.testing.strategies`: hypothesis strategies, up to whole room histories;
- `Scenario`: puppet participants play a history against the agent under test;
- `RoomMachine`: a hypothesis state machine whose rules are room happenings;
- faults on demand: `Fault` steps, and `RoomServer.cut_signal` / `drop_udp` / `restart`.

pytest imports this plugin in every session of every project where `room` is installed,
so importing it stays cheap: the dev server (and with it aiortc and PyAV) and hypothesis
are imported only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from room.testing.history import (
    CallRpc,
    Fault,
    Happening,
    Join,
    Leave,
    Pause,
    PublishTone,
    Remove,
    SendData,
    SetAttributes,
    SetMetadata,
    SetName,
    SetRoomMetadata,
    check_history,
)

if TYPE_CHECKING:
    from room.testing.machine import RoomMachine
    from room.testing.scenario import Puppet, RpcOutcome, Scenario, ScenarioError
    from room.testing.servers import RoomServer, ServerSpec, UnsupportedFaultError

__all__ = [
    "CallRpc",
    "Fault",
    "Happening",
    "Join",
    "Leave",
    "Pause",
    "PublishTone",
    "Puppet",
    "Remove",
    "RoomMachine",
    "RoomServer",
    "RpcOutcome",
    "Scenario",
    "ScenarioError",
    "SendData",
    "SetAttributes",
    "SetMetadata",
    "SetName",
    "SetRoomMetadata",
    "UnsupportedFaultError",
    "check_history",
    "livekit_server",
    "livekit_server_spec",
    "open_server",
    "strategies",
]

_LAZY = {
    "RoomMachine": "room.testing.machine",
    "Puppet": "room.testing.scenario",
    "RpcOutcome": "room.testing.scenario",
    "Scenario": "room.testing.scenario",
    "ScenarioError": "room.testing.scenario",
    "RoomServer": "room.testing.servers",
    "UnsupportedFaultError": "room.testing.servers",
    "open_server": "room.testing.servers",
}


def __getattr__(name: str) -> Any:
    if name == "strategies":
        return importlib.import_module("room.testing.strategies")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'room.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# -- the pytest plugin --------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("room", "room testing toolkit")
    group.addoption(
        "--livekit-server", action="store", default=None, metavar="SPEC",
        help="the server(s) the livekit_server fixture and RoomMachine use: 'dev' (the "
             "default: room's dev server), the path of a livekit-server binary, or "
             "ws://KEY:SECRET@HOST:PORT; comma-separated for several (each test runs on "
             "each). Default: $ROOM_TEST_SERVER, else dev.")


def pytest_configure(config: pytest.Config) -> None:
    option = config.getoption("--livekit-server", default=None)
    if option is not None:
        from room.testing import servers

        servers._option = option


def pytest_unconfigure(config: pytest.Config) -> None:
    import sys

    servers = sys.modules.get("room.testing.servers")
    if servers is not None:
        servers.stop_shared_processes()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "livekit_server_spec" not in metafunc.fixturenames:
        return
    from room.testing.servers import configured_specs

    specs = configured_specs()
    if len(specs) > 1:
        metafunc.parametrize("livekit_server_spec", specs, indirect=True,
                             ids=[spec.id for spec in specs])


@pytest.fixture
def livekit_server_spec(request: pytest.FixtureRequest) -> ServerSpec:
    """The `ServerSpec` of the server this test runs against (see the module doc)."""
    param = getattr(request, "param", None)
    if param is not None:
        spec: ServerSpec = param
        return spec
    from room.testing.servers import default_spec

    return default_spec()


@pytest.fixture
async def livekit_server(livekit_server_spec: ServerSpec) -> AsyncIterator[RoomServer]:
    """A running server for this test: a fresh dev server, or the configured
    livekit-server (see the module doc)."""
    from room.testing.servers import open_server

    async with open_server(livekit_server_spec) as server:
        yield server
