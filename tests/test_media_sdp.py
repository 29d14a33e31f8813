"""Offers with media this client cannot decode: declined m-line by m-line, never the whole
offer (pure SDP handling, and aiortc taking the result)."""

from __future__ import annotations

import anyio
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from room.transport.aio import aiortc_loop
from room.transport.media import TrackSink
from room.transport.peer import Peer
from room.transport.sdp import MediaSection, decline_undecodable, media_sections

pytestmark = pytest.mark.anyio


async def _offer_sdp() -> str:
    """An aiortc offer with an audio, a video and a data m-line, LiveKit-style msids."""
    pc = RTCPeerConnection()
    try:
        for track, sid in ((AudioStreamTrack(), "TR_audio"), (VideoStreamTrack(), "TR_video")):
            track._id = sid
            t = pc.addTransceiver(track, direction="sendonly")
            t.sender._stream_id = f"PA_x|{sid}"
        pc.createDataChannel("_reliable")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def _answer(offer: str) -> tuple[str, list[MediaSection], list[tuple[str, bool]]]:
    declined: list[MediaSection] = []
    tracks: list[tuple[str, bool]] = []

    def on_track(sink: TrackSink, started: bool) -> None:
        tracks.append((sink.track_sid, started))

    async def run() -> str:
        peer = Peer(name="test", on_track=on_track, on_undecodable=declined.append)
        try:
            return await peer.answer(offer)
        finally:
            await peer.close()

    answer = await aiortc_loop().run(run)
    return answer, declined, tracks


async def test_sections_name_their_tracks() -> None:
    offer = await aiortc_loop().run(_offer_sdp)
    sections = media_sections(offer)
    assert [(s.kind, s.stream_id, s.track_id, s.sends) for s in sections] == [
        ("audio", "PA_x|TR_audio", "TR_audio", True),
        ("video", "PA_x|TR_video", "TR_video", True)]
    assert "opus" in sections[0].codec_names and "vp8" in sections[1].codec_names
    assert decline_undecodable(offer) == (offer, [])


async def test_an_undecodable_video_m_line_is_declined_and_the_rest_taken() -> None:
    offer = (await aiortc_loop().run(_offer_sdp)).replace("VP8/90000", "VP9/90000")
    offer = offer.replace("H264/90000", "AV1/90000")
    answer, declined, tracks = await _answer(offer)
    assert [(s.kind, s.track_id) for s in declined] == [("video", "TR_video")]
    answered = media_sections(answer)
    assert [(s.kind, s.direction) for s in answered] == [("audio", "recvonly"),
                                                         ("video", "inactive")]
    assert "m=application" in answer  # the data channels are untouched
    assert tracks == [("TR_audio", True), ("TR_audio", False)]  # started; closed


async def test_an_offer_of_only_undecodable_media_still_gets_an_answer() -> None:
    offer = (await aiortc_loop().run(_offer_sdp)).replace("opus/48000/2", "lyra/16000")
    offer = offer.replace("VP8/90000", "VP9/90000").replace("H264/90000", "H265/90000")
    offer = offer.replace("PCMU/8000", "X1/8000").replace("PCMA/8000", "X2/8000")
    offer = offer.replace("G722/8000", "X3/8000")
    answer, declined, tracks = await _answer(offer)
    assert sorted(s.kind for s in declined) == ["audio", "video"]
    assert all(s.direction == "inactive" for s in media_sections(answer))
    assert tracks == []
    with anyio.fail_after(1):
        await anyio.lowlevel.checkpoint()
