"""The testing toolkit (`room.testing`): strategies, `Scenario`, faults, server specs, the
``livekit_server`` fixture, and the example moderator's suite on livekit-server and
against its deliberately broken copy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

import room
from room.events import (
    DataReceived,
    Disconnected,
    ParticipantConnected,
    Reconnected,
    RoomMetadataChanged,
    TrackPublished,
)
from room.testing import (
    CallRpc,
    Fault,
    Join,
    Leave,
    Pause,
    PublishTone,
    Remove,
    RoomServer,
    Scenario,
    SendData,
    SetAttributes,
    SetMetadata,
    SetName,
    SetRoomMetadata,
    UnsupportedFaultError,
    check_history,
)
from room.testing import strategies as rst
from room.testing.servers import ServerSpec, parse_spec, parse_specs
from tests.helpers import client_tasks, wait_until
from tests.livekit import livekit_binary, livekit_unavailable
from tests.netns import netns
from tests.servers import Server

ROOT = Path(__file__).resolve().parent.parent

# -- specs and histories (no I/O) -----------------------------------------------------------


def test_server_specs_are_parsed_or_refused_with_a_reason() -> None:
    assert parse_spec("dev") == ServerSpec("dev") == parse_spec(" ")
    assert parse_spec("dev?presence_interval=0&ping_timeout=20").dev_options == (
        ("presence_interval", 0.0), ("ping_timeout", 20.0))
    spec = parse_spec("ws://key:s3cret@10.0.0.1:7880/")
    assert (spec.kind, spec.url, spec.api_key, spec.api_secret) == (
        "url", "ws://10.0.0.1:7880", "key", "s3cret")
    assert parse_spec("https://k:s@example.test").url == "wss://example.test"
    assert parse_spec(sys.executable) == ServerSpec("binary", binary=sys.executable)
    assert [s.id for s in parse_specs(f"dev,{sys.executable}")] == ["dev", "livekit"]
    for bad, why in [("ws://10.0.0.1:7880", "API key and secret"),
                     ("ftp://k:s@h", "must be ws://"),
                     ("dev?presence=1", "unknown dev server setting"),
                     ("dev?presence_interval=soon", "not a number"),
                     ("/no/such/livekit-server", "neither")]:
        with pytest.raises(ValueError, match=why):
            parse_spec(bad)


@settings(max_examples=300, deadline=None)
@given(history=rst.histories(agent="agent", methods=["m"], topics=[None, "t"], tones=True,
                             faults=["cut_signal", "drop_udp", "restart"],
                             pauses=[0.1], max_size=20))
def test_every_generated_history_can_be_played(history: list[object]) -> None:
    steps = check_history(history, agent="agent")  # type: ignore[arg-type]
    present: set[str] = set()
    for step in steps:
        who = getattr(step, "identity", None)
        assert who != "agent"
        if isinstance(step, Join):
            present.add(step.identity)
        elif isinstance(step, (Leave, Remove)):
            present.remove(step.identity)
        elif isinstance(step, SendData):
            assert set(step.to) <= present | {"agent"} and step.identity not in step.to
        elif isinstance(step, SetAttributes):
            assert not any(key.startswith("lk.") for key in step.attributes)
    assert len(present) <= 3


@settings(max_examples=100, deadline=None)
@given(fault=rst.faults(["restart", "drop_udp"]))
def test_fault_steps_have_the_kinds_and_lengths_asked_for(fault: Fault) -> None:
    assert fault.kind in ("restart", "drop_udp")
    assert fault.seconds in rst.FAULT_SECONDS[fault.kind]


def test_no_fault_kinds_give_no_fault_steps() -> None:
    assert rst.faults([]).is_empty


def test_histories_shrink_to_a_minimal_one() -> None:
    """Hypothesis shrinks a history with a rejoin to (nearly) the three steps that make
    one, with the plainest values."""
    def rejoins(history: list[object]) -> bool:
        joined: set[str] = set()
        for step in history:
            if isinstance(step, Join):
                if step.identity in joined:
                    return True
                joined.add(step.identity)
        return False

    found = find(rst.histories(), rejoins, settings=settings(
        max_examples=2000, database=None, derandomize=True,
        suppress_health_check=list(HealthCheck)))
    # Usually exactly [Join("0"), Leave("0"), Join("0")]; the shrinker may stop at a
    # join or two more. Never anything else, and only the plainest values.
    assert found[-2:] == [Leave("0"), Join("0")] and found[0] == Join("0"), found
    assert len(found) <= 5 and all(isinstance(step, Join) for step in found[:-2]), found
    assert all(isinstance(step, (Join, Leave)) and step.identity.strip("0123456789") == ""
               for step in found), found


def test_unplayable_histories_are_refused_naming_the_step() -> None:
    for history, why in [
        ([Join("a"), Join("a")], r"step 1 .*already in the room"),
        ([SetName("a", "x")], r"step 0 .*not in the room"),
        ([Join("a"), Leave("a"), SendData("a", b"")], r"step 2 .*not in the room"),
        ([Join("agent")], r"the agent under test"),
        ([Join("a"), PublishTone("a"), PublishTone("a")], r"step 2 .*already publishing"),
        ([Fault("flood")], r"unknown fault"),  # type: ignore[arg-type]
        ([Pause(-1)], r"non-negative"),
        ([Join("a"), SendData("a", b"", to="b")], r"tuple of identities"),  # type: ignore[arg-type]
        (["join a"], r"not a room happening"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_history(history, agent="agent")  # type: ignore[arg-type]


# -- Scenario against both servers ------------------------------------------------------------

class Agent:
    """A minimal agent under test: answers ``echo``, records every event."""

    def __init__(self) -> None:
        self.events: list[room.RoomEvent] = []
        self.room: room.Room | None = None

    async def run(self, url: str, token: str, options: room.RoomOptions) -> None:
        async with room.Room.connect(url, token, options=options) as r:
            self.room = r
            r.local_participant.register_rpc_method("echo", lambda call: call.payload.upper())
            async for event in r.events():
                self.events.append(event)

    def data(self) -> list[tuple[str, bytes, str | None]]:
        return [(e.packet.participant_identity, e.packet.data, e.packet.topic)
                for e in self.events if isinstance(e, DataReceived)]


def scenario_on(server: Server, **kw: object) -> Scenario:
    return Scenario(server=server, puppet_options=server.options(
        auto_subscribe=False), **kw)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_scenario_plays_every_kind_of_happening(server: Server) -> None:
    agent = Agent()
    async with scenario_on(server) as scenario, anyio.create_task_group() as tg:
        tg.start_soon(agent.run, scenario.agent_url, scenario.agent_token(), server.options())
        await scenario.wait_for_agent()
        await scenario.play([
            Join("ann", name="Ann", metadata="m0", attributes={"role": "host"}),
            Join("bob"),
            SendData("ann", b"to everyone", topic="chat"),
            SendData("bob", b"for ann only", to=("ann",)),
            SetName("ann", "Annie"),
            SetMetadata("bob", "busy"),
            SetAttributes("ann", {"role": "", "mood": "ok"}),
            CallRpc("ann", "echo", "hello"),
            SetRoomMetadata("topic: tests"),
            PublishTone("bob", 440.0),
        ])
        await scenario.settle()
        ann, bob = scenario.puppets["ann"], scenario.puppets["bob"]
        assert ann.rpc[0].response == "HELLO" and ann.rpc[0].error is None
        assert ann.rpc[0].destination == "agent" and ann.rpc[0].elapsed < 2.0
        await wait_until(lambda: ("ann", b"to everyone", "chat") in agent.data(), 10)
        assert [p.data for p in ann.data] == [b"for ann only"]
        assert [p.participant_identity for p in bob.data] == ["ann"]
        assert ("bob", b"for ann only", None) not in agent.data()
        # What the agent saw, its room state agreeing.
        await wait_until(lambda: any(isinstance(e, TrackPublished)
                                     and e.participant.identity == "bob"
                                     for e in agent.events), 10)
        assert agent.room is not None
        await wait_until(lambda: agent.room is not None and {
            p.identity: (p.name, p.metadata, p.attributes)
            for p in agent.room.remote_participants.values()} == {
                "ann": ("Annie", "m0", {"mood": "ok"}), "bob": ("", "busy", {})},
            server.presence_delay + 5)
        for puppet in (ann, bob):
            await wait_until(lambda p=puppet: any(  # type: ignore[misc]
                isinstance(e, RoomMetadataChanged) and e.new_metadata == "topic: tests"
                for e in p.events), 10)
        # The server removes ann; bob leaves.
        await scenario.play([Remove("ann"), Leave("bob")])
        last = ann.events[-1]
        assert isinstance(last, Disconnected)
        assert last.reason is room.DisconnectReason.PARTICIPANT_REMOVED
        assert not ann.present and not bob.present and scenario.present == frozenset()
        assert await scenario.server.participants(scenario.room) == ["agent"]
        assert scenario.played[-1] == Leave("bob") and len(scenario.played) == 12
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_cutting_the_agents_signalling_works_on_any_server(server: Server) -> None:
    """The scenario's own proxy cuts the agent's signalling; the agent resumes each time,
    and the data sent around the cuts arrives once each, in order."""
    agent = Agent()
    async with scenario_on(server) as scenario, anyio.create_task_group() as tg:
        assert "cut_signal" in scenario.faults
        tg.start_soon(agent.run, scenario.agent_url, scenario.agent_token(), server.options())
        await scenario.wait_for_agent()
        def resumed() -> int:
            return sum(isinstance(e, Reconnected) for e in agent.events)

        await scenario.play([Join("ann"), Fault("cut_signal"), SendData("ann", b"1")])
        await wait_until(lambda: resumed() == 1, 10)
        await scenario.play([Fault("cut_signal"), SendData("ann", b"2")])
        await wait_until(lambda: resumed() == 2, 10)
        await scenario.play([SendData("ann", b"3")])
        await wait_until(lambda: [d for _, d, _ in agent.data()] == [b"1", b"2", b"3"],
                         server.presence_delay + 10)
        assert agent.room is not None and agent.room.isconnected()
        tg.cancel_scope.cancel()


@pytest.mark.anyio
@pytest.mark.parametrize("server", ["dev"], indirect=True)
async def test_dev_server_faults_udp_and_restart(server: Server) -> None:
    agent = Agent()
    async with scenario_on(server) as scenario, anyio.create_task_group() as tg:
        assert scenario.faults == {"cut_signal", "drop_udp", "restart"}
        tg.start_soon(agent.run, scenario.agent_url, scenario.agent_token(), server.options())
        await scenario.wait_for_agent()
        await scenario.play([Join("ann"), Fault("drop_udp", 1.0), SendData("ann", b"1"),
                             Fault("restart", 0.2), SendData("ann", b"2")])
        await wait_until(lambda: [d for _, d, _ in agent.data()] == [b"1", b"2"], 20)
        assert scenario.puppets["ann"].present
        await wait_until(lambda: agent.room is not None
                         and set(agent.room.remote_participants) == {"ann"}, 10)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
@pytest.mark.parametrize("server", ["livekit"], indirect=True)
async def test_faults_a_server_cannot_take_are_refused(server: Server) -> None:
    async with scenario_on(server) as scenario:
        assert scenario.faults == {"cut_signal"}
        for fault in (Fault("drop_udp", 1.0), Fault("restart")):
            with pytest.raises(UnsupportedFaultError, match=fault.kind):
                await scenario.perform(fault)
        with pytest.raises(UnsupportedFaultError):
            await scenario.server.drop_udp(scenario.room, "x", 1.0)
        assert scenario.played == []


@pytest.mark.anyio
async def test_puppets_answer_the_agents_rpc_calls(server: Server) -> None:
    """An agent that calls each newcomer: the puppets answer with ``puppet_methods``, and
    each puppet records the calls it received."""
    answers: list[str] = []

    async def greeter(url: str, token: str) -> None:
        async with room.Room.connect(url, token, options=server.options()) as r:
            async for ev in r.events(ParticipantConnected):
                assert isinstance(ev, ParticipantConnected)
                answers.append(await r.local_participant.perform_rpc(
                    destination_identity=ev.participant.identity, method="name?",
                    payload="please"))

    async def name(call: room.RpcInvocationData) -> str:
        return f"{call.payload}: I am the one {call.caller_identity} called"

    async with scenario_on(server, puppet_methods={"name?": name}) as scenario, \
            anyio.create_task_group() as tg:
        tg.start_soon(greeter, scenario.agent_url, scenario.agent_token())
        await scenario.wait_for_agent()
        await scenario.play([Join("ann"), Join("bob")])
        await wait_until(lambda: len(answers) == 2, server.presence_delay + 10)
        assert answers == ["please: I am the one agent called"] * 2
        for who in ("ann", "bob"):
            calls = scenario.puppets[who].calls_received
            assert [(c.caller_identity, c.payload) for c in calls] == [("agent", "please")]
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_failing_test_still_ends_every_puppet(server: Server) -> None:
    """The test body fails with puppets in the room, one of them mid-RPC to an agent that
    never answers: the error propagates as itself, every puppet has left the server, and
    no client task is left behind."""
    scenario = scenario_on(server, rpc_timeout=30.0)
    name = scenario.room
    async def never_answers(call: room.RpcInvocationData) -> str:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    # The agent outlives the scenario (entered first, left last): had it left first, the
    # pending call could end with "recipient disconnected" before the scenario ended it.
    with pytest.raises(KeyError, match="the test failed"):
        async with server.connect("agent", room=name, options=server.options(
                rpc_drain_timeout=0.1)) as agent, scenario:
            agent.local_participant.register_rpc_method("slow", never_answers)
            await scenario.play([Join("ann"), Join("bob"), PublishTone("bob"),
                                 CallRpc("ann", "slow")])
            await anyio.sleep(0.5)
            raise KeyError("the test failed")
    assert scenario.puppets["ann"].rpc[0].abandoned
    await wait_until(lambda: _participants_gone(server, name), 15)
    assert client_tasks() == []


async def _participants_gone(server: Server, name: str) -> bool:
    return await server.participants(name) == []


@pytest.mark.anyio
async def test_an_unplayable_history_plays_nothing(server: Server) -> None:
    async with scenario_on(server) as scenario:
        with pytest.raises(ValueError, match="step 2"):
            await scenario.play([Join("ann"), Leave("ann"), Leave("ann")])
        assert scenario.puppets == {} and scenario.played == []


# -- the pytest plugin -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_plugin_fixture_is_a_fresh_dev_server_by_default(
        livekit_server: RoomServer) -> None:
    """`room.testing`'s ``livekit_server`` fixture (for users' own tests): a fresh dev
    server with livekit-server's defaults, behind a `RoomServer`."""
    assert livekit_server.kind == "dev" and livekit_server.dev is not None
    assert livekit_server.dev.presence_interval == 3.0
    assert livekit_server.faults == {"cut_signal", "drop_udp", "restart"}
    async with room.Room.connect(livekit_server.url,
                                 livekit_server.token("a", room="r")) as a:
        assert a.name == "r" and await livekit_server.participants("r") == ["a"]
        await livekit_server.update_room_metadata("r", "hello")
        await wait_until(lambda: a.metadata == "hello")
    assert await livekit_server.participants("nowhere") == []


