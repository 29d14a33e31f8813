"""A browser and `room` in one room: livekit-client in headless Chromium, through our dev
server and through livekit-server.

The person on the other side of an agent is usually in a browser. The browser peer
(tests/browser/browser_peer.mjs) runs livekit-client's browser build with its default
options in Debian's Chromium, driven by playwright-core, and speaks the JSON-lines protocol
of tests/interop/peer.py, so `Peer` drives it like the Python peers. Its page is served on
127.0.0.1 inside the namespace: a secure context, as a real (https) page is, which
livekit-client's RPC needs (``crypto.randomUUID``), and an origin other than the server's,
so the server's HTTP answers must carry CORS headers for the page to read them.

Chromium, livekit-server and libwebrtc ignore loopback for media, so everything (server,
browser, `room` peer) runs inside a network namespace (tests/netns.py). Two routes make it
look like a real machine to Chromium, with nothing leaving the namespace (it has no
interface to the outside): Chromium offers host candidates only on its default-route
interface, which it finds by pointing a UDP socket at 8.8.8.8 without sending anything,
so a route to that one address gives it a host candidate, which it hides behind an mDNS
``<uuid>.local`` name as it does everywhere; a multicast route makes mDNS possible, so a
server that tried to resolve such a name would wait for an answer, as on a LAN.

Needs root, ``node``, Debian's ``chromium`` and ``npm ci --prefix tests/browser``; skipped
with the reason otherwise (``ROOM_REQUIRE_BROWSER=1``, for CI, makes that a failure). The
livekit-server half also needs the pinned livekit-server (tests/livekit.py). The tests are
subprocess-driven and backend-neutral; the `room` peer runs on asyncio and on trio.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCSessionDescription

from room.transport.aio import aiortc_loop
from room.transport.peer import Peer as RtcPeer
from tests.interop.peer import ROOM_PEER, Peer
from tests.interop.servers import NsServer, ns_server
from tests.livekit import livekit_unavailable
from tests.netns import NetNs, netns, netns_unavailable

BROWSER_DIR = Path(__file__).with_name("browser")
BROWSER_PEER = BROWSER_DIR / "browser_peer.mjs"
CHROMIUM = os.environ.get("ROOM_CHROMIUM", "/usr/bin/chromium")
# livekit-server (and the dev server) announce a participant that publishes nothing up
# to 3 s late; Chromium's start adds a second or two.
PRESENCE_TIMEOUT = 8.0


@functools.cache
def browser_unavailable() -> str | None:
    """Why the browser peer cannot run here (a skip reason), or None if it can."""
    modules = BROWSER_DIR / "node_modules"
    if shutil.which("node") is None:
        return "node not found (Node.js 20 or later, with npm)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found (Debian package chromium, or set ROOM_CHROMIUM)"
    if not ((modules / "livekit-client").is_dir() and (modules / "playwright-core").is_dir()):
        return "tests/browser/node_modules is missing: run `npm ci --prefix tests/browser`"
    return netns_unavailable()


def require_browser() -> None:
    """Skip (or with ``ROOM_REQUIRE_BROWSER=1`` fail) where the browser cannot run."""
    reason = browser_unavailable()
    if reason is None:
        return
    if os.environ.get("ROOM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"ROOM_REQUIRE_BROWSER=1, but {reason}")
    pytest.skip(reason)


def _look_like_a_real_machine(ns: NetNs) -> None:
    """Routes that give Chromium an mDNS-hidden host candidate (module docstring)."""
    ns.run(["ip", "route", "add", "8.8.8.8/32", "dev", ns.client_if])
    ns.run(["ip", "route", "add", "224.0.0.0/4", "dev", ns.client_if])


@pytest.fixture(scope="module", params=["dev", "livekit"])
def room_server(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsServer]:
    require_browser()
    if request.param == "livekit":
        reason = livekit_unavailable()
        if reason is not None:
            pytest.skip(reason)
    logs = tmp_path_factory.mktemp(f"browser-{request.param}")
    with netns() as ns, ns_server(request.param, ns, log_dir=logs) as srv:
        _look_like_a_real_machine(ns)
        yield srv


@pytest.fixture(autouse=True)
def server_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print what the server logged during the test: pytest shows it when the test fails."""
    if "room_server" not in request.fixturenames:
        yield
        return
    srv: NsServer = request.getfixturevalue("room_server")
    start = srv.log_path.stat().st_size if srv.log_path.exists() else 0
    yield
    with contextlib.suppress(OSError), open(srv.log_path, "rb") as log:
        log.seek(start)
        lines = log.read().decode(errors="replace").splitlines()[-80:]
        print(f"--- {srv.kind} server log during the test (tail) ---", *lines, sep="\n")


