"""Room happenings: the steps of a history that a `room.testing.Scenario` plays.

Each is a small frozen dataclass, so a history (a list of them) prints as the Python that
builds it: a failing test's shrunk history can be pasted into a regression test as is.
``identity`` is always a *puppet* (a participant the scenario plays); `Fault` hits the
agent under test. `check_history` says whether a history can be played (who is present
when), the way `Scenario.play` checks it before it starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, get_args

__all__ = [
    "CallRpc",
    "Fault",
    "FaultKind",
    "Happening",
    "Join",
    "Leave",
    "Pause",
    "PublishTone",
    "Remove",
    "SendData",
    "SetAttributes",
    "SetMetadata",
    "SetName",
    "SetRoomMetadata",
    "check_history",
]

FaultKind = Literal["cut_signal", "drop_udp", "restart"]


@dataclass(frozen=True, slots=True)
class Join:
    """``identity`` joins the room, with this name, metadata and attributes (its token's)."""

    identity: str
    name: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Leave:
    """``identity`` leaves the room (disconnects, telling the server)."""

    identity: str


@dataclass(frozen=True, slots=True)
class Remove:
    """The server removes ``identity`` (LiveKit's ``RemoveParticipant``)."""

    identity: str


@dataclass(frozen=True, slots=True)
class SetName:
    identity: str
    name: str


@dataclass(frozen=True, slots=True)
class SetMetadata:
    identity: str
    metadata: str


@dataclass(frozen=True, slots=True)
class SetAttributes:
    """``identity`` changes these attributes (an empty value deletes one)."""

    identity: str
    attributes: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SendData:
    """``identity`` publishes a data packet: to everyone, or only to the identities ``to``."""

    identity: str
    payload: bytes
    topic: str | None = None
    to: tuple[str, ...] = ()
    reliable: bool = True


@dataclass(frozen=True, slots=True)
class CallRpc:
    """``identity`` calls ``method`` on ``destination`` (None: the agent under test). The
    call runs alongside the next steps; its outcome is recorded when it ends."""

    identity: str
    method: str
    payload: str = ""
    destination: str | None = None


@dataclass(frozen=True, slots=True)
class PublishTone:
    """``identity`` publishes a microphone track playing a sine tone until it leaves."""

    identity: str
    frequency: float = 440.0


@dataclass(frozen=True, slots=True)
class SetRoomMetadata:
    """The server changes the room's metadata (LiveKit's ``UpdateRoomMetadata``)."""

    metadata: str


@dataclass(frozen=True, slots=True)
class Fault:
    """A network fault hits the agent under test: its signalling is cut (it resumes), its
    UDP is dropped for ``seconds``, or the server restarts (down for ``seconds``)."""

    kind: FaultKind
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Pause:
    """Nothing happens for ``seconds``."""

    seconds: float


Happening: TypeAlias = (Join | Leave | Remove | SetName | SetMetadata | SetAttributes
                        | SendData | CallRpc | PublishTone | SetRoomMetadata | Fault | Pause)

_HAPPENINGS: tuple[type, ...] = get_args(Happening)


def check_history(history: Iterable[Happening], *, agent: str,
                  present: Iterable[str] = ()) -> list[Happening]:
    """``history`` as a list, or ValueError naming its first step that cannot be played:
    a join of someone present (or of the agent), a step by someone absent, a tone
    published twice, a fault of an unknown kind, a negative pause."""
    steps = list(history)
    here = set(present)
    toned: set[str] = set()
    for i, step in enumerate(steps):
        def bad(why: str, i: int = i, step: Happening = step) -> ValueError:
            return ValueError(f"step {i} ({step!r}): {why}")

        if not isinstance(step, _HAPPENINGS):
            raise bad("not a room happening")
        if isinstance(step, Join):
            if not isinstance(step.identity, str) or not step.identity:
                raise bad("identity must be a non-empty str")
            if step.identity == agent:
                raise bad("that is the agent under test")
            if step.identity in here:
                raise bad("already in the room")
            here.add(step.identity)
        elif isinstance(step, SetRoomMetadata):
            pass
        elif isinstance(step, Fault):
            if step.kind not in ("cut_signal", "drop_udp", "restart"):
                raise bad("unknown fault")
            if not 0 <= step.seconds < float("inf"):
                raise bad("seconds must be a non-negative number")
        elif isinstance(step, Pause):
            if not 0 <= step.seconds < float("inf"):
                raise bad("seconds must be a non-negative number")
        else:
            if step.identity not in here:
                raise bad("not in the room")
            if isinstance(step, (Leave, Remove)):
                here.discard(step.identity)
                toned.discard(step.identity)
            elif isinstance(step, PublishTone):
                if step.identity in toned:
                    raise bad("already publishing a tone")
                if not 0 < step.frequency < 24000:
                    raise bad("frequency must be between 0 and 24 kHz")
                toned.add(step.identity)
            elif isinstance(step, SendData) and isinstance(step.to, str):
                raise bad("to must be a tuple of identities, not a str")
    return steps
