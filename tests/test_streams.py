"""Data streams: the UTF-8 splitter and reassembly on their own (a fake link between two
`StreamManager`s), then text and byte streams between real clients through the dev
server, on both backends."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from livekit.protocol import models

import room
from room.events import DataReceived, ParticipantDisconnected
from room.streams import (
    CHUNK_SIZE,
    DEFAULT_READER_BUFFER_BYTES,
    ByteStreamReader,
    StreamError,
    StreamManager,
    TextStreamReader,
    utf8_chunks,
)
from room.streams._readers import chunk_cost
from tests.helpers import client_tasks, known, next_event, wait_until
from tests.servers import Server

pytestmark = pytest.mark.anyio

MIXED = "é€😀a"  # 2-, 3-, 4- and 1-byte characters


# -- the UTF-8 splitter ------------------------------------------------------------------


@given(st.text(), st.integers(min_value=4, max_value=64))
def test_utf8_chunks_cut_only_between_characters(text: str, limit: int) -> None:
    data = text.encode()
    pieces = list(utf8_chunks(data, limit))
    assert b"".join(pieces) == data
    assert all(0 < len(p) <= limit for p in pieces)
    assert "".join(p.decode() for p in pieces) == text  # each piece decodes on its own


def test_utf8_chunks_back_off_from_a_character_straddling_the_limit() -> None:
    data = ("a" + "😀" * 10).encode()  # the limit (8) falls inside the second emoji
    assert [len(p) for p in utf8_chunks(data, 8)] == [5, 8, 8, 8, 8, 4]
    with pytest.raises(ValueError):
        list(utf8_chunks(data, 3))


# -- reassembly, without a network ----------------------------------------------------------


class Link:
    """Alice's manager sends straight into Bob's, as the server would relay it."""

    def __init__(self, reader_buffer: int | None = None,
                 reader_buffer_bytes: int = DEFAULT_READER_BUFFER_BYTES) -> None:
        self.sent: list[models.DataPacket] = []
        self.tx = StreamManager(send_packet=self._deliver, local_identity=lambda: "alice")
        self.rx = StreamManager(send_packet=self._nowhere, local_identity=lambda: "bob",
                                reader_buffer=reader_buffer,
                                reader_buffer_bytes=reader_buffer_bytes)

    async def _deliver(self, packet: models.DataPacket) -> None:
        self.sent.append(packet)
        self.rx.handle_packet(packet, "alice")

    async def _nowhere(self, packet: models.DataPacket) -> None:
        raise AssertionError("bob sends nothing")

    def feed(self, *packets: models.DataPacket, sender: str = "alice") -> None:
        for packet in packets:
            self.rx.handle_packet(packet, sender)


def header(stream_id: str = "s", *, topic: str = "t", total: int | None = None,
           text: bool = True, **fields: object) -> models.DataPacket:
    h = models.DataStream.Header(stream_id=stream_id, topic=topic, timestamp=1,
                                 **fields)  # type: ignore[arg-type]
    if total is not None:
        h.total_length = total
    if text:
        h.text_header.SetInParent()
    else:
        h.byte_header.name = "f.bin"
    return models.DataPacket(stream_header=h)


def chunk(index: int, content: bytes, stream_id: str = "s") -> models.DataPacket:
    return models.DataPacket(stream_chunk=models.DataStream.Chunk(
        stream_id=stream_id, chunk_index=index, content=content))


def trailer(reason: str = "", stream_id: str = "s", **attributes: str) -> models.DataPacket:
    return models.DataPacket(stream_trailer=models.DataStream.Trailer(
        stream_id=stream_id, reason=reason, attributes=attributes))


async def test_send_text_reassembles_with_header_fields_and_chunk_bounds() -> None:
    link = Link()
    sub = link.rx.text_streams("chat")
    text = "x" + MIXED * 4000  # 40 kB, characters straddling every 15,000-byte mark
    stream_id = await link.tx.send_text(text, topic="chat", attributes={"k": "v"})
    kinds = [p.WhichOneof("value") for p in link.sent]
    assert kinds == ["stream_header"] + ["stream_chunk"] * 3 + ["stream_trailer"]
    h = link.sent[0].stream_header
    assert (h.mime_type, h.total_length, h.topic) == ("text/plain", len(text.encode()), "chat")
    assert h.text_header.operation_type == models.DataStream.OperationType.CREATE
    assert all(len(p.stream_chunk.content) <= CHUNK_SIZE for p in link.sent[1:4])
    assert [p.stream_chunk.chunk_index for p in link.sent[1:4]] == [0, 1, 2]
    reader = await sub.__anext__()
    assert reader.info.stream_id == stream_id
    assert reader.info.sender_identity == "alice"
    assert reader.info.attributes == {"k": "v"}
    assert await reader.read_all() == text


async def test_characters_split_across_chunks_by_another_sender_decode_whole() -> None:
    link = Link()
    sub = link.rx.text_streams("t")
    data = MIXED.encode()
    link.feed(header(total=len(data)), *(chunk(i, data[i:i + 1]) for i in range(len(data))),
              trailer())
    reader = await sub.__anext__()
    assert [c async for c in reader] == list(MIXED)


async def test_trailer_attributes_join_the_info() -> None:
    link = Link()
    sub = link.rx.text_streams("t")
    link.feed(header(attributes={"a": "1", "b": "2"}), chunk(0, b"hi"), trailer(b="3", c="4"))
    reader = await sub.__anext__()
    assert await reader.read_all() == "hi"
    assert reader.info.attributes == {"a": "1", "b": "3", "c": "4"}


async def test_a_missing_chunk_ends_the_reader_with_an_error_after_what_arrived() -> None:
    link = Link()
    sub = link.rx.byte_streams("t")
    link.feed(header(text=False), chunk(0, b"ab"), chunk(2, b"ef"), chunk(3, b"gh"))
    reader = await sub.__anext__()
    assert await reader.__anext__() == b"ab"
    with pytest.raises(StreamError, match="chunk 1 went missing"):
        await reader.__anext__()
    with pytest.raises(StreamError):  # and it keeps saying so
        await reader.read_all()


@pytest.mark.parametrize(("packets", "message"), [
    ([chunk(0, b"abc"), trailer("user gave up")], "the sender ended the stream: user gave up"),
    ([chunk(0, b"abc"), trailer()], "after 3 of the announced 4 bytes"),
    ([chunk(0, b"abcde")], "more than the announced 4 bytes"),
])
async def test_incomplete_streams_raise(packets: list[models.DataPacket], message: str) -> None:
    link = Link()
    sub = link.rx.byte_streams("t")
    link.feed(header(total=4, text=False), *packets)
    reader = await sub.__anext__()
    with pytest.raises(StreamError, match=message):
        await reader.read_all()


async def test_invalid_utf8_raises() -> None:
    link = Link()
    sub = link.rx.text_streams("t")
    link.feed(header(), chunk(0, b"ok\xff"), trailer(), header("s2"), chunk(0, b"\xe2\x82",
              "s2"), trailer(stream_id="s2"))
    with pytest.raises(StreamError, match="not valid UTF-8"):
        await (await sub.__anext__()).read_all()
    with pytest.raises(StreamError, match="middle of a UTF-8 character"):
        await (await sub.__anext__()).read_all()


async def test_sender_leaving_or_room_closing_ends_open_streams_with_errors() -> None:
    link = Link()
    sub = link.rx.text_streams("t")
    link.feed(header("a"), chunk(0, b"one", "a"))
    link.feed(header("c"), sender="carol")
    link.rx.participant_left("alice")
    first = await sub.__anext__()
    assert await first.__anext__() == "one"
    with pytest.raises(StreamError, match="alice left"):
        await first.__anext__()
    link.rx.close()
    with pytest.raises(StreamError, match="room closed"):
        await (await sub.__anext__()).read_all()
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()
    assert [r async for r in link.rx.text_streams("t")] == []  # subscribing late: empty


async def test_packets_from_someone_else_do_not_touch_a_stream() -> None:
    link = Link()
    sub = link.rx.text_streams("t")
    link.feed(header(), chunk(0, b"a"))
    link.feed(chunk(1, b"EVIL"), trailer("x"), sender="mallory")
    link.feed(chunk(1, b"b"), trailer())
    assert await (await sub.__anext__()).read_all() == "ab"


async def test_streams_without_a_subscriber_are_ignored() -> None:
    link = Link()
    texts, files = link.rx.text_streams("wanted"), link.rx.byte_streams("wanted")
    link.feed(header("1", topic="other"), chunk(0, b"x", "1"), trailer(stream_id="1"))
    link.feed(header("2", topic="wanted", text=False), trailer(stream_id="2"))
    link.feed(header("3", topic="wanted"), chunk(0, b"yes", "3"), trailer(stream_id="3"))
    reader = await texts.__anext__()
    assert (reader.info.stream_id, await reader.read_all()) == ("3", "yes")
    assert (await files.__anext__()).info.stream_id == "2"
    assert not link.rx._open


async def test_every_subscriber_gets_its_own_reader() -> None:
    link = Link()
    one, two = link.rx.text_streams("t"), link.rx.text_streams("t")
    await link.tx.send_text("hello", topic="t")
    r1, r2 = await one.__anext__(), await two.__anext__()
    assert r1 is not r2
    assert await r1.read_all() == await r2.read_all() == "hello"


async def test_a_reader_that_falls_behind_is_cut_off_without_blocking() -> None:
    link = Link(reader_buffer=3)
    slow, fast = link.rx.byte_streams("t"), link.rx.byte_streams("t")
    link.feed(header(text=False))
    slow_reader, fast_reader = await slow.__anext__(), await fast.__anext__()
    got: list[bytes] = []
    for i in range(6):
        link.feed(chunk(i, bytes([i])))
        got.append(await fast_reader.__anext__())
    link.feed(trailer())
    assert await fast_reader.read_all() == b""
    assert got == [bytes([i]) for i in range(6)]
    assert [await slow_reader.__anext__() for _ in range(3)] == [b"\0", b"\1", b"\2"]
    with pytest.raises(StreamError, match="fell more than 3 chunks behind"):
        await slow_reader.__anext__()


async def test_a_reader_is_bounded_by_bytes_and_keeps_what_fit() -> None:
    cost = chunk_cost(bytes(1000))
    link = Link(reader_buffer_bytes=5 * cost)
    slow, fast = link.rx.byte_streams("t"), link.rx.byte_streams("t")
    link.feed(header(text=False))
    slow_reader, fast_reader = await slow.__anext__(), await fast.__anext__()
    for i in range(8):
        link.feed(chunk(i, bytes([i]) * 1000))
        assert slow_reader.statistics().bytes <= 5 * cost
        assert await fast_reader.__anext__() == bytes([i]) * 1000
    link.feed(trailer())
    assert await fast_reader.read_all() == b""
    stats = slow_reader.statistics()
    assert stats.overflowed and (stats.items, stats.peak_bytes) == (5, 5 * cost)
    assert [await slow_reader.__anext__() for _ in range(5)] == [
        bytes([i]) * 1000 for i in range(5)]
    with pytest.raises(StreamError, match=f"fell more than {5 * cost:,} bytes behind"):
        await slow_reader.__anext__()


async def test_a_busy_reader_holds_a_long_stream_by_default() -> None:
    """400 chunks (6 MB) wait for a reader that reads nothing until the trailer: the
    former limit, 256 chunks, cut such a reader off; the default byte budget does not."""
    link = Link()
    sub = link.rx.byte_streams("t")
    link.feed(header(text=False))
    reader = await sub.__anext__()
    for i in range(400):
        link.feed(chunk(i, bytes([i % 256]) * CHUNK_SIZE))
    link.feed(trailer())
    stats = reader.statistics()
    assert (stats.items, stats.overflowed) == (400, False)
    assert stats.bytes == 400 * chunk_cost(bytes(CHUNK_SIZE)) <= DEFAULT_READER_BUFFER_BYTES
    assert await reader.read_all() == b"".join(bytes([i % 256]) * CHUNK_SIZE
                                               for i in range(400))


def test_reader_limits_are_checked() -> None:
    mgr = StreamManager(send_packet=Link()._nowhere, local_identity=lambda: "bob")
    assert (mgr.reader_buffer, mgr.reader_buffer_bytes) == (None, DEFAULT_READER_BUFFER_BYTES)
    for name, bad in [("reader_buffer", 0), ("reader_buffer_bytes", None),
                      ("reader_buffer_bytes", 1.5), ("pending_streams", 0)]:
        with pytest.raises(ValueError, match=name):
            setattr(mgr, name, bad)


async def test_a_subscription_nobody_iterates_is_cut_off() -> None:
    mgr = StreamManager(send_packet=Link()._nowhere, local_identity=lambda: "bob",
                        pending_streams=2)
    sub = mgr.text_streams("t")
    for i in range(4):
        mgr.handle_packet(header(str(i)), "alice")
    assert [r.info.stream_id for r in [await sub.__anext__(), await sub.__anext__()]] == [
        "0", "1"]
    with pytest.raises(StreamError, match="unclaimed"):
        await sub.__anext__()
    mgr.close()


async def test_closed_and_dropped_readers_stop_receiving() -> None:
    link = Link()
    sub = link.rx.byte_streams("t")
    link.feed(header(text=False))
    reader = await sub.__anext__()
    await reader.aclose()
    link.feed(chunk(0, b"x"))
    assert not link.rx._open  # nobody left to feed
    with pytest.raises(StreamError, match="closed before the stream ended"):
        await reader.__anext__()


async def test_compressed_and_inline_streams_are_understood() -> None:
    link = Link()
    sub = link.rx.text_streams("t")
    text = (MIXED * 20_000).encode()
    packed = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    deflated = packed.compress(text) + packed.flush()
    deflate = models.DataStream.CompressionType.DEFLATE_RAW
    link.feed(header("z", total=len(text), compression=deflate),
              *(chunk(i, deflated[o:o + 1000], "z")
                for i, o in enumerate(range(0, len(deflated), 1000))),
              trailer(stream_id="z"))
    link.feed(header("i", inline_content=b"inline \xf0\x9f\x98\x80"))
    zipped = await sub.__anext__()
    pieces = [p async for p in zipped]
    assert "".join(pieces).encode() == text
    assert max(len(p.encode()) for p in pieces) <= CHUNK_SIZE + 3
    assert await (await sub.__anext__()).read_all() == "inline 😀"


async def test_encrypted_streams_are_refused_clearly() -> None:
    link = Link()
    sub = link.rx.text_streams("t")
    link.feed(header(encryption_type=models.Encryption.Type.GCM), chunk(0, b"?"))
    with pytest.raises(StreamError, match="encrypted"):
        await (await sub.__anext__()).read_all()


async def test_writer_block_raising_sends_an_abort_trailer_and_reraises() -> None:
    link = Link()
    sub = link.rx.text_streams("t")
    with pytest.raises(KeyError):
        async with link.tx.stream_text(topic="t") as writer:
            await writer.write("partial")
            raise KeyError("private detail")
    end = link.sent[-1].stream_trailer
    assert end.reason == "the sender aborted the stream (KeyError)"
    reader = await sub.__anext__()
    assert await reader.__anext__() == "partial"
    with pytest.raises(StreamError, match="aborted"):
        await reader.__anext__()
    with pytest.raises(RuntimeError, match="closed"):
        await writer.write("more")


async def test_cancelled_writer_aborts_and_a_cancelled_send_breaks_the_stream() -> None:
    gate = anyio.Event()
    sent: list[models.DataPacket] = []

    async def slow_send(packet: models.DataPacket) -> None:
        if packet.WhichOneof("value") == "stream_chunk" and not gate.is_set():
            gate.set()
            await anyio.sleep_forever()
        sent.append(packet)

    mgr = StreamManager(send_packet=slow_send, local_identity=lambda: "alice")
    with anyio.move_on_after(0.2):
        async with mgr.stream_bytes(topic="t") as writer:
            await writer.write(b"stuck")
    assert [p.WhichOneof("value") for p in sent] == ["stream_header", "stream_trailer"]
    assert sent[-1].stream_trailer.reason == "the sender cancelled the stream"
    assert writer._broken


async def test_byte_stream_total_length_is_enforced_by_the_writer() -> None:
    link = Link()
    sub = link.rx.byte_streams("t")
    with pytest.raises(ValueError, match="exceed"):
        async with link.tx.stream_bytes(topic="t", total_length=4) as writer:
            await writer.write(b"abc")
            await writer.write(b"de")
    with pytest.raises(ValueError, match="only 3 of the announced 4"):
        async with link.tx.stream_bytes(topic="t", total_length=4) as writer:
            await writer.write(b"abc")
    for _ in range(2):
        with pytest.raises(StreamError):
            await (await sub.__anext__()).read_all()


async def test_bad_arguments_raise_before_anything_is_sent(tmp_path: Path) -> None:
    link = Link()
    tx = link.tx
    with pytest.raises(TypeError):
        await tx.send_text(b"bytes", topic="t")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await tx.send_text("x", topic=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await tx.send_text("x", topic="t", destination_identities="bob")
    with pytest.raises(TypeError):
        await tx.send_text("x", topic="t", attributes={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        tx.stream_bytes(topic="t", name=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        tx.stream_bytes(topic="t", total_length=-1)
    with pytest.raises(TypeError):
        tx.stream_bytes(topic="t", total_length=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        link.rx.text_streams(7)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        await tx.send_file(tmp_path / "missing", topic="t")
    with pytest.raises(IsADirectoryError):
        await tx.send_file(tmp_path, topic="t")
    with pytest.raises(TypeError):
        await tx.send_file(3, topic="t")  # type: ignore[arg-type]
    async with tx.stream_bytes(topic="t") as writer:
        with pytest.raises(TypeError):
            await writer.write("text")  # type: ignore[arg-type]
    async with tx.stream_text(topic="t") as text_writer:
        with pytest.raises(TypeError):
            await text_writer.write(b"bytes")  # type: ignore[arg-type]
    assert [p.WhichOneof("value") for p in link.sent] == [
        "stream_header", "stream_trailer"] * 2
    tx.close()
    with pytest.raises(room.ConnectionClosedError):
        await tx.send_text("late", topic="t")


# -- between real clients ------------------------------------------------------------------


async def test_send_text_round_trip(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as a, \
            srv.connect("bob") as b:
        streams = b.text_streams("chat")
        text = "x" + MIXED * 4000  # 40,001 characters, 40 kB of UTF-8 in three chunks
        with anyio.fail_after(10):
            sid = await a.local_participant.send_text(
                text, topic="chat", attributes={"lang": "fr"})
            reader = await streams.__anext__()
            chunks = [c async for c in reader]
        assert "".join(chunks) == text
        assert len(chunks) == 3 and all(len(c.encode()) <= CHUNK_SIZE for c in chunks)
        info = reader.info
        assert (info.stream_id, info.topic, info.sender_identity) == (sid, "chat", "alice")
        assert (info.mime_type, info.total_length) == ("text/plain", len(text.encode()))
        assert info.attributes == {"lang": "fr"}
    assert client_tasks() == []


async def test_topics_and_kinds_are_kept_apart(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as a, \
            srv.connect("bob") as b:
        me = a.local_participant
        red, blue, red_files = b.text_streams("red"), b.text_streams("blue"), \
            b.byte_streams("red")
        with anyio.fail_after(10):
            await me.send_text("to nobody", topic="green")
            await me.send_text("b1", topic="blue")
            async with me.stream_bytes(topic="red", name="r.bin") as w:
                await w.write(b"\x00\x01")
            await me.send_text("r1", topic="red")
            assert await (await red.__anext__()).read_all() == "r1"
            assert await (await blue.__anext__()).read_all() == "b1"
            assert await (await red_files.__anext__()).read_all() == b"\x00\x01"


async def test_destination_identities(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as a, \
            srv.connect("bob") as b, \
            srv.connect("carol") as c:
        bobs, carols = b.text_streams("t"), c.text_streams("t")
        with anyio.fail_after(10):
            await a.local_participant.send_text("for bob", topic="t",
                                                destination_identities=["bob"])
            await a.local_participant.send_text("for all", topic="t")
            assert await (await bobs.__anext__()).read_all() == "for bob"
            assert await (await bobs.__anext__()).read_all() == "for all"
            assert await (await carols.__anext__()).read_all() == "for all"


async def test_stream_text_with_several_writes(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as a, \
            srv.connect("bob") as b:
        streams = b.text_streams("llm")
        parts = ["Hel", "lo ", MIXED * 5000, "!"]
        with anyio.fail_after(10):
            async with a.local_participant.stream_text(
                    topic="llm", attributes={"model": "m"}) as writer:
                for part in parts:
                    await writer.write(part)
            reader = await streams.__anext__()
            assert await reader.read_all() == "".join(parts)
        assert reader.info.total_length is None
        assert reader.info.stream_id == writer.info.stream_id
        assert reader.info.attributes == {"model": "m"}


async def test_stream_bytes_with_total_length(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as a, \
            srv.connect("bob") as b:
        streams = b.byte_streams("img")
        data = os.urandom(40_000)
        with anyio.fail_after(10):
            async with a.local_participant.stream_bytes(
                    topic="img", name="cat.png", mime_type="image/png",
                    total_length=len(data)) as writer:
                await writer.write(data[:100])
                await writer.write(memoryview(data)[100:])
            reader = await streams.__anext__()
            assert await reader.read_all() == data
        info = reader.info
        assert (info.name, info.mime_type, info.total_length) == ("cat.png", "image/png",
                                                                  len(data))


def _file_chunks(path: Path, size: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(size):
            yield block


async def test_send_file_of_five_megabytes(server: Server, tmp_path: Path) -> None:
    srv = server
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom(5 * 1024 * 1024))
    async with srv.connect("alice") as a, \
            srv.connect("bob") as b:
        # Default options: the reader iterates as chunks arrive; livekit-server's bursts,
        # which a reader sharing two cores with it can trail by more than 32 chunks, fit
        # the default byte budget.
        streams = b.byte_streams("files")
        expected = _file_chunks(path, CHUNK_SIZE)
        sizes: list[int] = []

        async def receive() -> None:
            reader = await streams.__anext__()
            assert (reader.info.name, reader.info.mime_type) == (
                "payload.bin", "application/octet-stream")
            assert reader.info.total_length == 5 * 1024 * 1024
            async for block in reader:
                assert block == next(expected)
                sizes.append(len(block))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                await a.local_participant.send_file(path, topic="files")
        assert sum(sizes) == 5 * 1024 * 1024 and max(sizes) == CHUNK_SIZE
        assert next(expected, None) is None


async def test_a_reader_busy_until_a_whole_file_arrived_still_gets_all_of_it(
        server: Server) -> None:
    """5 MiB (350 chunks) wait for a reader that reads nothing for a second and on until
    the stream has ended: the former limit, 256 chunks, cut it off; the default byte
    budget holds it."""
    srv = server
    data = os.urandom(5 * 1024 * 1024)
    chunks = -(-len(data) // CHUNK_SIZE)
    async with srv.connect("alice") as a, \
            srv.connect("bob") as b:
        streams = b.byte_streams("files")
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:

                async def send() -> None:
                    async with a.local_participant.stream_bytes(
                            topic="files", total_length=len(data)) as writer:
                        await writer.write(data)

                tg.start_soon(send)
                reader = await streams.__anext__()
                await anyio.sleep(1.0)  # busy
                await wait_until(lambda: reader.statistics().items >= chunks, timeout=80)
            stats = reader.statistics()
            assert await reader.read_all() == data
        assert stats.items == chunks > 256 and not stats.overflowed
        budget = room.RoomOptions().stream_buffer_bytes
        assert stats.max_bytes == budget and stats.peak_bytes <= budget


async def test_send_file_guesses_the_mime_type(server: Server,
                                               tmp_path: Path) -> None:
    srv = server
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    async with srv.connect("alice") as a, \
            srv.connect("bob") as b:
        streams = b.byte_streams("files")
        with anyio.fail_after(10):
            await a.local_participant.send_file(str(path), topic="files",
                                                attributes={"k": "v"})
            reader = await streams.__anext__()
            assert await reader.read_all() == b"hello"
        assert (reader.info.mime_type, reader.info.attributes) == ("text/plain", {"k": "v"})
        assert reader.info.name == "notes.txt"


async def test_sender_leaving_mid_stream_ends_the_reader(server: Server) -> None:
    srv = server
    async with srv.connect("bob") as b:
        streams = b.byte_streams("t")
        left = b.events(ParticipantDisconnected)
        first_chunk = anyio.Event()
        async with srv.connect("alice") as a:
            await known(b, "alice")  # else her departure may never be announced to bob
            # Alice's trailer cannot go out any more: her stream ends with an error too.
            with anyio.fail_after(10), pytest.raises(room.ConnectionClosedError):
                async with a.local_participant.stream_bytes(topic="t") as writer:
                    await writer.write(b"first")
                    reader = await streams.__anext__()
                    assert await reader.__anext__() == b"first"
                    first_chunk.set()
                    await srv.remove_participant("r", "alice")
                    await next_event(left, ParticipantDisconnected,
                                     timeout=srv.presence_delay + 2)
        with anyio.fail_after(2), pytest.raises(StreamError, match="alice left"):
            await reader.__anext__()
    assert first_chunk.is_set()


async def test_aborted_writer_ends_the_reader_with_an_error(server: Server) -> None:
    srv = server
    async with srv.connect("alice") as a, \
            srv.connect("bob") as b:
        streams = b.text_streams("t")
        with pytest.raises(RuntimeError, match="boom"):
            async with a.local_participant.stream_text(topic="t") as writer:
                await writer.write("so far")
                raise RuntimeError("boom")
        with anyio.fail_after(10):
            reader = await streams.__anext__()
            assert await reader.__anext__() == "so far"
            with pytest.raises(StreamError, match=r"aborted the stream \(RuntimeError\)"):
                await reader.__anext__()


async def test_an_unread_reader_does_not_stall_the_room(server: Server) -> None:
    srv = server
    budget = 100_000  # six full chunks fit, the seventh does not
    async with srv.connect("alice") as a, \
            srv.connect("bob", options=room.RoomOptions(stream_buffer_bytes=budget)) as b:
        streams, other = b.byte_streams("big"), b.byte_streams("big")
        data = b.events(DataReceived)
        with anyio.fail_after(20):
            await a.local_participant.send_text("ignored: other kind", topic="big")
            other_reader: ByteStreamReader | None = None
            async with a.local_participant.stream_bytes(topic="big") as writer:
                payload = os.urandom(20 * CHUNK_SIZE)
                for start in range(0, len(payload), CHUNK_SIZE):
                    await writer.write(payload[start:start + CHUNK_SIZE])
                    if other_reader is None:
                        other_reader = await other.__anext__()
                    # The other reader keeps up (its buffer stays within the same budget).
                    assert await other_reader.__anext__() == payload[start:start + CHUNK_SIZE]
            await a.local_participant.publish_data(b"after", topic="x")
            ev = await next_event(data, DataReceived)
            assert ev.packet.data == b"after"
            reader = await streams.__anext__()  # claimed only now, never read meanwhile
            stats = reader.statistics()
            assert stats.overflowed and stats.items == 6 and stats.peak_bytes <= budget
            assert b"".join([await reader.__anext__() for _ in range(6)]) == payload[
                :6 * CHUNK_SIZE]
            with pytest.raises(StreamError, match="bytes behind"):
                await reader.__anext__()
            assert other_reader is not None and await other_reader.read_all() == b""


async def test_room_closing_ends_stream_iterators_and_open_readers(
        server: Server) -> None:
    srv = server
    async with srv.connect("alice") as a, \
            srv.connect("bob") as b:
        texts = b.text_streams("t")
        iterated: list[ByteStreamReader] = []

        async def collect_files() -> None:
            async for r in b.byte_streams("t"):
                iterated.append(r)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect_files)
                async with a.local_participant.stream_text(topic="t") as writer:
                    await writer.write("half")
                    reader: TextStreamReader = await texts.__anext__()
                    assert await reader.__anext__() == "half"
                    await b.disconnect()
                with pytest.raises(StreamError, match="room closed"):
                    await reader.__anext__()
                assert [r async for r in texts] == []
        assert iterated == []
    assert client_tasks() == []
