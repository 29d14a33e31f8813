"""A livekit-server cluster: two nodes sharing one Redis, with `room` clients on both.

Everything runs inside one network namespace this test creates (`tests.netns`): Redis,
node A and node B (the pinned livekit-server, each on its own ports of the namespace's
server address, joined through Redis), and three participants of one room, started with
``ns.popen``: ``ra``, a `room` client connected to node A; ``rb``, a `room` client, and
``lk``, the official SDK (tests/interop/official_peer.py), both connected to node B.

The room is created on node A (``CreateRoom`` with ``node_id``, asked through node B), so
node B is a pure signal relay for ``rb`` and ``lk``: their WebSockets end on B, which
forwards their signalling to A, while their WebRTC connections go to A's media port. The
test checks that the room really spans both nodes (each node's server API lists all three
participants; A's log shows an RTC session for each, B's none), that everyone sees
everyone, and that reliable data, RPC and text streams cross the nodes both ways between
every cross-node pair: ``ra`` <-> ``rb`` and ``ra`` <-> ``lk``. The `room` side runs on
asyncio and on Trio.

Skipped, with the reason, where livekit-server, redis-server or network namespaces are
unavailable (an error instead with ``ROOM_REQUIRE_LIVEKIT=1``). When a case fails, its
report carries the end of both nodes' logs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from room.devserver.auth import mint_token
from tests.interop.peer import ROOM_PEER, Peer
from tests.livekit import LiveKitServer, RedisServer, livekit_unavailable
from tests.netns import NetNs, netns


def _cluster_unavailable() -> str | None:
    """Why the cluster cannot run here (a skip reason), or None if it can."""
    reason = livekit_unavailable()
    if reason is None and shutil.which("redis-server") is None:
        reason = "redis-server not found (Debian package redis-server): a cluster needs it"
        if os.environ.get("ROOM_REQUIRE_LIVEKIT") == "1":
            raise RuntimeError(f"ROOM_REQUIRE_LIVEKIT=1, but {reason}")
    return reason


_reason = _cluster_unavailable()
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))

# Each node needs its own ports: signalling and HTTP, media (UDP mux), TURN.
NODE_PORTS = {"A": (7880, 7882, 3478), "B": (7890, 7892, 3488)}
# A non-publisher's arrival reaches the others up to 3 s late, later still when it is
# relayed between nodes; data, RPC and streams have no such excuse.
PRESENCE_TIMEOUT = 10.0
DATA_TIMEOUT = 5.0

# The server API, from inside the namespace: livekit-api as server-side code would use it.
_API_SCRIPT = """\
import asyncio, json, sys
from livekit import api
from livekit.protocol import room as proto

async def main(url, key, secret, op, args):
    async with api.LiveKitAPI(url, key, secret) as lk:
        if op == "create_room":
            r = await lk.room.create_room(proto.CreateRoomRequest(**args))
            return {"name": r.name, "sid": r.sid}
        if op == "list_participants":
            r = await lk.room.list_participants(proto.ListParticipantsRequest(**args))
            return {"identities": sorted(p.identity for p in r.participants)}
        raise ValueError(op)

print(json.dumps(asyncio.run(main(*sys.argv[1:5], json.loads(sys.argv[5])))))
"""


def log_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(message, fields) of each structured line of a livekit-server log (tab-separated:
    time, level, logger, caller, message, JSON fields); stack-trace lines are skipped."""
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) < 5:
                continue
            fields: dict[str, Any] = {}
            if len(parts) > 5:
                with contextlib.suppress(ValueError):
                    fields = json.loads(parts[5])
            yield parts[4], fields


@dataclass
class Cluster:
    ns: NetNs
    nodes: dict[str, LiveKitServer]  # "A", "B"

    def node_id(self, node: str, timeout: float = 10.0) -> str:
        """The node's ID, from the line it logs on start."""
        deadline = time.monotonic() + timeout
        while True:
            for msg, fields in log_records(self.nodes[node].log_path):
                if msg == "starting LiveKit server" and fields.get("nodeID"):
                    return str(fields["nodeID"])
            if time.monotonic() > deadline:
                raise AssertionError(f"node {node} logged no node ID")
            time.sleep(0.05)

    def rtc_sessions(self, node: str, room: str) -> dict[str, str]:
        """Participants of ``room`` whose RTC session runs on ``node``: identity -> the
        node ID the session logged."""
        return {str(f["participant"]): str(f.get("nodeID"))
                for msg, f in log_records(self.nodes[node].log_path)
                if msg == "starting RTC session" and f.get("room") == room}

    def api(self, node: str, op: str, **args: Any) -> dict[str, Any]:
        """A server API call through ``node`` (livekit-api, run inside the namespace)."""
        srv = self.nodes[node]
        argv = [sys.executable, "-c", _API_SCRIPT, srv.http_url, srv.api_key,
                srv.api_secret, op, json.dumps(args)]
        try:
            out = self.ns.run(argv, timeout=30).stdout
        except subprocess.CalledProcessError as exc:
            raise AssertionError(f"{op} {args} through node {node} failed:\n{exc.stderr}"
                                 ) from None
        result: dict[str, Any] = json.loads(out)
        return result

    def join(self, node: str, identity: str, room: str, backend: str | None,
             log_dir: Path) -> Peer:
        """Start a participant connected to ``node``: a `room` client on ``backend``, or
        the official SDK when ``backend`` is None. Returns once the peer is started."""
        srv = self.nodes[node]
        token = mint_token(srv.api_key, srv.api_secret, identity, room=room)
        stderr_path = log_dir / f"peer-{identity}.log"
        if backend is None:
            return Peer.start(self.ns, srv.url, token, name=identity, stderr_path=stderr_path)
        return Peer.start(self.ns, srv.url, token, name=identity, stderr_path=stderr_path,
                          script=ROOM_PEER, args=["--backend", backend])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Redis and two livekit-server nodes joined through it, in a fresh namespace."""
    with netns() as ns, RedisServer(ns, log_dir=tmp_path) as redis, \
            contextlib.ExitStack() as stack:
        nodes = {}
        for node, (port, rtc_port, turn_port) in NODE_PORTS.items():
            nodes[node] = stack.enter_context(LiveKitServer(
                ns, log_dir=tmp_path, port=port, rtc_port=rtc_port, turn_port=turn_port,
                redis=redis.address, name=f"node-{node.lower()}"))
        yield Cluster(ns, nodes)


@contextlib.contextmanager
def node_logs_on_failure(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[None]:
    """Attach the end of both nodes' logs to the report of a failing test."""
    try:
        yield
    except BaseException:
        for node, srv in cluster.nodes.items():
            request.node.add_report_section(
                "call", f"livekit-server node {node} (port {srv.port}) log tail",
                srv.log_tail(80))
        raise


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sees(peer: Peer, identities: list[str], timeout: float = PRESENCE_TIMEOUT) -> None:
    """``peer`` knows each of ``identities``: listed when it joined, or announced since."""
    deadline = time.monotonic() + timeout
    joined = next(e for e in peer.history if e["event"] == "connected")
    for identity in identities:
        if identity not in joined["participants"]:
            peer.expect("participant_connected", identity=identity,
                        timeout=max(deadline - time.monotonic(), 0.1))


