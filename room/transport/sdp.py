"""What an SDP says about its media sections, read without aiortc (pure).

LiveKit names each track it sends a subscriber in the section's ``a=msid`` line: the
stream id is ``<participant sid>|<track sid>`` and the track id is the track sid. A
section whose direction no longer sends (or whose port is 0) carries no track.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MediaSection", "media_sections"]

_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


@dataclass(slots=True)
class MediaSection:
    """One ``m=`` section of an SDP, as far as tracks are concerned."""

    kind: str
    port: int
    mid: str | None = None
    direction: str = "sendrecv"
    stream_id: str = ""
    track_id: str = ""
    codecs: list[str] = field(default_factory=list)  # "opus/48000/2", "VP8/90000", ...

    @property
    def sends(self) -> bool:
        """Whether the side that wrote this SDP sends media in this section."""
        return self.port != 0 and self.direction in ("sendrecv", "sendonly")

    @property
    def codec_names(self) -> list[str]:
        """The codecs' names, lower case, without clock rate and channels."""
        return [c.split("/", 1)[0].lower() for c in self.codecs]


def media_sections(sdp: str) -> list[MediaSection]:
    """The audio and video sections of ``sdp``, in order. Malformed lines are skipped."""
    out: list[MediaSection] = []
    current: MediaSection | None = None
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            parts = line[2:].split()
            current = None
            if len(parts) >= 2 and parts[0] in ("audio", "video"):
                try:
                    port = int(parts[1].split("/", 1)[0])
                except ValueError:
                    port = 0
                current = MediaSection(kind=parts[0], port=port)
                out.append(current)
            continue
        if current is None or not line.startswith("a="):
            continue
        attr, _, value = line[2:].partition(":")
        if attr == "mid":
            current.mid = value.strip()
        elif attr in _DIRECTIONS:
            current.direction = attr
        elif attr == "msid":
            ids = value.split()
            if ids:
                current.stream_id = ids[0]
                current.track_id = ids[1] if len(ids) > 1 else ""
        elif attr == "rtpmap":
            _, _, codec = value.partition(" ")
            if codec:
                current.codecs.append(codec.strip())
    return out
