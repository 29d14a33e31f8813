"""What an SDP says about its media sections, read without aiortc (pure).

LiveKit names each track it sends a subscriber in the section's ``a=msid`` line: the
stream id is ``<participant sid>|<track sid>`` and the track id is the track sid. A
section whose direction no longer sends (or whose port is 0) carries no track.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DECODABLE", "MediaSection", "decline_undecodable", "media_sections", "undecodable"]

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


# What aiortc decodes (codec names as in rtpmap, lower case); rtx/red/ulpfec are not
# codecs of their own.
DECODABLE = {"audio": frozenset({"opus", "pcmu", "pcma", "g722"}),
             "video": frozenset({"vp8", "h264"})}
_NOT_MEDIA = frozenset({"rtx", "red", "ulpfec", "flexfec-03", "telephone-event", "cn"})


def undecodable(section: MediaSection) -> bool:
    """Whether an offered section sends media in no codec aiortc can decode."""
    names = set(section.codec_names) - _NOT_MEDIA
    return section.sends and not (names & DECODABLE.get(section.kind, frozenset()))


def decline_undecodable(sdp: str) -> tuple[str, list[MediaSection]]:
    """``sdp`` with each section that `undecodable` finds made inactive and given a codec
    aiortc knows (aiortc refuses a whole offer with a section it cannot decode; the
    answer then declines just that section), and the sections so declined."""
    sections = media_sections(sdp)
    declined = [s for s in sections if undecodable(s)]
    if not declined:
        return sdp, []
    out: list[str] = []
    queue = iter(sections)
    section: MediaSection | None = None
    rtpmap: str | None = None  # the stand-in codec, written before the section's first a=
    eol = "\r\n" if "\r\n" in sdp else "\n"
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            section = next(queue, None) if kind in ("audio", "video") else None
        if section is None or all(section is not d for d in declined):
            out.append(raw)
            continue
        if line.startswith("m="):
            parts = line.split()
            payload = parts[3] if len(parts) > 3 else "96"
            out.append(" ".join([*parts[:3], payload]))
            codec = "opus/48000/2" if section.kind == "audio" else "VP8/90000"
            rtpmap = f"a=rtpmap:{payload} {codec}"
            continue
        if line.startswith("a=") and rtpmap is not None:
            out.append(rtpmap)
            rtpmap = None
        attr = line[2:].split(":", 1)[0] if line.startswith("a=") else ""
        if attr in ("rtpmap", "fmtp", "rtcp-fb", "ssrc", "ssrc-group"):
            continue
        if attr in ("sendrecv", "sendonly"):
            out.append("a=inactive")
            continue
        out.append(raw)
    return eol.join(out) + eol, declined
