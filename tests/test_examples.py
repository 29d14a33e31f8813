"""The media examples (examples/*.py) do what their docstrings say, checked by content on
the dev server, both backends."""

from __future__ import annotations

import importlib.util
import sys
import wave
from pathlib import Path
from types import ModuleType

import anyio
import numpy as np
import pytest

import room
from room.devserver import DevServer
from room.events import TrackSubscribed
from tests.helpers import known, next_event
from tests.mediatools import dominant_frequency
from tests.test_media import assert_tone, listen, tone_track

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).parent.parent / "examples"


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_the_tone_publisher_is_heard() -> None:
    publisher = example("tone_publisher")
    async with DevServer(presence_interval=0) as dev, \
            room.Room.connect(dev.url, dev.token("tone", room="r")) as tx, \
            room.Room.connect(dev.url, dev.token("rx", room="r")) as rx:
        await known(rx, "tone")
        events = rx.events(TrackSubscribed)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: publisher.publish_tone(tx, frequency=523.0, seconds=4))
            ev = await next_event(events, TrackSubscribed, timeout=10)
            frames = await listen(ev.track, frames=150)
        x = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
        f = dominant_frequency(x / 32768, 16000)
        assert abs(f - 523) / 523 < 0.01, f


async def test_the_recorder_writes_what_it_hears(tmp_path: Path) -> None:
    recorder = example("recorder")
    out = tmp_path / "alice.wav"
    async with DevServer(presence_interval=0) as dev, \
            room.Room.connect(dev.url, dev.token("alice", room="r")) as alice, \
            room.Room.connect(dev.url, dev.token("rec", room="r")) as rec:
        await known(rec, "alice")
        async with tone_track(alice, 440.0):
            written = await recorder.record(rec, "alice", out, seconds=3.0)
    assert 2.5 * 48000 <= written <= 3.1 * 48000
    with wave.open(str(out)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 48000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert len(pcm) == written
    f = dominant_frequency(pcm[24000:] / 32768, 48000)
    assert abs(f - 440) / 440 < 0.01, f


async def test_the_echo_agent_plays_a_microphone_back() -> None:
    agent = example("echo_agent")
    async with DevServer(presence_interval=0) as dev, \
            room.Room.connect(dev.url, dev.token("alice", room="r")) as alice, \
            room.Room.connect(dev.url, dev.token("echo", room="r")) as echo:
        await known(alice, "echo")
        events = alice.events(TrackSubscribed)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: agent.run_agent(echo, seconds=15))
            async with tone_track(alice, 440.0):
                ev = await next_event(events, TrackSubscribed, timeout=10)
                assert ev.participant.identity == "echo"
                assert ev.publication.name == "echo-alice"
                assert_tone(await listen(ev.track, frames=100), 440.0)
            tg.cancel_scope.cancel()