@settings(max_examples=150, deadline=None)
@given(messages=st.lists(st.lists(st.tuples(st.sampled_from([0, 1, 125, 126, 127, 65535,
                                                               65536, 70000]),
                                            st.booleans()), min_size=1, max_size=3),
                         min_size=1, max_size=4),
       data=st.data())
def test_the_proxy_finds_where_the_servers_nth_message_ends(
        messages: list[list[tuple[int, bool]]], data: st.DataObject) -> None:
    """`TcpProxy.cut_after_messages`: whatever the frame sizes (each length encoding),
    fragmentation, pings between fragments and TCP read boundaries, the cut comes exactly
    after the ``n``-th message's last frame (frames made by wsproto, as a server's)."""
    from wsproto.frame_protocol import FrameProtocol

    from room.testing.proxy import _MessageCounter

    server = FrameProtocol(client=False, extensions=[])
    stream = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    ends = []
    for fragments in messages:
        for i, (size, ping_first) in enumerate(fragments):
            if ping_first:
                stream += server.ping(b"p")
            stream += server.send_data(b"x" * size, fin=i == len(fragments) - 1)
        ends.append(len(stream))
    stream += server.send_data(b"after")
    n = data.draw(st.integers(1, len(messages)), label="n")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8),
                            label="read boundaries"))
    counter = _MessageCounter(n)
    forwarded = 0
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        until = counter.feed(stream[start:end])
        if until is not None:
            forwarded += until
            break
        forwarded += end - start
    else:
        pytest.fail("no cut")
    assert forwarded == ends[n - 1]


