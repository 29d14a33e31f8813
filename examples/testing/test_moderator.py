"""Property-based tests of the moderator agent (moderator.py), with `room.testing`.

Two kinds of test, each on both AnyIO backends and on whatever server the run is pointed
at (the dev server by default; ``--livekit-server`` for a real one, see docs/testing.md):

- random room histories (`room.testing.strategies.histories`) played by puppets
  (`room.testing.Scenario`) against the moderator, then checked against what the puppets
  observed;
- a state machine (`room.testing.RoomMachine`) whose invariants are checked after every
  step.

``MODERATOR=broken`` runs them against broken_moderator.py instead: they fail, and the
report shows the shrunk history (or steps) that breaks it.
"""

from __future__ import annotations

import json
import os

import anyio
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.stateful import invariant
from moderator import Moderator

from room.testing import (
    CallRpc,
    Fault,
    Join,
    Leave,
    RoomMachine,
    RoomServer,
    Scenario,
    SendData,
)
from room.testing import strategies as rst
from room.testing.history import Happening
from room.testing.scenario import Puppet
from room.testing.servers import ServerSpec

if os.environ.get("MODERATOR") == "broken":
    from broken_moderator import BrokenModerator as Moderator

EXAMPLES = int(os.environ.get("MODERATOR_EXAMPLES", "6"))
# How long the moderator may take to notice a change: LiveKit servers announce participants
# that publish nothing up to 3 s late (a dev server with ?presence_interval=0 at once), and
# a reconnection after a fault can take seconds more. Checks that hold return at once.
NOTICE = float(os.environ.get("MODERATOR_NOTICE", "15"))


def welcomes(puppet: Puppet, session: int = -1) -> int:
    """How many welcomes ``puppet`` received that name its ``session``-th stay (-1: the
    latest) by its sid."""
    sid = puppet.sids[session]
    return sum(json.loads(p.data)["sid"] == sid for p in puppet.data_of(topic="welcome"))


def warnings_to(puppet: Puppet) -> int:
    return len(puppet.data_of(topic="moderation"))


def is_spam(step: Happening) -> bool:
    return (isinstance(step, SendData) and step.topic == "chat" and b"spam" in step.payload
            and (not step.to or "mod" in step.to))


chat = rst.histories(agent="mod", puppets=int(os.environ.get("MODERATOR_PUPPETS", "2")),
                     methods=["ask", "who"], topics=[None, "chat"], faults=["cut_signal"],
                     min_size=int(os.environ.get("MODERATOR_MIN_STEPS", "1")),
                     max_size=int(os.environ.get("MODERATOR_STEPS", "8")))


