"""`Scenario`: puppet participants play a room history against the agent under test.

    async with Scenario(server.url, room="r") as scenario:
        async with anyio.create_task_group() as tg:
            tg.start_soon(my_agent, scenario.agent_url, scenario.agent_token())
            await scenario.wait_for_agent()
            await scenario.play([Join("ann"), SendData("ann", b"hi"), Leave("ann")])
            await scenario.eventually(lambda: ...)
            tg.cancel_scope.cancel()
        scenario.puppets["ann"].events  # everything ann observed

Puppets are ordinary `room.Room` clients (real connections to a real server); the agent
joins as one more client, through ``agent_url``: a `TcpProxy` in front of the server, so
that a `Fault("cut_signal")` can cut its signalling on any server. The other faults use the
server's own hooks (`RoomServer.faults`). Leaving the block ends every puppet (each
leaves the room), whether the test passed or not, within a few seconds.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskGroup, TaskStatus

from room.testing.history import (
    CallRpc,
    Fault,
    FaultKind,
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
from room.testing.proxy import TcpProxy
from room.testing.servers import RoomServer, ServerSpec, UnsupportedFaultError

if TYPE_CHECKING:
    import room
    from room.data import DataPacket
    from room.events import RoomEvent
    from room.rpc import RpcHandler, RpcInvocationData

__all__ = ["Puppet", "RpcOutcome", "Scenario", "ScenarioError"]

E = TypeVar("E")

# How long the agent's signalling connection must have been up before a `Fault("cut_signal")`
# cuts it (seconds): a join or resume on a healthy network takes well under this.
CUT_AFTER_UPTIME = 0.5


class ScenarioError(RuntimeError):
    """A step of a history could not be played (a puppet could not join, a step timed
    out, a fault this server cannot be dealt...). The message names the step."""


@dataclass(frozen=True, slots=True)
class RpcOutcome:
    """How a puppet's RPC call ended: ``response``, or ``error`` (a `room.RpcError`, or
    the `room.RoomError` that ended the call), after ``elapsed`` seconds; ``abandoned``
    if the caller left (or the scenario ended) before it did."""

    caller: str
    destination: str
    method: str
    payload: str
    response: str | None
    error: BaseException | None
    elapsed: float
    abandoned: bool = False


@dataclass(eq=False)
class Puppet:
    """A participant the scenario plays, and what it observed over all its sessions."""

    identity: str
    events: list[RoomEvent] = field(default_factory=list)
    rpc: list[RpcOutcome] = field(default_factory=list)
    sessions: int = 0
    session_starts: list[int] = field(default_factory=list)  # index in events of each
    sids: list[str] = field(default_factory=list)  # its participant sid in each session
    calls_received: list[RpcInvocationData] = field(default_factory=list)
    room: room.Room | None = None
    _stop: anyio.Event = field(default_factory=anyio.Event)
    _done: anyio.Event = field(default_factory=anyio.Event)
    _tg: TaskGroup | None = None

    @property
    def present(self) -> bool:
        """Whether it is in the room now."""
        return self.room is not None and not self._done.is_set()

    def observed(self, *kinds: type[E], session: int | None = None) -> list[E]:
        """The events of these kinds it observed, in order (in its ``session``-th
        session only, if given: 0 is the first, -1 the latest)."""
        events = self.events
        if session is not None:
            starts = [*self.session_starts, len(events)]
            index = range(len(self.session_starts))[session]
            events = events[starts[index]:starts[index + 1]]
        return [ev for ev in events if isinstance(ev, kinds)]

    def data_of(self, session: int | None = None, *, topic: str | None = None,
                ) -> list[DataPacket]:
        """The data packets it received (in one ``session``; on ``topic`` only)."""
        from room.events import DataReceived

        return [ev.packet for ev in self.observed(DataReceived, session=session)
                if topic is None or ev.packet.topic == topic]

    @property
    def data(self) -> list[DataPacket]:
        """The data packets it received, in order."""
        return self.data_of()


class Scenario:
    """Plays room histories against an agent (see the module docstring).

    ``url``, ``api_key`` and ``api_secret`` name the server (or pass ``server``, a
    `RoomServer`, for the faults that need the server's help). ``room`` is the room
    (default: a fresh name), ``agent`` the identity the agent under test joins as.
    ``puppet_options`` are the puppets' `room.RoomOptions` (default: no automatic
    subscription, which spares CPU); ``puppet_methods`` (name -> handler) are RPC methods
    every puppet answers, for agents that call participants (each call is recorded in
    the puppet's ``calls_received``). Each step must complete within ``step_timeout``
    seconds; RPC calls time out after ``rpc_timeout``.
    """

    def __init__(self, url: str | None = None, *, api_key: str = "devkey",
                 api_secret: str = "secret", server: RoomServer | None = None,
                 room: str | None = None, agent: str = "agent",
                 puppet_options: room.RoomOptions | None = None,
                 puppet_methods: Mapping[str, RpcHandler] | None = None,
                 step_timeout: float = 10.0, rpc_timeout: float = 5.0) -> None:
        if server is None:
            if url is None:
                raise TypeError("Scenario needs a server URL (or server=)")
            server = RoomServer(ServerSpec("url", url=url, api_key=api_key,
                                           api_secret=api_secret), url=url)
        elif url is not None and url != server.url:
            raise ValueError("url and server.url differ")
        if not agent:
            raise ValueError("agent must be a non-empty identity")
        self.server = server
        self.url = server.url
        self.room = room or RoomServer.new_room_name("scenario")
        self.agent = agent
        self.step_timeout = step_timeout
        self.rpc_timeout = rpc_timeout
        self._puppet_options = puppet_options
        self._puppet_methods = dict(puppet_methods or {})
        self.puppets: dict[str, Puppet] = {}
        self.played: list[Happening] = []
        self._proxy: TcpProxy | None = None
        self._tg: TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._calls: set[anyio.Event] = set()

    def __repr__(self) -> str:
        return f"<Scenario {self.room!r} on {self.url} agent={self.agent!r}>"

    # -- the agent -----------------------------------------------------------------------

    @property
    def agent_url(self) -> str:
        """Where the agent should connect: through the scenario's signalling proxy (the
        server's URL itself for wss://, which a plain TCP proxy cannot stand for)."""
        if self._proxy is None:
            return self.url
        return self._proxy.url

    def agent_token(self, **grants: Any) -> str:
        """A token for the agent's identity in the scenario's room."""
        return self.server.token(self.agent, room=self.room, **grants)

    @property
    def faults(self) -> frozenset[FaultKind]:
        """The `Fault` kinds this scenario can deal its agent."""
        kinds: set[FaultKind] = set(self.server.faults)
        if self._proxy is not None:
            kinds.add("cut_signal")
        else:
            kinds.discard("cut_signal")  # the server could, but the proxy is the one path
        return frozenset(kinds)

    async def wait_for_agent(self, timeout: float = 10.0) -> None:
        """Until the server lists the agent in the room (ScenarioError after ``timeout``)."""
        await self.eventually(self._agent_listed, timeout=timeout,
                              message=f"the agent {self.agent!r} never joined {self.room!r}")

    async def _agent_listed(self) -> bool:
        return self.agent in await self.server.participants(self.room)

    # -- context -----------------------------------------------------------------------------

    async def __aenter__(self) -> Scenario:
        async with contextlib.AsyncExitStack() as stack:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            parts = urlsplit(self.url)
            if parts.scheme in ("ws", "http") and parts.hostname:
                self._proxy = await stack.enter_async_context(
                    TcpProxy(parts.hostname, parts.port or 80))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        assert self._tg is not None and self._stack is not None
        with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
            for puppet in self.puppets.values():
                puppet._stop.set()
            for puppet in self.puppets.values():
                await puppet._done.wait()
        self._tg.cancel_scope.cancel()
        # The block's own exception propagates as itself, not in an exception group.
        await self._stack.__aexit__(None, None, None)
        return None

    # -- playing -------------------------------------------------------------------------

    @property
    def present(self) -> frozenset[str]:
        """The puppets in the room now."""
        return frozenset(p.identity for p in self.puppets.values() if p.present)

    async def play(self, history: Iterable[Happening], *, gap: float = 0.0) -> None:
        """Play ``history`` step by step (each step done before the next; ``gap``
        seconds between steps). It is checked first (`check_history`): ValueError if a
        step cannot be played. RPC calls run on alongside; `settle` waits for them."""
        steps = check_history(history, agent=self.agent, present=self.present)
        for i, step in enumerate(steps):
            if i and gap:
                await anyio.sleep(gap)
            await self.perform(step)

    async def perform(self, step: Happening) -> None:
        """Play one step (see `play`)."""
        check_history([step], agent=self.agent, present=self.present)
        if isinstance(step, Fault) and step.kind not in self.faults:
            raise UnsupportedFaultError(
                f"{step!r}: not available here (available: {sorted(self.faults) or 'none'})")
        try:
            with anyio.fail_after(self.step_timeout + step_seconds(step)):
                await self._perform(step)
        except TimeoutError:
            raise ScenarioError(f"{step!r} did not complete within "
                                f"{self.step_timeout} s") from None
        self.played.append(step)

    async def settle(self, timeout: float | None = None) -> None:
        """Until every RPC call begun so far has ended."""
        with anyio.fail_after(timeout if timeout is not None else self.rpc_timeout + 10):
            for done in list(self._calls):
                await done.wait()

    async def eventually(self, check: Callable[[], bool | Awaitable[bool]], *,
                         timeout: float = 5.0, interval: float = 0.05,
                         message: str = "") -> None:
        """Until ``check()`` (sync or async) is true; AssertionError after ``timeout``
        seconds, with ``message`` and the last exception ``check`` raised, if any."""
        deadline = anyio.current_time() + timeout
        last: BaseException | None = None
        while True:
            try:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                last = None
            except Exception as exc:  # the condition may not be checkable yet
                last = exc
            if anyio.current_time() >= deadline:
                why = message or f"{getattr(check, '__name__', 'condition')} never held"
                raise AssertionError(f"{why} within {timeout} s"
                                     + (f" (last: {last!r})" if last else "")) from last
            await anyio.sleep(interval)

    # -- the steps -----------------------------------------------------------------------

    def _puppet_room(self, identity: str) -> room.Room:
        puppet = self.puppets[identity]
        if puppet.room is None:
            raise ScenarioError(f"{identity!r} is not in the room")
        return puppet.room

    async def _perform(self, step: Happening) -> None:
        assert self._tg is not None, "use `async with Scenario(...)`"
        if isinstance(step, Join):
            puppet = self.puppets.get(step.identity)
            if puppet is None:
                puppet = self.puppets[step.identity] = Puppet(step.identity)
            else:  # back again: the same record goes on, with a new session
                puppet._stop, puppet._done = anyio.Event(), anyio.Event()
            await self._tg.start(self._run_puppet, puppet, step)
        elif isinstance(step, Leave):
            puppet = self.puppets[step.identity]
            puppet._stop.set()
            await puppet._done.wait()
        elif isinstance(step, Remove):
            puppet = self.puppets[step.identity]
            await self.server.remove_participant(self.room, step.identity)
            await puppet._done.wait()
        elif isinstance(step, SetName):
            await self._puppet_room(step.identity).local_participant.set_name(step.name)
        elif isinstance(step, SetMetadata):
            await self._puppet_room(step.identity).local_participant.set_metadata(
                step.metadata)
        elif isinstance(step, SetAttributes):
            await self._puppet_room(step.identity).local_participant.set_attributes(
                step.attributes)
        elif isinstance(step, SendData):
            await self._puppet_room(step.identity).local_participant.publish_data(
                step.payload, reliable=step.reliable, topic=step.topic,
                destination_identities=step.to)
        elif isinstance(step, CallRpc):
            puppet = self.puppets[step.identity]
            assert puppet._tg is not None
            done = anyio.Event()
            self._calls.add(done)
            puppet._tg.start_soon(self._call, puppet, step, done)
        elif isinstance(step, PublishTone):
            puppet = self.puppets[step.identity]
            assert puppet._tg is not None
            await puppet._tg.start(self._tone, self._puppet_room(step.identity), step)
        elif isinstance(step, SetRoomMetadata):
            await self.server.update_room_metadata(self.room, step.metadata)
        elif isinstance(step, Fault):
            await self._fault(step)
        elif isinstance(step, Pause):
            await anyio.sleep(step.seconds)
        else:  # pragma: no cover - check_history refused it
            raise TypeError(f"not a room happening: {step!r}")

    async def _fault(self, step: Fault) -> None:
        if step.kind == "cut_signal":
            # A cut hits an agent that has (re)connected: while it reconnects from an
            # earlier fault, or is still joining, wait until its signalling connection
            # has been up for CUT_AFTER_UPTIME (the step's timeout bounds the wait).
            # Otherwise a run of cuts would take down every attempt in turn until the
            # agent's reconnection policy gave up: a test of the policy, not of the agent.
            assert self._proxy is not None
            while not self._proxy.cut(older_than=CUT_AFTER_UPTIME):
                await anyio.sleep(0.02)
        elif step.kind == "drop_udp":
            await self.server.drop_udp(self.room, self.agent, step.seconds)
        else:
            await self.server.restart(downtime=step.seconds)

    async def _run_puppet(self, puppet: Puppet, join: Join, *,
                          task_status: TaskStatus[None]) -> None:
        import room as room_pkg

        options = self._puppet_options or room_pkg.RoomOptions(auto_subscribe=False)
        token = self.server.token(join.identity, room=self.room, name=join.name or None,
                                  metadata=join.metadata or None,
                                  attributes=dict(join.attributes) or None)
        try:
            async with room_pkg.Room.connect(self.url, token, options=options) as r, \
                    anyio.create_task_group() as tg:
                subscription = r.events()
                puppet.room = r
                puppet.sessions += 1
                puppet.session_starts.append(len(puppet.events))
                puppet.sids.append(r.local_participant.sid)
                for method, handler in self._puppet_methods.items():
                    r.local_participant.register_rpc_method(
                        method, _recording(puppet, handler))
                puppet._tg = tg
                tg.start_soon(self._record, puppet, subscription)
                task_status.started()
                await puppet._stop.wait()
                tg.cancel_scope.cancel()
        except room_pkg.ConnectError as exc:
            raise ScenarioError(f"{join!r}: could not join: {exc}") from exc
        finally:
            puppet._done.set()

    async def _record(self, puppet: Puppet, subscription: Any) -> None:
        async for event in subscription:
            puppet.events.append(event)
        puppet._stop.set()  # the room ended (removed, or gave up reconnecting)

    async def _call(self, puppet: Puppet, step: CallRpc, done: anyio.Event) -> None:
        import room as room_pkg

        destination = step.destination or self.agent
        start = time.monotonic()
        response: str | None = None
        error: BaseException | None = None
        abandoned = False
        try:
            r = puppet.room
            if r is None:
                raise ScenarioError(f"{puppet.identity!r} left")
            response = await r.local_participant.perform_rpc(
                destination_identity=destination, method=step.method, payload=step.payload,
                response_timeout=self.rpc_timeout)
        except (room_pkg.RoomError, ScenarioError) as exc:
            error = exc
        except anyio.get_cancelled_exc_class():
            abandoned = True
            raise
        finally:
            puppet.rpc.append(RpcOutcome(puppet.identity, destination, step.method,
                                         step.payload, response, error,
                                         time.monotonic() - start, abandoned))
            done.set()
            self._calls.discard(done)

    async def _tone(self, r: room.Room, step: PublishTone, *,
                    task_status: TaskStatus[None]) -> None:
        import room as room_pkg
        from room.media.source import play_sine

        source = room_pkg.AudioSource(48000, 1)
        track = room_pkg.LocalAudioTrack.create_audio_track("tone", source)
        await r.local_participant.publish_track(
            track, room_pkg.TrackPublishOptions(source=room_pkg.TrackSource.MICROPHONE))
        task_status.started()
        await play_sine(source, step.frequency)


def _recording(puppet: Puppet, handler: RpcHandler) -> RpcHandler:
    async def answer(call: RpcInvocationData) -> str:
        puppet.calls_received.append(call)
        result = handler(call)
        if inspect.isawaitable(result):
            return await result
        return result

    return answer


def step_seconds(step: Happening) -> float:
    """How long a step takes by design (pauses, and a restart's downtime)."""
    if isinstance(step, Pause):
        return step.seconds
    if isinstance(step, Fault) and step.kind == "restart":
        return step.seconds
    return 0.0
