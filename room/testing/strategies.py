"""Hypothesis strategies for room tests: participants, their data and whole room histories.

    from hypothesis import given
    from room.testing import strategies as rst

    @given(rst.histories(methods=["ask"], faults=["cut_signal"]))
    def test_...(history): ...

Every value stays within what LiveKit accepts (sizes well under its limits; attribute
keys without the reserved ``lk.`` prefix), so a failure is about the agent under test,
not about an input the server would refuse. `histories` draws only histories that can be
played (nobody acts before joining or after leaving) and shrinks towards short ones with
few participants and plain values, so a failing test reports a minimal history.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

from hypothesis import strategies as st

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
)

__all__ = [
    "FAULT_SECONDS",
    "faults",
    "attribute_keys",
    "attributes",
    "data_packets",
    "histories",
    "identities",
    "metadata",
    "names",
    "payloads",
    "rpc_calls",
]

_IDENTITY_CHARS = st.characters(categories=["L", "N"], include_characters="-_.@",
                                codec="utf-8")
_PRINTABLE = st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"])


def identities(*, max_size: int = 24, exclude: Iterable[str] = ()) -> st.SearchStrategy[str]:
    """Participant identities: letters and digits of any script, ``-_.@``."""
    excluded = frozenset(exclude)
    return st.text(_IDENTITY_CHARS, min_size=1, max_size=max_size).filter(
        lambda s: s not in excluded)


def names(*, max_size: int = 32) -> st.SearchStrategy[str]:
    """Display names: any printable text, possibly empty."""
    return st.text(_PRINTABLE, max_size=max_size)


def metadata(*, max_size: int = 128) -> st.SearchStrategy[str]:
    """Participant or room metadata: any text (LiveKit allows 64,000 bytes; keep
    ``max_size`` small for fast tests)."""
    return st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]),
                   max_size=max_size)


def attribute_keys() -> st.SearchStrategy[str]:
    return st.text(string.ascii_letters + string.digits + "_-.", min_size=1,
                   max_size=16).filter(lambda k: not k.startswith("lk."))


def attributes(*, max_keys: int = 3, deletions: bool = False) -> st.SearchStrategy[
        dict[str, str]]:
    """Participant attributes. With ``deletions``, values may be "" (which deletes the key
    in a change)."""
    values = st.text(_PRINTABLE, min_size=0 if deletions else 1, max_size=32)
    return st.dictionaries(attribute_keys(), values, max_size=max_keys)


def payloads(*, max_size: int = 256) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


def topics(choices: Sequence[str | None] = (None,)) -> st.SearchStrategy[str | None]:
    return st.sampled_from(list(choices))


def data_packets(identity: str | st.SearchStrategy[str] | None = None, *,
                 topics: Sequence[str | None] = (None, "chat"),
                 max_size: int = 256, lossy: bool = False,
                 to: Sequence[str] = ()) -> st.SearchStrategy[SendData]:
    """`SendData` happenings from ``identity`` (a strategy or a fixed identity; default
    `identities`), to everyone or some of ``to``. Lossy packets only with ``lossy`` (they
    may be lost, which most assertions do not expect)."""
    who = (identity if isinstance(identity, st.SearchStrategy)
           else st.just(identity) if identity is not None else identities())
    destinations: st.SearchStrategy[tuple[str, ...]] = (
        st.lists(st.sampled_from(list(to)), unique=True, max_size=len(to)).map(tuple)
        if to else st.just(()))
    return st.builds(SendData, who, payloads(max_size=max_size),
                     st.sampled_from(list(topics)), destinations,
                     st.booleans() if lossy else st.just(True))


def rpc_calls(identity: str | st.SearchStrategy[str] | None = None, *,
              methods: Sequence[str] = ("echo",), destination: str | None = None,
              max_size: int = 64) -> st.SearchStrategy[CallRpc]:
    """`CallRpc` happenings: ``identity`` calls one of ``methods`` on ``destination``
    (None: the agent under test) with a text payload (LiveKit allows 15 KiB)."""
    if not methods:
        raise ValueError("rpc_calls needs at least one method")
    who = (identity if isinstance(identity, st.SearchStrategy)
           else st.just(identity) if identity is not None else identities())
    return st.builds(CallRpc, who, st.sampled_from(list(methods)),
                     st.text(_PRINTABLE, max_size=max_size), st.just(destination))


# How long each fault lasts in generated histories (seconds; a cut is instant). UDP
# outages stay below the 15 s after which livekit-server gives up on a silent transport.
FAULT_SECONDS: dict[FaultKind, Sequence[float]] = {
    "cut_signal": (0.0,),
    "drop_udp": (1.0, 2.0, 4.0),
    "restart": (0.0, 0.5, 1.0),
}


def faults(kinds: Iterable[FaultKind]) -> st.SearchStrategy[Fault]:
    """`Fault` steps of these kinds, each lasting one of its `FAULT_SECONDS` (nothing
    when ``kinds`` is empty)."""
    chosen = sorted(set(kinds))
    if not chosen:
        return st.nothing()
    return st.sampled_from(chosen).flatmap(
        lambda kind: st.sampled_from(list(FAULT_SECONDS[kind])).map(
            lambda seconds: Fault(kind, seconds)))


_fault_steps = faults  # for `histories`, whose ``faults`` parameter hides the name


def _possible(kind: str, present: Sequence[str], absent: Sequence[str],
              toned: Iterable[str]) -> bool:
    if kind == "join":
        return bool(absent)
    if kind == "tone":
        return bool(set(present) - set(toned))
    if kind in ("room_metadata", "fault", "pause"):
        return True
    return bool(present)


@st.composite
def histories(
    draw: st.DrawFn,
    *,
    agent: str = "agent",
    puppets: int | Sequence[str] = 3,
    min_size: int = 1,
    max_size: int = 10,
    methods: Sequence[str] = (),
    topics: Sequence[str | None] = (None,),
    faults: Iterable[FaultKind] = (),
    tones: bool = False,
    removals: bool = True,
    renames: bool = True,
    room_metadata: bool = True,
    data: bool = True,
    pauses: Sequence[float] = (),
) -> list[Happening]:
    """Room histories the agent ``agent`` lives through, of ``min_size`` to ``max_size``
    steps, played by up to ``puppets`` participants (a number, or their identities).

    Steps are joins, leaves and removals; name, metadata and attribute changes (with
    ``renames``); data to everyone or to some (with ``data``, on ``topics``); calls of
    ``methods`` on the agent; tones (with ``tones``); room metadata changes; the
    ``faults`` named (``"cut_signal"``, ``"drop_udp"``, ``"restart"``) hitting the agent;
    ``pauses`` of those lengths. Every history can be played: a participant acts only
    while in the room.
    """
    if isinstance(puppets, int):
        if puppets < 1:
            raise ValueError("puppets must be at least 1")
        pool = draw(st.lists(identities(exclude=[agent]), min_size=puppets,
                             max_size=puppets, unique=True))
    else:
        pool = list(puppets)
        if not pool or len(set(pool)) != len(pool) or agent in pool:
            raise ValueError("puppets must be distinct identities, not the agent's")
    fault_kinds = sorted(set(faults))
    for fault_kind in fault_kinds:
        if fault_kind not in FAULT_SECONDS:
            raise ValueError(f"unknown fault {fault_kind!r}")
    if not 0 <= min_size <= max_size:
        raise ValueError("need 0 <= min_size <= max_size")

    @st.composite
    def _step(draw: st.DrawFn, present: tuple[str, ...], absent: tuple[str, ...],
              toned: frozenset[str], may_stop: bool) -> Happening | None:
        def pick(among: Iterable[str]) -> str:
            # By position in the pool, not in ``among``: a step keeps its participant
            # when the shrinker deletes earlier steps.
            candidates = set(among)
            start = draw(st.integers(0, len(pool) - 1))
            return next(p for p in pool[start:] + pool[:start] if p in candidates)

        # "Go on?" (7 in 8: yes) is part of the step, so that deleting a step deletes
        # all its draws and the steps after it play the same.
        if may_stop and draw(st.integers(0, 7)) == 0:
            return None
        start = draw(st.integers(0, len(kinds) - 1))
        kind = next(k for k in kinds[start:] + kinds[:start]
                    if _possible(k, present, absent, toned))
        who = (pick(present)
               if kind not in ("join", "tone", "room_metadata", "fault", "pause") else "")
        if kind == "join":
            return Join(pick(absent), name=draw(names()) if renames else "",
                        metadata=draw(metadata()),
                        attributes=draw(attributes()) if renames else {})
        if kind == "metadata":
            return SetMetadata(who, draw(metadata()))
        if kind == "name":
            return SetName(who, draw(names()))
        if kind == "attributes":
            return SetAttributes(who, draw(attributes(deletions=True)))
        if kind == "data":
            others = [p for p in present if p != who] + [agent]
            return draw(data_packets(who, topics=topics, to=others))
        if kind == "rpc":
            return draw(rpc_calls(who, methods=methods))
        if kind == "leave":
            return Leave(who)
        if kind == "remove":
            return Remove(who)
        if kind == "tone":
            return PublishTone(pick(p for p in present if p not in toned),
                               draw(st.sampled_from([440.0, 660.0, 880.0])))
        if kind == "room_metadata":
            return SetRoomMetadata(draw(metadata()))
        if kind == "fault":
            return draw(_fault_steps(fault_kinds))
        return Pause(draw(st.sampled_from(list(pauses))))

    # Comings and goings, and data, are drawn more often than the rest: they are most of
    # a room's life, and what agents most often get wrong. The list does not depend on
    # who is present (a kind that cannot be played now gives way to the next one that
    # can), so a step keeps its kind when the shrinker deletes earlier ones.
    kinds = ["join"] * 3 + ["leave"] * 2 + ["data"] * 2 * data + ["metadata"]
    kinds += ["name", "attributes"] * renames + ["rpc"] * bool(methods)
    kinds += ["remove"] * removals + ["tone"] * tones + ["room_metadata"] * room_metadata
    kinds += ["fault"] * bool(fault_kinds) + ["pause"] * bool(pauses)

    present: list[str] = []
    toned: set[str] = set()
    steps: list[Happening] = []
    while len(steps) < max_size:
        absent = [p for p in pool if p not in present]
        if not any(_possible(kind, present, absent, toned) for kind in kinds):
            break
        # Each step is one draw of its own, which the shrinker can delete as a whole.
        step = draw(_step(tuple(present), tuple(absent), frozenset(toned),
                          len(steps) >= min_size))
        if step is None:
            break
        if isinstance(step, Join):
            present.append(step.identity)
        elif isinstance(step, (Leave, Remove)):
            present.remove(step.identity)
            toned.discard(step.identity)
        elif isinstance(step, PublishTone):
            toned.add(step.identity)
        steps.append(step)
    return steps
