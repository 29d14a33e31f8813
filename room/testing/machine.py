"""`RoomMachine`: a hypothesis state machine whose rules are room happenings.

    class Moderated(RoomMachine):
        methods = ("ask",)

        async def run_agent(self, url, token):
            await Moderator().run(url, token)      # until cancelled

        @invariant()
        def knows_who_is_here(self):
            self.eventually(lambda: self.agent_view() == self.scenario.present)

    def test_moderator():
        Moderated.run(backend="asyncio")

Each example gets a fresh room (a fresh dev server, or a fresh room on the configured
livekit-server), a `Scenario`, and the agent under test started with `run_agent`.
Hypothesis then applies rules (puppets join, leave, are removed, rename themselves,
change metadata and attributes, send data, call the agent's RPC methods; the room's
metadata changes; faults hit the agent) and checks the subclass's invariants after each
one; a failure shrinks to a minimal sequence of steps. Teardown ends the agent, every
puppet and the server.

State machines are synchronous: the machine runs an event loop of the chosen AnyIO
backend in a thread of its own (an AnyIO blocking portal) for the room, the puppets and
the agent, and its rules and invariants call into it (`call`, `eventually`).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Any, ClassVar, TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    precondition,
    rule,
    run_state_machine_as_test,
)

from room.testing import strategies as rst
from room.testing.history import (
    CallRpc,
    Fault,
    FaultKind,
    Happening,
    Join,
    Leave,
    Remove,
    SendData,
    SetAttributes,
    SetMetadata,
    SetName,
    SetRoomMetadata,
)
from room.testing.scenario import Scenario
from room.testing.servers import RoomServer, ServerSpec, default_spec, open_server, parse_spec

__all__ = ["RoomMachine"]

T = TypeVar("T")


def _methods(machine: RoomMachine) -> st.SearchStrategy[str]:
    return st.sampled_from(list(machine.methods)) if machine.methods else st.nothing()


def _faults(machine: RoomMachine) -> st.SearchStrategy[Fault]:
    return rst.faults(machine.available_faults())


class RoomMachine(RuleBasedStateMachine):
    """A state machine over room happenings (see the module docstring).

    Class attributes a subclass may set: ``backend`` ("asyncio" or "trio"), ``server``
    (a server spec, as for the ``livekit_server`` fixture; None: the one the test run is
    configured with, else the dev server), ``agent_identity``, ``methods`` (the RPC
    methods puppets call on the agent; none: no calls), ``faults`` (the `Fault` kinds
    that may hit the agent, among those the server allows), ``topics`` of data packets,
    ``step_timeout`` (seconds a step may take), ``agent_timeout`` (for the agent to
    join).
    """

    backend: ClassVar[str] = "asyncio"
    server: ClassVar[str | ServerSpec | None] = None
    agent_identity: ClassVar[str] = "agent"
    methods: ClassVar[Sequence[str]] = ()
    faults: ClassVar[Sequence[FaultKind]] = ()
    topics: ClassVar[Sequence[str | None]] = (None,)
    step_timeout: ClassVar[float] = 10.0
    agent_timeout: ClassVar[float] = 10.0

    present = Bundle("present")

    def __init__(self) -> None:
        super().__init__()
        spec = (default_spec() if self.server is None
                else parse_spec(self.server) if isinstance(self.server, str) else self.server)
        self._portal_cm = start_blocking_portal(self.backend)
        self.portal: BlockingPortal = self._portal_cm.__enter__()
        self._stop: anyio.Event | None = None
        try:
            self._lifetime: Future[None]
            self._lifetime, (self.room_server, self.scenario) = self.portal.start_task(
                self._live, spec)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    async def run_agent(self, url: str, token: str) -> None:
        """Run the agent under test at ``url`` with ``token`` until cancelled. Override."""
        raise NotImplementedError("a RoomMachine subclass must define run_agent")

    async def _live(self, spec: Any, *,
                    task_status: TaskStatus[tuple[RoomServer, Scenario]]) -> None:
        self._stop = anyio.Event()
        async with open_server(spec) as server, \
                Scenario(server=server, agent=self.agent_identity,
                         step_timeout=self.step_timeout) as scenario, \
                anyio.create_task_group() as tg:
            tg.start_soon(self.run_agent, scenario.agent_url, scenario.agent_token())
            await scenario.wait_for_agent(self.agent_timeout)
            task_status.started((server, scenario))
            await self._stop.wait()
            tg.cancel_scope.cancel()

    def final_checks(self) -> None:
        """Checks at the end of each example, the room still up (after the last step's
        invariants). Override for what only holds once things have settled, or is too
        slow to check after every step (e.g. `eventually` what the agent should know);
        an exception here fails the example like a failed invariant."""

    def teardown(self) -> None:
        try:
            self.final_checks()
        finally:
            self._close()

    def _close(self) -> None:
        try:
            if self._stop is not None:
                self.portal.call(self._stop.set)
            self._lifetime.result(timeout=30)
        except TimeoutError:
            # Something did not end in time: cancel it rather than wait for ever.
            self.portal.call(self.portal.stop, True)
            raise
        finally:
            self._portal_cm.__exit__(None, None, None)

    # -- for rules and invariants -----------------------------------------------------

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` in the machine's event loop; its result."""
        return self.portal.call(fn, *args)

    def perform(self, step: Happening) -> None:
        """Play one step in the scenario."""
        self.portal.call(self.scenario.perform, step)

    def eventually(self, check: Callable[[], bool | Awaitable[bool]], *,
                   timeout: float = 5.0, message: str = "") -> None:
        """Until ``check()`` holds, run in the machine's event loop (AssertionError after
        ``timeout`` seconds)."""
        async def wait() -> None:
            await self.scenario.eventually(check, timeout=timeout, message=message)

        self.portal.call(wait)

    def available_faults(self) -> list[FaultKind]:
        allowed = self.scenario.faults
        return [kind for kind in self.faults if kind in allowed]

    # -- rules -----------------------------------------------------------------------------

    @rule(target=present, identity=st.runner().flatmap(
              lambda m: rst.identities(exclude=[m.agent_identity])),
          name=rst.names(), metadata=rst.metadata(max_size=32),
          attributes=rst.attributes())
    def join(self, identity: str, name: str, metadata: str,
             attributes: dict[str, str]) -> str:
        if identity in self.scenario.present:
            # Drawn twice by chance: this one joins under a fresh identity instead.
            identity = f"{identity}-{len(self.scenario.puppets)}"
        self.perform(Join(identity, name=name, metadata=metadata, attributes=attributes))
        return identity

    @rule(who=consumes(present))
    def leave(self, who: str) -> None:
        self.perform(Leave(who))

    @rule(who=consumes(present))
    def remove(self, who: str) -> None:
        self.perform(Remove(who))

    @rule(who=present, name=rst.names())
    def set_name(self, who: str, name: str) -> None:
        self.perform(SetName(who, name))

    @rule(who=present, metadata=rst.metadata(max_size=32))
    def set_metadata(self, who: str, metadata: str) -> None:
        self.perform(SetMetadata(who, metadata))

    @rule(who=present, attributes=rst.attributes(deletions=True))
    def set_attributes(self, who: str, attributes: dict[str, str]) -> None:
        self.perform(SetAttributes(who, attributes))

    @rule(who=present, payload=rst.payloads(max_size=64), to_agent=st.booleans(),
          topic=st.runner().flatmap(lambda m: st.sampled_from(list(m.topics))))
    def send_data(self, who: str, payload: bytes, to_agent: bool, topic: str | None) -> None:
        self.perform(SendData(who, payload, topic=topic,
                              to=(self.agent_identity,) if to_agent else ()))

    @precondition(lambda self: bool(self.methods))
    @rule(who=present, method=st.runner().flatmap(_methods),
          payload=st.text(max_size=32))
    def call_rpc(self, who: str, method: str, payload: str) -> None:
        self.perform(CallRpc(who, method, payload))

    @rule(metadata=rst.metadata(max_size=32))
    def set_room_metadata(self, metadata: str) -> None:
        self.perform(SetRoomMetadata(metadata))

    @precondition(lambda self: bool(self.available_faults()))
    @rule(fault=st.runner().flatmap(_faults))
    def fault(self, fault: Fault) -> None:
        self.perform(fault)

    # -- running -------------------------------------------------------------------------

    @classmethod
    def run(cls, *, backend: str | None = None, server: str | ServerSpec | None = None,
            settings: settings | None = None) -> None:
        """Run this machine as a test (hypothesis's `run_state_machine_as_test`) on
        ``backend`` and ``server`` (defaults: the class's). Default settings: 10
        examples of up to 8 steps, no deadline; ``ROOM_MACHINE_EXAMPLES`` overrides the
        number of examples."""
        attrs: dict[str, Any] = {}
        if backend is not None:
            attrs["backend"] = backend
        if server is not None:
            attrs["server"] = server
        machine = type(cls.__name__, (cls,), attrs) if attrs else cls
        run_state_machine_as_test(machine, settings=settings or default_settings())


def default_settings(max_examples: int = 10, steps: int = 8) -> settings:
    """Settings for room state machines: few examples (each one sets up a room), no
    deadline (steps take real time), and no health check about slow data generation."""
    return settings(
        max_examples=int(os.environ.get("ROOM_MACHINE_EXAMPLES", max_examples)),
        stateful_step_count=steps, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        report_multiple_bugs=False)
