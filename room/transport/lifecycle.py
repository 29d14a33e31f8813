"""The connection's lifecycle as a pure, I/O-free object (in the manner of h11).

`Lifecycle` knows where the room's connection stands (connecting, connected, resuming,
rejoining, disconnected) and decides, for each thing that happens to it, what the user
is told (the events, in order) and what the engine does next (nothing, resume, rejoin, or
close) and after how long. It has no clock (time is passed in) and no sockets, so
hypothesis drives it through arbitrary fault histories (tests/test_lifecycle_machine.py).

The rules, as LiveKit's own clients follow them:

- losing only the signalling connection while the peer connections are healthy is
  repaired by a **resume** (same session, same sid); a failed peer connection, a server
  that asks for it (``LeaveRequest.action`` RECONNECT, or RESUME: that one means the
  server's side of the peer connections needs an ICE restart, which aiortc cannot do) or
  a refused resume needs a **full rejoin** (new session);
- the user sees ``ConnectionStateChanged(RECONNECTING)`` and ``Reconnecting`` once when
  trouble starts, then ``Reconnected`` and ``ConnectionStateChanged(CONNECTED)`` when it
  is over, or a single ``Disconnected`` when the policy gives up (too many attempts, or
  past its deadline), the server says goodbye for good, or the user leaves;
- attempts are spaced by the policy's backoff; nothing happens after ``Disconnected``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from room.events._types import (
    Connected,
    ConnectionStateChanged,
    Disconnected,
    Reconnected,
    Reconnecting,
    RoomEvent,
)
from room.options import ReconnectPolicy
from room.types import ConnectionState, DisconnectReason

__all__ = ["Action", "Lifecycle", "Phase", "Step"]


class Phase(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RESUMING = "resuming"
    REJOINING = "rejoining"
    DISCONNECTED = "disconnected"


class Action(enum.Enum):
    """What the engine does next."""

    NONE = "none"  # keep going as is
    RESUME = "resume"  # reopen signalling for the same session, keep the peer connections
    REJOIN = "rejoin"  # join afresh: new session, new peer connections
    CLOSE = "close"  # tear everything down; the room is over


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one input: events to deliver (in order), then what to do."""

    events: list[RoomEvent] = field(default_factory=list)
    action: Action = Action.NONE
    delay: float = 0.0  # seconds to wait before RESUME or REJOIN


_CONNECTION_STATE = {
    Phase.CONNECTING: ConnectionState.CONNECTING,
    Phase.CONNECTED: ConnectionState.CONNECTED,
    Phase.RESUMING: ConnectionState.RECONNECTING,
    Phase.REJOINING: ConnectionState.RECONNECTING,
    Phase.DISCONNECTED: ConnectionState.DISCONNECTED,
}


