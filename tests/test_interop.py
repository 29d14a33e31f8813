"""The official LiveKit SDK (PyPI ``livekit``, Rust/libwebrtc) and `room` in one room,
through each server: `room`'s dev server and livekit-server.

libwebrtc ignores loopback interfaces, so everything runs inside a network namespace this
test creates (a veth pair, both ends inside it): the server (tests/interop/servers.py, on
the veth address), official SDK clients (tests/interop/official_peer.py) and `room`
clients (tests/interop/room_peer.py, on asyncio or trio). Needs root; skipped otherwise.
Both servers announce participants that publish nothing up to 3 s after they join, so
presence is awaited with generous timeouts; data and RPC are not.
Processes are subprocesses, so these tests are backend-neutral themselves; the `room`
side is parametrized over both backends instead.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.peer import ROOM_PEER, Peer
from tests.interop.servers import NsServer, ns_server
from tests.livekit import LiveKitServer, livekit_unavailable
from tests.netns import netns, netns_unavailable

_reason = netns_unavailable()
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))

@pytest.fixture(scope="module", params=["dev", "livekit"])
def ns_srv(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsServer]:
    """The server of this module's tests, in its own namespace: the dev server, and the
    real livekit-server (skipped with the reason where it cannot run)."""
    if request.param == "livekit" and (reason := livekit_unavailable()) is not None:
        pytest.skip(reason)
    logs = tmp_path_factory.mktemp(f"interop-{request.param}")
    with netns() as ns, ns_server(request.param, ns, log_dir=logs) as srv:
        yield srv


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def start(srv: NsServer, identity: str, room: str, backend: str | None) -> Peer:
    token = srv.token(identity, room)
    if backend is None:
        peer = Peer.start(srv.ns, srv.url, token, name=identity)
    else:
        peer = Peer.start(srv.ns, srv.url, token, name=identity, script=ROOM_PEER,
                          args=["--backend", backend])
    peer.expect("connected", timeout=30)
    return peer


def exchange(tx: Peer, rx: Peer, data: bytes, dtmf: tuple[int, str]) -> None:
    """``tx`` sends a reliable packet with a topic, lossy packets and a DTMF tone; ``rx``
    must get them, stamped with ``tx``'s identity."""
    tx.request("publish_data", data_b64=b64(data), reliable=True, topic="chat",
               destinations=[])
    ev = rx.expect("data_received", from_=tx.name, topic="chat", timeout=10)
    assert (base64.b64decode(ev["data_b64"]), ev["kind"]) == (data, "reliable")
    for i in range(20):  # lossy: some may be lost, so send several
        tx.request("publish_data", data_b64=b64(b"lossy %d" % i), reliable=False,
                   topic=None, destinations=[])
    ev = rx.expect("data_received", from_=tx.name, kind="lossy", timeout=10)
    assert base64.b64decode(ev["data_b64"]).startswith(b"lossy ")
    code, digit = dtmf
    tx.request("publish_dtmf", code=code, digit=digit)
    rx.expect("sip_dtmf_received", from_=tx.name, code=code, digit=digit, timeout=10)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_official_sdk_and_room_exchange_data_both_ways(
        ns_srv: NsServer, backend: str) -> None:
    room_name = f"interop-{backend}"
    lk = start(ns_srv, "lk", room_name, None)
    rm = start(ns_srv, "rm", room_name, backend)
    try:
        lk.expect("participant_connected", identity="rm", timeout=10)
        exchange(lk, rm, b"from lk", (5, "5"))
        exchange(rm, lk, b"from rm", (11, "#"))
        # metadata, both ways
        rm.request("set_metadata", metadata="rm-meta")
        lk.expect("participant_metadata_changed", identity="rm", new="rm-meta", timeout=10)
        lk.request("set_metadata", metadata="lk-meta")
        rm.expect("participant_metadata_changed", identity="lk", new="lk-meta", timeout=10)
        # leaving is seen on the other side
        assert rm.close() == 0
        lk.expect("participant_disconnected", identity="rm", timeout=10)
    finally:
        rm.close()
        lk.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_destination_filtering_between_sdks(ns_srv: NsServer, backend: str) -> None:
    room_name = f"dest-{backend}"
    rm = start(ns_srv, "rm", room_name, backend)
    lk1 = start(ns_srv, "lk1", room_name, None)
    lk2 = start(ns_srv, "lk2", room_name, None)
    try:
        rm.expect("participant_connected", identity="lk2", timeout=10)
        lk1.expect("participant_connected", identity="lk2", timeout=10)
        # room -> one official client only
        rm.request("publish_data", data_b64=b64(b"only lk1"), reliable=True, topic=None,
                   destinations=["lk1"])
        rm.request("publish_data", data_b64=b64(b"marker"), reliable=True, topic=None,
                   destinations=[])
        lk1.expect("data_received", data_b64=b64(b"only lk1"), timeout=10)
        lk2.expect("data_received", data_b64=b64(b"marker"), timeout=10)
        # official -> room only
        lk2.request("publish_data", data_b64=b64(b"only rm"), reliable=True, topic=None,
                    destinations=["rm"])
        lk2.request("publish_data", data_b64=b64(b"marker2"), reliable=True, topic=None,
                    destinations=[])
        rm.expect("data_received", data_b64=b64(b"only rm"), from_="lk2", timeout=10)
        lk1.expect("data_received", data_b64=b64(b"marker2"), timeout=10)
        got = [e["data_b64"] for e in lk2.history if e["event"] == "data_received"]
        assert b64(b"only lk1") not in got
        got = [e["data_b64"] for e in lk1.history if e["event"] == "data_received"]
        assert b64(b"only rm") not in got
    finally:
        for p in (rm, lk1, lk2):
            p.close()