# No "explain" phase: it replays the failing history under a tracer, slow with a room.
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(history=chat)
@pytest.mark.anyio
async def test_moderator_over_random_histories(livekit_server: RoomServer,
                                               history: list[Happening]) -> None:
    moderator = Moderator()
    async with Scenario(server=livekit_server, agent="mod") as scenario, \
            anyio.create_task_group() as tg:
        tg.start_soon(moderator.run, scenario.agent_url, scenario.agent_token())
        await scenario.wait_for_agent()
        await scenario.play(history)
        await scenario.settle()

        # It knows who is here.
        await scenario.eventually(lambda: set(moderator.roster) == scenario.present,
                                  timeout=NOTICE, message="the roster is wrong")
        # Whoever is here was welcomed, once, in this stay; nobody was welcomed twice in
        # one stay. (Someone who left again at once may not have been welcomed at all:
        # LiveKit servers announce participants that publish nothing a little late, and
        # not at all if they are gone by then.)
        await scenario.eventually(lambda: all(
            welcomes(scenario.puppets[who]) == 1 for who in scenario.present),
            timeout=NOTICE, message="someone present was not welcomed")
        for puppet in scenario.puppets.values():
            assert all(welcomes(puppet, n) <= 1 for n in range(puppet.sessions)), puppet
        # Every question got its answer within 2 s.
        for puppet in scenario.puppets.values():
            for call in puppet.rpc:
                if call.abandoned:
                    continue
                assert call.error is None, call
                assert call.elapsed < 2.0, call
                if call.method == "ask":
                    assert call.response == f"you asked: {call.payload}"
                else:
                    assert isinstance(json.loads(call.response or ""), list)
        # Spam is answered with a warning to its sender (who heard it while present).
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_returning_participant_is_welcomed_again(livekit_server: RoomServer) -> None:
    """The shortest history that shows broken_moderator.py's bug, as a plain test."""
    moderator = Moderator()
    async with Scenario(server=livekit_server, agent="mod") as scenario, \
            anyio.create_task_group() as tg:
        tg.start_soon(moderator.run, scenario.agent_url, scenario.agent_token())
        await scenario.wait_for_agent()
        await scenario.play([Join("ann"), SendData("ann", b"spam!", topic="chat")])
        ann = scenario.puppets["ann"]
        await scenario.eventually(lambda: welcomes(ann) == 1 and warnings_to(ann) == 1,
                                  timeout=NOTICE)
        await scenario.play([Leave("ann"), Join("ann")])
        await scenario.eventually(lambda: welcomes(ann) == 1, timeout=NOTICE,
                                  message="ann was not welcomed back")
        assert ann.sessions == 2 and welcomes(ann, 0) == 1 and welcomes(ann, 1) == 1
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_the_moderator_recovers_from_a_server_restart(livekit_server: RoomServer) -> None:
    """Faults on demand: the server crashes and comes back (it forgets the room); the
    moderator and the puppets rejoin, and it knows the room and answers again."""
    if "restart" not in livekit_server.faults:
        pytest.skip(f"{livekit_server} cannot be restarted by the test")
    moderator = Moderator()
    async with Scenario(server=livekit_server, agent="mod") as scenario, \
            anyio.create_task_group() as tg:
        tg.start_soon(moderator.run, scenario.agent_url, scenario.agent_token())
        await scenario.wait_for_agent()
        await scenario.play([Join("ann"), Join("bob"), Fault("restart", 0.5)])
        await scenario.wait_for_agent(timeout=30)
        await scenario.eventually(lambda: set(moderator.roster) == {"ann", "bob"},
                                  timeout=NOTICE + 20, message="the roster is wrong")
        await scenario.play([Leave("bob"), CallRpc("ann", "ask", "still there?")])
        await scenario.settle()
        assert [c.response for c in scenario.puppets["ann"].rpc] == ["you asked: still there?"]
        await scenario.eventually(lambda: set(moderator.roster) == {"ann"}, timeout=NOTICE)
        tg.cancel_scope.cancel()


class ModeratorMachine(RoomMachine):
    """The moderator under a state machine: after every step, every question was
    answered within 2 s and the roster names only participants who came; at the end of
    each example, once the room has settled, the roster is exactly who is here."""

    agent_identity = "mod"
    methods = ("ask",)
    faults = ("cut_signal",)

    async def run_agent(self, url: str, token: str) -> None:
        self.moderator = Moderator()
        await self.moderator.run(url, token)

    @invariant()
    def answers_within_two_seconds(self) -> None:
        self.call(self.scenario.settle)
        for puppet in self.scenario.puppets.values():
            for call in puppet.rpc:
                assert call.abandoned or (call.response == f"you asked: {call.payload}"
                                          and call.elapsed < 2.0), call

    @invariant()
    def lists_only_participants(self) -> None:
        assert set(self.moderator.roster) <= set(self.scenario.puppets)

    def final_checks(self) -> None:
        try:
            self.eventually(lambda: set(self.moderator.roster) == self.scenario.present,
                            timeout=NOTICE, message="the roster is wrong")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: it lists {sorted(self.moderator.roster)}, "
                                 f"present: {sorted(self.scenario.present)}") from None


def test_moderator_state_machine(anyio_backend: str, livekit_server_spec: ServerSpec) -> None:
    ModeratorMachine.run(backend=anyio_backend, server=livekit_server_spec,
                         settings=settings(max_examples=EXAMPLES, stateful_step_count=8,
                                           deadline=None, database=None,
                                           suppress_health_check=list(HealthCheck)))