class Lifecycle:
    """Where the connection stands; see the module docstring for the rules.

    ``policy`` None means no reconnection: any fault ends the room. Every input method
    returns a `Step`; after the room is disconnected every input returns an empty one.
    """

    def __init__(self, policy: ReconnectPolicy | None) -> None:
        self.policy = policy
        self.phase = Phase.CONNECTING
        self.attempts = 0  # failed attempts since the trouble started
        self.trouble_since: float | None = None
        self.disconnect_reason: DisconnectReason | None = None

    @property
    def connection_state(self) -> ConnectionState:
        return _CONNECTION_STATE[self.phase]

    @property
    def reconnecting(self) -> bool:
        return self.phase in (Phase.RESUMING, Phase.REJOINING)

    # -- inputs ----------------------------------------------------------------------

    def joined(self) -> Step:
        """The first join succeeded: the room is usable."""
        if self.phase is not Phase.CONNECTING:
            return Step()
        return Step([*self._enter(Phase.CONNECTED), Connected()])

    def signal_lost(self, now: float, message: str, *, transport_healthy: bool) -> Step:
        """The signalling connection broke (closed, or no pong in time)."""
        return self._trouble(now, DisconnectReason.SIGNAL_CLOSE, message,
                             rejoin=not transport_healthy)

    def transport_failed(self, now: float, message: str) -> Step:
        """A peer connection failed: only a full rejoin can repair it (no ICE restart)."""
        return self._trouble(now, DisconnectReason.MEDIA_FAILURE, message, rejoin=True)

    def server_leave(self, now: float, reason: DisconnectReason, action: str) -> Step:
        """The server sent ``leave`` with ``action`` DISCONNECT, RESUME or RECONNECT."""
        if action == "RESUME":
            # The server's side of the peer connections failed (or the session moves to
            # another node): both need an ICE restart, which aiortc cannot do, so the
            # repair is a full rejoin (livekit-server expects some clients to do that).
            return self._trouble(now, reason, "the server asked us to resume", rejoin=True)
        if action == "RECONNECT":
            return self._trouble(now, reason, "the server asked us to reconnect", rejoin=True)
        return self._end(reason, "the server asked us to leave")

    def attempt_succeeded(self) -> Step:
        """The resume or rejoin in progress worked."""
        if not self.reconnecting:
            return Step()
        self.attempts = 0
        self.trouble_since = None
        return Step([Reconnected(), *self._enter(Phase.CONNECTED)])

    def attempt_failed(self, now: float, message: str, *, needs_rejoin: bool,
                       transport_healthy: bool = True) -> Step:
        """An attempt failed. ``needs_rejoin``: a resume the server refused (or any
        failure that makes the old session useless)."""
        if not self.reconnecting:
            return Step()
        self.attempts += 1
        phase = self.phase
        if needs_rejoin or not transport_healthy:
            phase = Phase.REJOINING
        if self._exhausted(now):
            return self._end(DisconnectReason.SIGNAL_CLOSE if phase is Phase.RESUMING
                             else DisconnectReason.MEDIA_FAILURE,
                             f"gave up reconnecting after {self.attempts} attempt(s): "
                             f"{message}")
        self.phase = phase
        return Step(action=Action.RESUME if phase is Phase.RESUMING else Action.REJOIN,
                    delay=self._delay())

    def deadline_passed(self, now: float) -> Step:
        """Time went by while reconnecting: give up once past the policy's deadline."""
        if self.reconnecting and self._exhausted(now):
            return self._end(DisconnectReason.SIGNAL_CLOSE,
                             "gave up reconnecting: deadline passed")
        return Step()

    def closed(self, reason: DisconnectReason, message: str) -> Step:
        """The room ends for good: the user left, the server ended it, or the initial
        join failed."""
        return self._end(reason, message)

    # -- internals -------------------------------------------------------------------

    def _trouble(self, now: float, reason: DisconnectReason, message: str, *,
                 rejoin: bool) -> Step:
        if self.phase is Phase.DISCONNECTED:
            return Step()
        if self.phase is Phase.CONNECTING or self.policy is None:
            return self._end(reason, message)
        target = Phase.REJOINING if rejoin else Phase.RESUMING
        if self.reconnecting:
            # Already at it: a rejoin need overrides a resume; the attempt in progress is
            # abandoned by the engine, and the next one is scheduled.
            if target is Phase.REJOINING:
                self.phase = Phase.REJOINING
            return Step(action=Action.REJOIN if self.phase is Phase.REJOINING
                        else Action.RESUME, delay=self._delay())
        self.trouble_since = now
        self.attempts = 0
        events = [*self._enter(target), Reconnecting()]
        return Step(events, Action.REJOIN if rejoin else Action.RESUME, 0.0)

    def _exhausted(self, now: float) -> bool:
        policy = self.policy
        if policy is None:
            return True
        since = self.trouble_since if self.trouble_since is not None else now
        return self.attempts >= policy.max_attempts or now - since >= policy.give_up_after

    def _delay(self) -> float:
        assert self.policy is not None
        return self.policy.delay(self.attempts)

    def _enter(self, phase: Phase) -> list[RoomEvent]:
        """Move to ``phase``; the state-change event if the user-visible state changed."""
        before = self.connection_state
        self.phase = phase
        if self.connection_state is before:
            return []
        return [ConnectionStateChanged(self.connection_state)]

    def _end(self, reason: DisconnectReason, message: str) -> Step:
        if self.phase is Phase.DISCONNECTED:
            return Step()
        self.disconnect_reason = reason
        return Step([*self._enter(Phase.DISCONNECTED), Disconnected(reason, message)],
                    Action.CLOSE)