def rpc(caller: Peer, callee: str, method: str, payload: str = "p",
        timeout: float = 10.0) -> dict[str, object]:
    """Call ``method`` from ``caller``; the answer event (``ok`` or ``failed``)."""
    cid = caller.send("perform_rpc", destination=callee, method=method, payload=payload,
                      timeout=timeout)
    return caller.answer(cid, timeout=timeout + 10)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_rpc_both_ways_between_sdks(ns_srv: NsServer, backend: str) -> None:
    room_name = f"rpc-{backend}"
    lk = start(ns_srv, "lk", room_name, None)
    rm = start(ns_srv, "rm", room_name, backend)
    try:
        lk.expect("participant_connected", identity="rm", timeout=10)
        for peer in (lk, rm):
            for behavior in ("echo", "fail", "crash", "sleep"):
                peer.request("register_rpc", method=behavior, behavior=behavior)
        for caller, callee in ((lk, "rm"), (rm, "lk")):
            ok = rpc(caller, callee, "echo", "hi")
            assert (ok["event"], ok["result"]) == ("ok", f"echo:hi:{caller.name}")
            failed = rpc(caller, callee, "fail")
            assert (failed["event"], failed["code"], failed["message"], failed["data"]) == (
                "failed", 4001, "refused", "why")
            crashed = rpc(caller, callee, "crash")
            assert (crashed["event"], crashed["code"]) == ("failed", 1500)
            assert "secret" not in str(crashed["message"])
            unknown = rpc(caller, callee, "no-such-method")
            assert (unknown["event"], unknown["code"]) == ("failed", 1400)
            late = rpc(caller, callee, "sleep", timeout=1.5)
            assert (late["event"], late["code"]) == ("failed", 1502)
    finally:
        rm.close()
        lk.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_text_and_byte_streams_both_ways(ns_srv: NsServer, backend: str,
                                         tmp_path: Path) -> None:
    room_name = f"streams-{backend}"
    lk = start(ns_srv, "lk", room_name, None)
    rm = start(ns_srv, "rm", room_name, backend)
    blob = os.urandom(5 * 1024 * 1024)  # random: the official SDK's compression cannot help
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    text = "héllo wörld, 😀 " * 2000  # multi-byte characters across chunk boundaries
    try:
        lk.expect("participant_connected", identity="rm", timeout=10)
        for peer in (lk, rm):
            peer.request("listen_text", topic="chat")
            peer.request("listen_bytes", topic="files")
        for tx, rx in ((lk, rm), (rm, lk)):
            tx.request("send_text", text=text, topic="chat", timeout=30)
            got = rx.expect("text_stream_received", from_=tx.name, topic="chat", timeout=30)
            assert got["text"] == text
            tx.request("send_file", path=str(path), topic="files", timeout=120)
            got = rx.expect("byte_stream_received", from_=tx.name, topic="files", timeout=120)
            assert (got["name"], got["size"], got["sha256"]) == ("blob.bin", len(blob), digest)
    finally:
        rm.close()
        lk.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_media_already_in_the_room_is_received_and_the_room_lives_on(
        ns_srv: NsServer, backend: str) -> None:
    """An official client publishes a 440 Hz tone and a picture before `room` joins (with
    auto_subscribe, the default), so livekit-server puts both tracks in `room`'s very
    first subscriber offer, next to its data channels. `room` subscribes to both, hears
    the tone at its frequency, sees the picture, and data still flows both ways. (Media
    content between the SDKs: tests/test_interop_media.py.) The dev server sends them in
    a second offer, right after the first answer, while the connection is still
    connecting."""
    room_name = f"media-{backend}"
    lk = start(ns_srv, "lk", room_name, None)
    try:
        audio = lk.request("publish_tone", frequency=440.0, timeout=30)["track_sid"]
        video = lk.request("publish_video", width=320, height=240, timeout=30)["track_sid"]
        rm = start(ns_srv, "rm", room_name, backend)
        try:
            lk.expect("participant_connected", identity="rm", timeout=10)
            rm.expect("track_subscribed", identity="lk", track_sid=audio, kind="audio",
                      timeout=20)
            rm.expect("track_subscribed", identity="lk", track_sid=video, kind="video",
                      timeout=20)
            heard = rm.send("listen", track_sid=audio, seconds=2.0, sample_rate=16000,
                            **{"from": "lk"})
            seen = rm.send("watch", track_sid=video, frames=10, **{"from": "lk"})
            heard_ev, seen_ev = rm.answer(heard, timeout=40), rm.answer(seen, timeout=40)
            assert heard_ev["event"] == "ok", heard_ev
            assert abs(heard_ev["frequency"] - 440.0) < 4.4, heard_ev
            assert seen_ev["event"] == "ok", seen_ev
            assert (seen_ev["width"], seen_ev["height"]) == (320, 240), seen_ev
            state = rm.request("rtc_state")
            media = sorted((t["kind"], t["direction"], t["receiving"])
                           for t in state["subscriber"] if t["kind"] in ("audio", "video"))
            assert media == [("audio", "recvonly", True), ("video", "recvonly", True)], state
            exchange(lk, rm, b"still here", (3, "3"))
            exchange(rm, lk, b"me too", (4, "4"))
        finally:
            assert rm.close() == 0
    finally:
        lk.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_room_reaches_livekit_server_on_localhost(backend: str, tmp_path: Path) -> None:
    """livekit-server listening on 127.0.0.1 (as ``livekit-server --dev`` does) is reached
    as ``ws://127.0.0.1:7880`` but offers ICE candidates only on its node's non-loopback
    address; `room` gathers on the non-loopback interfaces, as libwebrtc does, and meets
    it there. The official SDK is there as the reference. (A server reached over loopback
    whose media is elsewhere: tests/test_ice.py.)"""
    if (reason := livekit_unavailable()) is not None:
        pytest.skip(reason)
    with netns() as ns, LiveKitServer(ns, log_dir=tmp_path, bind="127.0.0.1") as lk:
        srv = NsServer("livekit", ns, lk.url, lk.log_path)
        assert srv.url == "ws://127.0.0.1:7880"
        # The official client first: data sent to a client that has just joined may go
        # before its own connection can take it (an official SDK's connect() returns
        # before that), which is not what this test is about.
        lk_peer = start(srv, "lk", "local", None)
        rm = start(srv, "rm", "local", backend)
        try:
            lk_peer.expect("participant_connected", identity="rm", timeout=10)
            exchange(rm, lk_peer, b"over the node address", (1, "1"))
            exchange(lk_peer, rm, b"and back", (2, "2"))
        finally:
            rm.close()
            lk_peer.close()
