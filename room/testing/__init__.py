"""pytest plugin (registered as the ``room`` entry point): the ``livekit_server`` fixture.

    @pytest.mark.anyio
    async def test_agent(livekit_server):
        token = livekit_server.token("agent", room="r")
        async with room.Room.connect(livekit_server.url, token) as r:
            ...

The fixture yields a running `room.devserver.DevServer` on a free loopback port, fresh for
each test, on the test's AnyIO backend. It is async, so use it from ``pytest.mark.anyio``
tests (the anyio pytest plugin, installed with anyio, runs them).

pytest imports this plugin in every session of every project where `room` is installed,
so importing it must stay cheap: the dev server (and with it aiortc and PyAV) is imported
only when the fixture is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from room.devserver import DevServer

__all__ = ["livekit_server"]


@pytest.fixture
async def livekit_server() -> AsyncIterator[DevServer]:
    """A fresh `DevServer` on 127.0.0.1 and a free port, stopped after the test."""
    from room.devserver import DevServer

    async with DevServer(host="127.0.0.1", port=0) as server:
        yield server