# -- the example suite: on livekit-server, and against the broken moderator -----------------


def _pytest(args: list[str], env: dict[str, str], timeout: float,
            prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """pytest on examples/testing in a process of its own. Each of its tests may take 90 s
    (pytest-timeout then prints where it hung); if the whole run outlives ``timeout``,
    the test fails with what it printed so far."""
    try:
        return subprocess.run(
            [*(prefix or []), sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-o", "timeout=90", "examples/testing", *args],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, text=True,
            capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (
            exc.stdout or "")
        pytest.fail(f"examples/testing still running after {timeout} s:\n{out[-8000:]}")


def test_the_example_suite_passes_on_livekit_server(figures: Callable[[str], None]) -> None:
    """examples/testing, both backends, on a livekit-server the plugin starts from the
    binary (``--livekit-server PATH``), all inside a network namespace (livekit-server
    and aiortc reach each other over its veth addresses, never loopback)."""
    reason = livekit_unavailable()
    if reason is not None:
        pytest.skip(reason)
    binary = livekit_binary()
    assert binary is not None
    # exposed: only the server end of the veth pair is inside the namespace, so everything
    # in it (livekit-server and the clients) has one address; with both ends inside, ICE
    # had twice the pairs to try and a join sometimes missed its 10 s (2 runs in 13).
    with netns(exposed=True) as ns:
        # A 20 s notice: on livekit-server an agent's reconnection occasionally waits out
        # a 10 s attempt first (see docs/reliability.md), and the roster with it.
        result = _pytest(["--livekit-server", binary],
                         {"MODERATOR_EXAMPLES": "3", "MODERATOR_NOTICE": "20"},
                         timeout=280, prefix=ns.argv([]))
    summary = result.stdout.strip().splitlines()[-1:] or [""]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"\b8 passed\b", summary[0]), summary
    figures(f"examples/testing on livekit-server: {summary[0]}")


def test_the_broken_moderator_is_caught_with_a_shrunk_history(
        figures: Callable[[str], None]) -> None:
    """``MODERATOR=broken``: the random-history test fails, and hypothesis reports the
    shortest history it found: someone leaves and comes back, and is not welcomed."""
    # One participant, histories of 3 to 6 steps, a dev server that announces joins at
    # once and a 1 s wait for the welcome: each failing run is short, so shrinking is too.
    # No seed: hypothesis plays the simplest history first, and with one participant and
    # at least 3 steps that is join, leave, join, on any machine. (A random search from
    # 1-step histories missed the bug within 40 examples for 1 seed in 5, and which
    # histories a seed gives depends on the machine: seed 3 found it here, not on CI.)
    result = _pytest(["-k", "random_histories and asyncio",
                      "--livekit-server", "dev?presence_interval=0"],
                     {"MODERATOR": "broken", "MODERATOR_NOTICE": "1.0",
                      "MODERATOR_EXAMPLES": "20", "MODERATOR_MIN_STEPS": "3",
                      "MODERATOR_STEPS": "6", "MODERATOR_PUPPETS": "1"}, timeout=220)
    out = result.stdout
    assert result.returncode == 1, out[-6000:] + result.stderr[-3000:]
    assert "someone present was not welcomed" in out, out[-6000:]
    block = out[out.index("history=["):]
    block = block[:block.index("],") + 1]
    steps = re.findall(r"(Join|Leave|Remove)\(identity='([^']*)'", block)
    assert len(steps) <= 5, block
    who = {identity for kind, identity in steps if kind in ("Leave", "Remove")}
    assert any([("Join", w) in [(k, i) for k, i in steps[:n]] and ("Join", w) == steps[n]
                for n in range(len(steps)) for w in who]), block
    figures("shrunk history that catches the broken moderator: "
            + " ".join(line.strip(" |") for line in block.splitlines()))