def start_browser(srv: NsServer, identity: str, token: str, logs: Path) -> Peer:
    return Peer.start(srv.ns, srv.url, token, name=identity,
                      program=["node", str(BROWSER_PEER)],
                      args=["--http-host", "127.0.0.1", "--chromium", CHROMIUM,
                            "--max-seconds", "120"],
                      stderr_path=logs / f"{identity}.log")


def start_room_peer(srv: NsServer, identity: str, room: str, backend: str,
                    logs: Path) -> Peer:
    return Peer.start(srv.ns, srv.url, srv.token(identity, room), name=identity,
                      script=ROOM_PEER, args=["--backend", backend],
                      stderr_path=logs / f"{identity}.log")


@pytest.fixture
def pair(room_server: NsServer, request: pytest.FixtureRequest,
         tmp_path: Path) -> Iterator[tuple[Peer, Peer]]:
    """A browser ("web") and a `room` peer ("agent", on the test's backend) in one room,
    each aware of the other."""
    backend = request.node.callspec.params["backend"]
    room = f"{request.node.name}-{uuid.uuid4().hex[:6]}"
    web = start_browser(room_server, "web", room_server.token("web", room), tmp_path)
    agent = start_room_peer(room_server, "agent", room, backend, tmp_path)
    try:
        web.expect("connected", timeout=40)
        agent.expect("connected", timeout=30)
        wait_for_presence(web, "agent")
        wait_for_presence(agent, "web")
        yield web, agent
    finally:
        for peer in (agent, web):
            peer.close()


def wait_for_presence(peer: Peer, identity: str) -> None:
    """Until ``peer`` knows ``identity``: present when it joined, or announced since."""
    joined = next(e for e in peer.history if e["event"] == "connected")
    if identity not in joined["participants"]:
        peer.expect("participant_connected", identity=identity, timeout=PRESENCE_TIMEOUT)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def send_and_receive(tx: Peer, rx: Peer, data: bytes, topic: str | None) -> None:
    """``tx`` publishes ``data`` reliably to everyone; ``rx`` gets exactly it, stamped
    with ``tx``'s identity."""
    tx.request("publish_data", data_b64=b64(data), reliable=True, topic=topic,
               destinations=[])
    got = rx.expect("data_received", from_=tx.name, data_b64=b64(data), timeout=10)
    assert (got["kind"], got["topic"] or None) == ("reliable", topic)


def rpc(caller: Peer, callee: str, method: str, payload: str = "p") -> dict[str, Any]:
    """``caller`` calls ``method`` on ``callee``; the answer (``ok`` or ``failed``)."""
    cid = caller.send("perform_rpc", destination=callee, method=method, payload=payload,
                      timeout=10)
    return caller.answer(cid, timeout=30)


# -- the browser joins ---------------------------------------------------------------------


def test_browser_joins_with_default_options(room_server: NsServer, tmp_path: Path) -> None:
    """livekit-client finds its way in: on livekit-server through ``/rtc/v1`` (single peer
    connection); on the dev server, which does not implement that, it reads the 404 of
    ``/rtc/v1/validate`` (CORS) and falls back to ``/rtc`` (two peer connections). ICE
    completes although Chromium offers only mDNS-hidden host candidates."""
    web = start_browser(room_server, "web", room_server.token("web", "join"), tmp_path)
    try:
        web.expect("connected", timeout=40)
        wire = [(e["event"], e["path"], e.get("outcome", e.get("status")))
                for e in web.history if e["event"] in ("signal", "http")]
        if room_server.kind == "livekit":
            assert wire == [("signal", "/rtc/v1", "open")]
        else:
            assert wire == [("signal", "/rtc/v1", "error"), ("http", "/rtc/v1/validate", 404),
                            ("signal", "/rtc", "open")]
        pcs = web.request("ice")["peer_connections"]
        # The primary connection is up (on the dev server the publisher's waits for the
        # first packet to send), with the server's address at the other end (Chromium
        # blanks it when it learnt it as a peer-reflexive candidate).
        up = [pc for pc in pcs if pc["connection_state"] == "connected"]
        assert up, json.dumps(pcs)
        assert all(pc["selected"]["remote"]["address"] in (room_server.ns.server_ip, "")
                   for pc in up), json.dumps(pcs)
        gathered = [c for pc in pcs for c in pc["gathered"] if c]
        hosts = [c.split()[4] for c in gathered if " typ host" in c]
        # Chromium never shows its host addresses: only mDNS names (when it has gathered
        # any by now; its srflx/relay candidates come from the server's TURN).
        assert all(h.endswith(".local") for h in hosts), gathered
    finally:
        web.close()