def send_data(tx: Peer, rx: Peer) -> None:
    """A reliable packet with a topic, addressed to ``rx`` only, arrives stamped with
    ``tx``'s identity."""
    payload = f"from {tx.name} to {rx.name}: héllo ✓".encode()
    tx.request("publish_data", data_b64=b64(payload), reliable=True, topic="cluster",
               destinations=[rx.name])
    got = rx.expect("data_received", data_b64=b64(payload), timeout=DATA_TIMEOUT)
    assert (got["from"], got["topic"], got["kind"]) == (tx.name, "cluster", "reliable")


def call_rpc(caller: Peer, callee: Peer) -> None:
    """An RPC answered with a result, and one refused with an application error."""
    payload = f"{caller.name} calls {callee.name}"
    cid = caller.send("perform_rpc", destination=callee.name, method="echo",
                      payload=payload, timeout=DATA_TIMEOUT)
    ok = caller.answer(cid, timeout=DATA_TIMEOUT + 5)
    assert (ok["event"], ok.get("result")) == ("ok", f"echo:{payload}:{caller.name}"), ok
    cid = caller.send("perform_rpc", destination=callee.name, method="fail", payload="x",
                      timeout=DATA_TIMEOUT)
    failed = caller.answer(cid, timeout=DATA_TIMEOUT + 5)
    assert (failed["event"], failed.get("code"), failed.get("message"),
            failed.get("data")) == ("failed", 4001, "refused", "why"), failed


def send_text(tx: Peer, rx: Peer) -> None:
    """A text stream of several chunks (multi-byte characters across chunk boundaries)."""
    text = f"{tx.name} -> {rx.name}: " + "héllo wörld, 😀 " * 2000
    tx.request("send_text", text=text, topic="cluster-chat", timeout=DATA_TIMEOUT + 5)
    got = rx.expect("text_stream_received", from_=tx.name, topic="cluster-chat",
                    text=text, timeout=DATA_TIMEOUT)
    assert got["text"] == text


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_livekit_cluster_clients_on_two_nodes_see_each_other_and_exchange(
        cluster: Cluster, backend: str, request: pytest.FixtureRequest,
        tmp_path: Path) -> None:
    room = f"cluster-{backend}"
    with node_logs_on_failure(request, cluster):
        node_a, node_b = cluster.node_id("A"), cluster.node_id("B")
        assert node_a != node_b
        # Host the room on A, asking B: B routes the request through the cluster.
        created = cluster.api("B", "create_room", name=room, node_id=node_a)
        assert created["name"] == room

        peers = [cluster.join("A", "ra", room, backend, tmp_path),
                 cluster.join("B", "rb", room, backend, tmp_path),
                 cluster.join("B", "lk", room, None, tmp_path)]
        ra, rb, lk = peers
        try:
            for peer in peers:
                peer.expect("connected", timeout=30)
            sees(ra, ["rb", "lk"])
            sees(rb, ["ra", "lk"])
            sees(lk, ["ra", "rb"])

            # The room spans both nodes: each node's server API lists everyone, and every
            # RTC session runs on A, including those of rb and lk, whose signalling
            # connections end on B (their URL), which relays them.
            for node in ("A", "B"):
                listed = cluster.api(node, "list_participants", room=room)["identities"]
                assert listed == ["lk", "ra", "rb"], f"through node {node}"
            assert cluster.rtc_sessions("A", room) == {"ra": node_a, "rb": node_a,
                                                        "lk": node_a}
            assert cluster.rtc_sessions("B", room) == {}

            for peer in peers:
                peer.request("register_rpc", method="echo", behavior="echo")
                peer.request("register_rpc", method="fail", behavior="fail")
                peer.request("listen_text", topic="cluster-chat")
            for tx, rx in ((ra, rb), (rb, ra), (ra, lk), (lk, ra)):
                send_data(tx, rx)
                call_rpc(tx, rx)
                send_text(tx, rx)
            # Every packet was addressed to one participant: nobody got another's.
            for peer in peers:
                for ev in peer.history:
                    if ev["event"] == "data_received":
                        data = base64.b64decode(ev["data_b64"]).decode()
                        assert data.startswith(f"from {ev['from']} to {peer.name}:"), ev
        finally:
            for peer in peers:
                peer.close()
