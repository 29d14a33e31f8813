"""``python -m room demo``: an embedded dev server where bob acts and alice watches."""


from __future__ import annotations

import itertools
import json
from functools import partial

import anyio

from room.cli._common import _error, _say
from room.cli._format import _describe, format_event
from room.devserver import DevServer
from room.errors import RoomError
from room.events import (
    DataReceived,
    Disconnected,
    ParticipantAttributesChanged,
    ParticipantConnected,
    ParticipantDisconnected,
    ParticipantMetadataChanged,
    ParticipantNameChanged,
    RoomEvent,
    RoomMetadataChanged,
    SipDTMFReceived,
    Subscription,
    TrackSubscribed,
    TrackUnpublished,
)
from room.media.source import AudioSource, play_sine
from room.media.stream import AudioStream
from room.options import TrackPublishOptions
from room.participant import LocalParticipant
from room.room import Room
from room.track import LocalAudioTrack
from room.types import TrackSource

__all__: list[str] = []

_DEMO_ROOM = "demo"


class _Seen:
    """The events the demo's observer has printed, so the script can wait for each one."""

    def __init__(self, timeout: float) -> None:
        self._events: list[RoomEvent] = []
        self._cursor = 0
        self._changed = anyio.Event()
        self._timeout = timeout

    def add(self, event: RoomEvent) -> None:
        self._events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, kind: type[RoomEvent], identity: str | None = None) -> None:
        """Wait until an event of ``kind`` (about ``identity``) has been printed."""
        with anyio.fail_after(self._timeout):
            while True:
                while self._cursor < len(self._events):
                    event = self._events[self._cursor]
                    self._cursor += 1
                    if isinstance(event, kind) and identity in (None, _describe(event)[0]):
                        return
                await self._changed.wait()


async def _observe(events: Subscription[RoomEvent], seen: _Seen) -> None:
    async for event in events:
        _say("    " + format_event(event))
        seen.add(event)


async def _tone_step(alice: Room, bob: LocalParticipant, seen: _Seen) -> None:
    """Bob publishes a tone; alice reads half a second of it and says what she hears
    (counting zero crossings: no numpy in the library); bob unpublishes it."""
    source = AudioSource(48000, 1)
    track = LocalAudioTrack.create_audio_track("tone", source)
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(play_sine, source, 440, amplitude=12000))
        publication = await bob.publish_track(
            track, TrackPublishOptions(source=TrackSource.MICROPHONE))
        await seen.wait_for(TrackSubscribed, "bob")
        remote = alice.remote_participants["bob"].track_publications[publication.sid].track
        assert remote is not None
        samples: list[int] = []
        async with AudioStream(remote, sample_rate=16000) as stream:
            async for frame in stream:
                samples.extend(frame.data.tolist())
                if len(samples) >= 24000:  # 1.5 s: a second to settle, half a second heard
                    break
        heard = samples[16000:]
        crossings = sum(1 for a, b in itertools.pairwise(heard) if (a < 0) != (b < 0))
        _say(f"  (alice hears {crossings / 2 / (len(heard) / 16000):.0f} Hz)")
        await bob.unpublish_track(publication.sid)
        await seen.wait_for(TrackUnpublished, "bob")
        tg.cancel_scope.cancel()


class _Stopped(Exception):
    """Ctrl-C during the demo: it ends at the next step, leaving its rooms normally."""


async def _demo(backend: str, fast: bool, stop: anyio.Event) -> int:
    pause = 0.0 if fast else 0.75
    async with DevServer() as server:
        _say(f"dev server at {server.url} ({backend}); room {_DEMO_ROOM!r}")
        alice_token = server.token("alice", room=_DEMO_ROOM, name="Alice")
        async with Room.connect(server.url, alice_token) as alice:
            _say("alice has joined and prints every event she sees; bob acts")
            seen = _Seen(timeout=10.0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_observe, alice.events(), seen)
                try:
                    await _demo_script(server, alice, seen, pause, stop)
                except _Stopped:
                    _say("interrupted")
                    return 130
                except (TimeoutError, RoomError) as exc:
                    _error(f"the demo went wrong: {exc!r}")
                    return 1
                finally:
                    # Alice's own Disconnected ends her event stream, and with it _observe.
                    await alice.disconnect()
    _say("done")
    return 0


async def _demo_script(
    server: DevServer, alice: Room, seen: _Seen, pause: float, stop: anyio.Event,
) -> None:
    async def step(text: str) -> None:
        with anyio.move_on_after(pause):
            await stop.wait()
        if stop.is_set():
            raise _Stopped
        _say(f"> {text}")

    await step("bob joins")
    async with Room.connect(server.url, server.token("bob", room=_DEMO_ROOM)) as bob:
        me = bob.local_participant
        await seen.wait_for(ParticipantConnected, "bob")

        await step("bob sets his name")
        await me.set_name("Bob")
        await seen.wait_for(ParticipantNameChanged, "bob")

        await step("bob sets his metadata")
        await me.set_metadata(json.dumps({"role": "guest"}))
        await seen.wait_for(ParticipantMetadataChanged, "bob")

        await step("bob says hello through his attributes")
        await me.set_attributes({"says": "Hi Alice! Is this thing on?", "mood": "curious"})
        await seen.wait_for(ParticipantAttributesChanged, "bob")

        await step("alice answers through hers")
        await alice.local_participant.set_attributes({"says": "Loud and clear, Bob."})
        await seen.wait_for(ParticipantAttributesChanged, "alice")

        await step("bob is reassured: he changes what he says and drops his mood")
        await me.set_attributes({"says": "Great, what is today's topic?", "mood": ""})
        await seen.wait_for(ParticipantAttributesChanged, "bob")

        await step("bob sends a chat message over the reliable data channel")
        await me.publish_data("Shall we start?", topic="chat")
        await seen.wait_for(DataReceived, "bob")

        await step("bob presses 5 on his keypad (SIP DTMF)")
        await me.publish_dtmf(code=5, digit="5")
        await seen.wait_for(SipDTMFReceived, "bob")

        await step("bob plays a 440 Hz tone on a microphone track; alice listens")
        await _tone_step(alice, me, seen)

        await step("the server sets the room metadata")
        await server.update_room_metadata(_DEMO_ROOM, json.dumps({"topic": "structured IO"}))
        await seen.wait_for(RoomMetadataChanged)

        await step("carol joins")
        carol_token = server.token("carol", room=_DEMO_ROOM, name="Carol")
        async with Room.connect(server.url, carol_token) as carol:
            carol_events = carol.events(Disconnected)
            await seen.wait_for(ParticipantConnected, "carol")

            await step("the server removes carol")
            await server.remove_participant(_DEMO_ROOM, "carol")
            await seen.wait_for(ParticipantDisconnected, "carol")
            with anyio.fail_after(10.0):
                async for event in carol_events:
                    _say(f"  (carol's own stream ends: {type(event).__name__} "
                         f"{_describe(event)[1]})")

        await step("bob says goodbye")
        await me.set_attributes({"says": "Bye!"})
        await seen.wait_for(ParticipantAttributesChanged, "bob")

        await step("bob leaves")
    await seen.wait_for(ParticipantDisconnected, "bob")

    await step("alice leaves")
