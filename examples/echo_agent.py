"""An echo agent: it subscribes to every microphone in the room and plays each one back
on a track of its own ("echo-<identity>"), until the room ends or --seconds pass.

    python examples/echo_agent.py --url ws://... --token ...
"""

from __future__ import annotations

import argparse

import anyio

import room
from room.events import TrackSubscribed

RATE = 48000


async def echo(r: room.Room, event: TrackSubscribed) -> None:
    """Play ``event``'s track back, frame by frame, until it ends."""
    who = event.participant.identity
    source = room.AudioSource(RATE, 1, queue_size_ms=200)  # short: echo, not a recording
    track = room.LocalAudioTrack.create_audio_track(f"echo-{who}", source)
    publication = await r.local_participant.publish_track(
        track, room.TrackPublishOptions(source=room.TrackSource.MICROPHONE))
    try:
        async with room.AudioStream(event.track, sample_rate=RATE, num_channels=1) as stream:
            async for frame in stream:
                await source.capture_frame(frame)
    finally:
        if r.connection_state is not room.ConnectionState.DISCONNECTED:
            await r.local_participant.unpublish_track(publication.sid)


async def run_agent(r: room.Room, *, seconds: float | None = None) -> None:
    """Echo every microphone of ``r`` (each in a task of its own)."""
    with anyio.move_on_after(seconds if seconds is not None else float("inf")):
        async with anyio.create_task_group() as tg:
            async for ev in r.events(TrackSubscribed):
                assert isinstance(ev, TrackSubscribed)
                if (ev.publication.kind is room.TrackKind.AUDIO
                        and ev.publication.source is room.TrackSource.MICROPHONE
                        and not ev.publication.name.startswith("echo-")):
                    tg.start_soon(echo, r, ev)


async def main(args: argparse.Namespace) -> None:
    async with room.Room.connect(args.url, args.token) as r:
        await run_agent(r, seconds=args.seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    ns = parser.parse_args()
    anyio.run(main, ns, backend=ns.backend)
