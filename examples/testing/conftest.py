"""The moderator's tests run on both AnyIO backends. The server comes from the `room`
pytest plugin's ``livekit_server`` fixture: the dev server unless ``--livekit-server``
(or ``ROOM_TEST_SERVER``) names another."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend
