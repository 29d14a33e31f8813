"""Record a participant's microphone to a WAV file (16-bit PCM).

    python examples/recorder.py --url ws://... --token ... --identity alice out.wav

It waits for that participant's microphone, records --seconds of it (or until the track
ends) and writes the file.
"""

from __future__ import annotations

import argparse
import wave
from pathlib import Path

import anyio

import room
from room.events import TrackSubscribed


async def record(r: room.Room, identity: str, path: Path, *, seconds: float,
                 sample_rate: int = 48000) -> int:
    """Record ``identity``'s microphone into ``path``; returns the samples written."""
    events = r.events(TrackSubscribed)
    track = None
    participant = r.remote_participants.get(identity)
    if participant is not None:
        for publication in participant.track_publications.values():
            if publication.source is room.TrackSource.MICROPHONE and publication.track:
                track = publication.track
    if track is None:
        async for ev in events:
            assert isinstance(ev, TrackSubscribed)
            if (ev.participant.identity == identity
                    and ev.publication.source is room.TrackSource.MICROPHONE):
                track = ev.track
                break
    await events.aclose()
    assert track is not None
    written = 0
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        with anyio.move_on_after(seconds):
            async with room.AudioStream(track, sample_rate=sample_rate) as stream:
                async for frame in stream:
                    out.writeframes(frame.data)
                    written += frame.samples_per_channel
    return written


async def main(args: argparse.Namespace) -> None:
    async with room.Room.connect(args.url, args.token) as r:
        n = await record(r, args.identity, Path(args.output), seconds=args.seconds)
        print(f"wrote {n / 48000:.1f} s to {args.output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--identity", required=True, help="whose microphone")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("output")
    ns = parser.parse_args()
    anyio.run(main, ns, backend=ns.backend)
