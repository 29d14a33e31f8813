"""Every async test runs on both AnyIO backends; every client test on both servers.

``server`` is a fresh server for each test: `room`'s dev server, and the real
livekit-server (pinned release, in a network namespace; see tests/livekit.py). The real
half is skipped, with the reason, only where livekit-server cannot run (no Go build of it,
or no root for the namespace); CI sets ``ROOM_REQUIRE_LIVEKIT=1`` so it fails instead.
When a test on the real server fails, its report shows the end of the server's log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from room.devserver import DevServer
from tests.interop.servers import NsServer
from tests.livekit import LiveKitServer, livekit_unavailable
from tests.netns import NetNs, netns, remove_stale
from tests.servers import Server

# How long the dev server batches presence of non-publishers in the general suite (the
# real server's 3 s is its default, checked by the conformance test): fast tests.
DEV_PRESENCE_INTERVAL = 0.1


def pytest_sessionstart(session: pytest.Session) -> None:
    # Namespaces of earlier runs that were killed before they could delete theirs.
    remove_stale()


# Figures the fault, interop and fuzz tests measured (counts, times), printed at the end of
# the run whatever the capture mode, so CI's log shows them.
FIGURES: list[str] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``figures(line)``: report a measured figure in the run's closing summary."""
    def add(line: str) -> None:
        FIGURES.append(f"{request.node.name}: {line}")
    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("measured figures (faults, interop, fuzzing)")
        for line in FIGURES:
            terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "devserver(**settings): DevServer settings for the `server` fixture")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def livekit_netns() -> Iterator[NetNs]:
    """One namespace for the session's livekit-servers, reachable from this process."""
    reason = livekit_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with netns(exposed=True) as ns:
        yield ns


@asynccontextmanager
async def start_dev_server(request: pytest.FixtureRequest, **settings: Any
                           ) -> AsyncIterator[Server]:
    """A fresh dev server. ``@pytest.mark.devserver(ping_interval=1, ...)`` on a test
    sets it up (the real server's settings are fixed: 5 s ping interval, 15 s timeout,
    3 s presence batches); ``settings`` override both."""
    marker = request.node.get_closest_marker("devserver")
    settings = {"presence_interval": DEV_PRESENCE_INTERVAL,
                **(marker.kwargs if marker else {}), **settings}
    async with DevServer(**settings) as dev:
        yield Server.of_dev(dev)


@asynccontextmanager
async def start_livekit_server(request: pytest.FixtureRequest, log_dir: Path
                         ) -> AsyncIterator[Server]:
    """A fresh livekit-server in the session's namespace (skips where it cannot run)."""
    ns: NetNs = request.getfixturevalue("livekit_netns")
    lk = LiveKitServer(ns, log_dir=log_dir)
    await anyio.to_thread.run_sync(lk.start)
    try:
        yield Server.of_livekit(lk)
    finally:
        await anyio.to_thread.run_sync(lk.stop)


# For tests that spend long waiting out the real server's timers: both backends on the dev
# server, one on livekit-server (what livekit-server does does not depend on the client's
# backend; what the client does is checked on both). Keeps CI within its time.
livekit_once = pytest.mark.parametrize(
    ("anyio_backend", "server"), [("asyncio", "dev"), ("trio", "dev"), ("asyncio", "livekit")],
    indirect=["server"])


@pytest.fixture(params=["dev", "livekit"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    """A fresh server for this test: the dev server or livekit-server."""
    factory = (start_dev_server(request) if request.param == "dev"
               else start_livekit_server(request, tmp_path))
    async with factory as srv:
        yield srv


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    report = yield
    if report.failed:  # type: ignore[attr-defined]
        for srv in getattr(item, "funcargs", {}).values():
            if isinstance(srv, NsServer) or (isinstance(srv, Server) and srv.livekit):
                report.sections.append(  # type: ignore[attr-defined]
                    (f"{srv.kind} server log (tail)", srv.log_tail()))
    return report
