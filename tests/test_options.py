"""Options `room` cannot honour yet are refused when built, never silently ignored."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import room
from room import ContinualGatheringPolicy, RoomOptions, RtcConfiguration


@pytest.mark.parametrize(("build", "instead"), [
    (lambda: RoomOptions(dynacast=True), "Leave dynacast at False"),
    (lambda: RoomOptions(e2ee=object()), "Leave e2ee at None"),
    (lambda: RoomOptions(e2ee={"key": b"secret"}), "Leave e2ee at None"),
    (lambda: RtcConfiguration(
        continual_gathering_policy=ContinualGatheringPolicy.GATHER_CONTINUALLY),
     "Use ContinualGatheringPolicy.GATHER_ONCE"),
], ids=["dynacast", "e2ee-object", "e2ee-dict", "continual-gathering"])
def test_unsupported_options_are_refused(build: Callable[[], object], instead: str) -> None:
    with pytest.raises(room.UnsupportedFeatureError, match="not supported yet") as info:
        build()
    assert instead in str(info.value)
    # What a user may catch it as.
    assert isinstance(info.value, NotImplementedError)
    assert isinstance(info.value, room.RoomError)


def test_the_defaults_are_supported() -> None:
    assert RtcConfiguration().continual_gathering_policy is ContinualGatheringPolicy.GATHER_ONCE
    RtcConfiguration(continual_gathering_policy=ContinualGatheringPolicy.GATHER_ONCE)
    options = RoomOptions(dynacast=False, e2ee=None)
    assert options == RoomOptions()
    assert options.dynacast is False and options.e2ee is None
    RoomOptions(rtc_config=RtcConfiguration())


def test_continual_gathering_policy_must_be_the_enum() -> None:
    with pytest.raises(TypeError, match="ContinualGatheringPolicy"):
        RtcConfiguration(continual_gathering_policy="gather_once")  # type: ignore[arg-type]