def test_browser_reports_a_bad_token_as_an_auth_refusal(room_server: NsServer,
                                                        tmp_path: Path) -> None:
    """A token signed with another secret: livekit-client reads the validate endpoint's
    401 and its explanation (which needs CORS headers on it), and reports NotAllowed,
    not a server it could not reach."""
    token = room_server.token("web", "refused", secret="not-the-secret")
    web = start_browser(room_server, "web", token, tmp_path)
    try:
        err = web.expect("error", timeout=40)
        assert (err["name"], err["reason"], err["status"]) == ("ConnectionError", "NotAllowed",
                                                               401), err
        # the server's explanation, after livekit-client's generic prefix
        assert err["message"].split("could not establish signal connection")[-1].strip(": ")
        assert "Failed to fetch" not in err["message"]
        refusals = [e for e in web.history if e["event"] == "http" and e["status"] == 401]
        assert refusals and refusals[0]["path"].endswith("/validate")
        assert web.close() == 1
    finally:
        web.close()


# -- data and RPC, both ways ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_browser_and_room_exchange_reliable_data_both_ways(
        pair: tuple[Peer, Peer], backend: str) -> None:
    web, agent = pair
    binary = bytes(range(256)) * 40  # every byte value, 10 KiB
    for tx, rx in ((web, agent), (agent, web)):
        send_and_receive(tx, rx, f"hello from {tx.name} ✓".encode(), "chat")
        send_and_receive(tx, rx, binary, None)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_browser_and_room_call_each_other_over_rpc(
        pair: tuple[Peer, Peer], backend: str) -> None:
    web, agent = pair
    for peer in (web, agent):
        for behavior in ("echo", "fail", "crash"):
            peer.request("register_rpc", method=behavior, behavior=behavior)
    for caller, callee in ((web, "agent"), (agent, "web")):
        ok = rpc(caller, callee, "echo", "hi ✓")
        assert (ok["event"], ok["result"]) == ("ok", f"echo:hi ✓:{caller.name}"), ok
        failed = rpc(caller, callee, "fail")
        assert (failed["event"], failed["code"], failed["message"], failed["data"]) == (
            "failed", 4001, "refused", "why"), failed
        crashed = rpc(caller, callee, "crash")
        assert (crashed["event"], crashed["code"]) == ("failed", 1500), crashed
        assert "secret" not in str(crashed["message"])
        unknown = rpc(caller, callee, "no-such-method")
        assert (unknown["event"], unknown["code"]) == ("failed", 1400), unknown
    # The browser chose RPC v1 (RpcRequest packets) for `room`, which does not advertise
    # data-stream RPC (client_protocol >= 1).
    calls = [e for e in web.history if "callee_client_protocol" in e]
    assert calls and all(e["callee_client_protocol"] in (0, None) for e in calls)


# -- mDNS candidates at our own transport ----------------------------------------------------

# A minimal remote offer for one data channel: enough for a remote description.
_OFFER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=mid:0",
    "a=sctp-port:5000", "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass", "",
])


def _trickle(host: str, port: int) -> str:
    return json.dumps({"candidate": f"candidate:1 1 udp 2113937151 {host} {port} typ host "
                                    "generation 0", "sdpMid": "0", "sdpMLineIndex": 0})


@pytest.mark.anyio
async def test_a_trickled_mdns_candidate_is_ignored_without_resolving_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Browsers trickle ``<uuid>.local`` host candidates. Resolving one would hold the
    connection's negotiation (aioice waits up to a second for an answer); the browser's
    checks reveal its address anyway, so the transport skips the name and keeps the
    others."""
    asked: list[object] = []

    async def no_mdns(subscriber: object) -> object:
        asked.append(subscriber)
        raise AssertionError("an mDNS name was resolved")

    monkeypatch.setattr(aioice.ice, "get_or_create_mdns_protocol", no_mdns)

    async def scenario() -> list[str]:
        peer = RtcPeer(name="mdns")
        try:
            await peer.pc.setRemoteDescription(RTCSessionDescription(_OFFER, "offer"))
            await peer.add_candidate(_trickle(f"{uuid.uuid4()}.local", 50000))
            await peer.add_candidate(_trickle("127.0.0.1", 50001))
            assert peer.pc.sctp is not None
            ice = peer.pc.sctp.transport.transport
            return [c.ip for c in ice.getRemoteCandidates()]
        finally:
            await peer.close()

    assert await aiortc_loop().run(scenario) == ["127.0.0.1"]
    assert asked == []
