"""Publish a sine tone as a microphone track.

    python examples/tone_publisher.py                        # on an embedded dev server
    python examples/tone_publisher.py --url ws://... --token ... --frequency 440

Without --url it starts a dev server of its own and prints how to join it.
"""

from __future__ import annotations

import argparse
import array
import math

import anyio

import room


async def publish_tone(r: room.Room, *, frequency: float = 440.0, seconds: float = 10.0,
                       sample_rate: int = 48000) -> None:
    """Publish ``frequency`` Hz on ``r`` for ``seconds`` (real time: the source paces it)."""
    source = room.AudioSource(sample_rate, 1)
    track = room.LocalAudioTrack.create_audio_track("tone", source)
    publication = await r.local_participant.publish_track(
        track, room.TrackPublishOptions(source=room.TrackSource.MICROPHONE))
    print(f"publishing {frequency:g} Hz as {publication.sid}")
    per_frame = sample_rate // 100  # 10 ms
    step = 2 * math.pi * frequency / sample_rate
    for n in range(int(seconds * 100)):
        pcm = array.array("h", (int(12000 * math.sin(step * (n * per_frame + i)))
                                for i in range(per_frame)))
        await source.capture_frame(room.AudioFrame(pcm.tobytes(), sample_rate, 1, per_frame))
    await source.wait_for_playout()
    await r.local_participant.unpublish_track(publication.sid)


async def main(args: argparse.Namespace) -> None:
    if args.url:
        async with room.Room.connect(args.url, args.token) as r:
            await publish_tone(r, frequency=args.frequency, seconds=args.seconds)
        return
    from room.devserver import DevServer

    async with DevServer() as dev:
        print(f"dev server at {dev.url}; listen with:\n  python -m room join {dev.url} "
              f"--token {dev.token('listener', room='tone')}")
        async with room.Room.connect(dev.url, dev.token("tone", room="tone")) as r:
            await publish_tone(r, frequency=args.frequency, seconds=args.seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--frequency", type=float, default=440.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    ns = parser.parse_args()
    anyio.run(main, ns, backend=ns.backend)
