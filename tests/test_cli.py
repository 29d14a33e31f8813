"""The command line, ``python -m room``, run as a user runs it: in a subprocess.

Long-running verbs (``serve``, ``join``) are started with `anyio.open_process` so the test
can act on a room while it reads their output line by line; every child is killed in a
``finally`` and every wait is bounded.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from pathlib import Path

import anyio
import jwt
import pytest
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream
from livekit.protocol import models

import room
from room.cli import format_event, main
from room.devserver.auth import AuthError, mint_token, verify_token
from room.events import (
    Disconnected,
    ParticipantAttributesChanged,
    ParticipantMetadataChanged,
    ParticipantNameChanged,
    RoomMetadataChanged,
)
from room.participant import RemoteParticipant
from room.types import DisconnectReason
from tests.servers import Server

_REPO = Path(__file__).resolve().parent.parent
_KEYS = {"devkey": "secret"}
# Generous: a child interpreter has to start and import everything first.
_LINE_TIMEOUT = 20.0

posix_signals = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "room", *args]


def _run(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (or kill it after ``timeout`` seconds and fail)."""
    proc = subprocess.Popen(_cmd(*args), cwd=_REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


class _Child:
    """A running CLI process whose stdout the test reads line by line."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None and process.stderr is not None
        self.process = process
        self.lines: list[str] = []
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self._stderr = process.stderr

    async def expect(self, *needles: str, timeout: float = _LINE_TIMEOUT) -> str:
        """Read stdout until a line contains every one of ``needles``; return that line."""
        with anyio.fail_after(timeout):
            while True:
                try:
                    raw = await self._stdout.receive_until(b"\n", 1 << 16)
                except (anyio.IncompleteRead, anyio.EndOfStream):
                    stderr = await _read_all(self._stderr)
                    pytest.fail(f"the CLI ended before printing {needles}; stdout so far:\n"
                                + "\n".join(self.lines) + f"\nstderr:\n{stderr}")
                line = raw.decode().rstrip("\r")
                self.lines.append(line)
                if all(n in line for n in needles):
                    return line

    async def finish(self, timeout: float = _LINE_TIMEOUT) -> tuple[int, str, str]:
        """Wait for the exit; (exit code, the rest of stdout, all of stderr)."""
        with anyio.fail_after(timeout):
            rest = bytes(self._stdout.buffer).decode() + await _read_all(self._stdout)
            stderr = await _read_all(self._stderr)
            code = await self.process.wait()
        self.lines += rest.splitlines()
        return code, rest, stderr


async def _read_all(stream: ByteReceiveStream) -> str:
    chunks = []
    with suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        while True:
            chunks.append(await stream.receive())
    return b"".join(chunks).decode()


@asynccontextmanager
async def _cli(*args: str) -> AsyncIterator[_Child]:
    process = await anyio.open_process(_cmd(*args), cwd=_REPO, stdin=subprocess.DEVNULL)
    try:
        yield _Child(process)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with suppress(ProcessLookupError):
                    process.kill()
            with anyio.move_on_after(10):
                await process.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- help and token ------------------------------------------------------------------------


def test_help_lists_every_verb() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    for verb in ("serve", "token", "join", "demo"):
        assert verb in result.stdout


def test_no_verb_is_a_usage_error() -> None:
    result = _run()
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_token_is_a_jwt_verify_token_accepts_with_the_asked_grants() -> None:
    result = _run("token", "--identity", "alice", "--room", "lobby", "--name", "Alice",
                  "--metadata", '{"a": 1}', "--attribute", "team=blue",
                  "--attribute", "eq=x=y", "--ttl", "120", "--hidden", "--no-publish",
                  "--no-subscribe", "--no-publish-data", "--no-update-metadata")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    grants = verify_token(token, _KEYS)
    assert grants.identity == "alice"
    assert grants.room == "lobby"
    assert grants.name == "Alice"
    assert grants.metadata == '{"a": 1}'
    assert dict(grants.attributes) == {"team": "blue", "eq": "x=y"}
    assert grants.hidden
    assert not grants.can_publish
    assert not grants.can_subscribe
    assert not grants.can_publish_data
    assert not grants.can_update_own_metadata
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == "devkey"
    assert claims["exp"] - claims["nbf"] == 120


def test_token_defaults_allow_everything_a_participant_does() -> None:
    result = _run("token", "--identity", "bob", "--room", "lobby")
    assert result.returncode == 0, result.stderr
    grants = verify_token(result.stdout.strip(), _KEYS)
    assert grants.identity == "bob" and grants.room == "lobby"
    assert grants.can_publish and grants.can_subscribe and grants.can_publish_data
    assert grants.can_update_own_metadata
    assert not grants.hidden


def test_token_is_signed_with_the_given_key_and_secret() -> None:
    result = _run("token", "--identity", "bob", "--room", "r",
                  "--api-key", "mykey", "--api-secret", "a-longer-secret")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert verify_token(token, {"mykey": "a-longer-secret"}).identity == "bob"
    with pytest.raises(AuthError):
        verify_token(token, _KEYS)


def test_token_rejects_an_attribute_without_equals_sign() -> None:
    result = _run("token", "--identity", "bob", "--room", "r", "--attribute", "oops")
    assert result.returncode == 2
    assert "KEY=VALUE" in result.stderr


def test_main_returns_the_exit_code_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--identity", "carol", "--room", "r"]) == 0
    assert verify_token(capsys.readouterr().out.strip(), _KEYS).identity == "carol"


# -- demo ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_fast_runs_the_conversation_and_exits_0(backend: str) -> None:
    result = _run("demo", "--fast", "--backend", backend, timeout=30.0)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout
    lines = out.splitlines()

    def has(*needles: str) -> bool:
        return any(all(n in line for n in needles) for line in lines)

    assert has("ParticipantConnected", "bob")
    assert has("ParticipantNameChanged", "bob", "'' -> 'Bob'")
    assert has("ParticipantMetadataChanged", "bob", "->")
    assert has("ParticipantAttributesChanged", "bob", "says=")
    assert has("RoomMetadataChanged", "->")
    assert has("TrackSubscribed", "bob", "'tone' AUDIO MICROPHONE")
    assert has("TrackUnpublished", "bob", "'tone'")
    heard = [line for line in lines if "alice hears" in line]
    assert len(heard) == 1, out
    assert 430 <= int(heard[0].split("hears ")[1].split(" Hz")[0]) <= 450, heard
    assert has("ParticipantDisconnected", "carol", "PARTICIPANT_REMOVED")
    assert has("ParticipantDisconnected", "bob", "CLIENT_INITIATED")
    assert lines[-2:] == [lines[-2], "done"] and "Disconnected" in lines[-2]


@posix_signals
@pytest.mark.anyio
async def test_demo_stops_cleanly_on_ctrl_c(anyio_backend: str) -> None:
    async with _cli("demo", "--backend", anyio_backend) as child:
        await child.expect("ParticipantConnected", "bob")
        child.process.send_signal(signal.SIGINT)
        code, rest, err = await child.finish()
    assert code in (0, 130)
    assert "interrupted" in rest
    assert "Traceback" not in err


# -- join ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_join_prints_the_room_then_each_event_another_client_causes(
    server: Server, anyio_backend: str,
) -> None:
    early = server.token("early", room="hall", name="Early Bird")
    async with room.Room.connect(server.url, early, options=server.options()):
        watcher = server.token("watcher", room="hall")
        async with _cli("join", server.url, "--token", watcher, *server.cli_join_args(),
                        "--backend", anyio_backend) as child:
            await child.expect("joined room 'hall' as 'watcher'")
            await child.expect("early", "name='Early Bird'")

            async with server.connect("bob", room="hall") as bob:
                await child.expect("ParticipantConnected", "bob")
                await bob.local_participant.set_name("Bob")
                await child.expect("ParticipantNameChanged", "bob", "'' -> 'Bob'")
                await bob.local_participant.set_metadata("hungry")
                await child.expect("ParticipantMetadataChanged", "bob", "'' -> 'hungry'")
                await bob.local_participant.set_attributes({"mood": "calm"})
                await child.expect("ParticipantAttributesChanged", "bob", "mood='calm'")
                await server.update_room_metadata("hall", "quiet please")
                await child.expect("RoomMetadataChanged", "'' -> 'quiet please'")
            await child.expect("ParticipantDisconnected", "bob", "CLIENT_INITIATED")

            # Being removed ends the event stream, and with it the command, with success.
            await server.remove_participant("hall", "watcher")
            code, rest, stderr = await child.finish()
    assert code == 0, stderr
    assert "Disconnected" in rest and "PARTICIPANT_REMOVED" in rest
    assert "Traceback" not in stderr


@pytest.mark.anyio
async def test_join_with_a_bad_token_exits_1_without_showing_the_token(server: Server) -> None:
    bad = mint_token("devkey", "not-the-secret", "mallory", room="hall")
    async with _cli("join", server.url, "--token", bad) as child:
        code, out, err = await child.finish()
    assert code == 1
    assert err.startswith("error: ")
    assert "invalid token" in err
    assert bad not in err and bad not in out
    assert await server.participants("hall") == []


def test_join_an_unreachable_server_exits_1_saying_so() -> None:
    result = _run("join", f"ws://127.0.0.1:{_free_port()}", "--token", "x.y.z",
                  "--timeout", "5")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_join_refuses_a_host_address_that_is_not_an_ip() -> None:
    result = _run("join", "ws://127.0.0.1:1", "--token", "x.y.z", "--host-address", "eth0")
    assert result.returncode == 2
    assert "not an IP address" in result.stderr


@posix_signals
@pytest.mark.anyio
async def test_join_leaves_the_room_on_ctrl_c(server: Server, anyio_backend: str) -> None:
    watcher = server.token("watcher", room="hall")
    async with _cli("join", server.url, "--token", watcher, *server.cli_join_args(),
                    "--backend", anyio_backend) as child:
        await child.expect("joined room 'hall'")
        assert await server.participants("hall") == ["watcher"]
        child.process.send_signal(signal.SIGINT)
        code, rest, err = await child.finish()
    assert code in (0, 130)
    assert "Traceback" not in err
    assert "Disconnected" in rest and "CLIENT_INITIATED" in rest
    with anyio.fail_after(5):
        while await server.participants("hall"):
            await anyio.sleep(0.02)


# -- serve ---------------------------------------------------------------------------------


@posix_signals
@pytest.mark.anyio
async def test_serve_prints_where_and_how_to_join_and_stops_on_ctrl_c(
    anyio_backend: str,
) -> None:
    async with _cli("serve", "--port", "0", "--api-key", "k", "--api-secret", "s3cret",
                    "--backend", anyio_backend) as child:
        first = await child.expect("listening on ws://127.0.0.1:")
        url = first.split()[-1]
        await child.expect("API key:", "k")
        await child.expect("API secret:", "s3cret")
        await child.expect("python -m room token", "--api-key k", "--api-secret s3cret")

        token = mint_token("k", "s3cret", "alice", room="demo")
        async with room.Room.connect(url, token) as r:
            events = r.events(Disconnected)
            child.process.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                seen = [ev async for ev in events]
            code, _out, err = await child.finish()
    assert code in (0, 130)
    assert "Traceback" not in err
    assert isinstance(seen[-1], Disconnected)
    assert seen[-1].reason is DisconnectReason.SERVER_SHUTDOWN


def test_serve_on_a_busy_port_exits_1() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = _run("serve", "--port", str(busy.getsockname()[1]), timeout=20.0)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot listen on")


# -- format_event --------------------------------------------------------------------------

_WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456)


def _bob() -> RemoteParticipant:
    return RemoteParticipant(models.ParticipantInfo(sid="PA_bob", identity="bob"))


def test_format_event_shows_time_name_identity_and_old_to_new() -> None:
    line = format_event(ParticipantNameChanged(_bob(), "", "Bob"), when=_WHEN)
    assert line.split() == ["07:08:09.123", "ParticipantNameChanged", "bob", "''", "->",
                            "'Bob'"]


def test_format_event_marks_deleted_attributes() -> None:
    event = ParticipantAttributesChanged({"mood": "", "says": "hi"}, _bob())
    assert format_event(event, when=_WHEN).endswith("mood deleted says='hi'")


def test_format_event_keeps_long_and_multiline_values_on_one_short_line() -> None:
    event = ParticipantMetadataChanged(_bob(), "a\nb", "x" * 500)
    line = format_event(event, when=_WHEN)
    assert "\n" not in line
    assert len(line) < 200
    assert "'a\\nb' -> 'xxx" in line and line.endswith("...'")


def test_format_event_for_room_level_events() -> None:
    assert format_event(RoomMetadataChanged("old", "new"), when=_WHEN).endswith(
        "-            'old' -> 'new'")
    line = format_event(Disconnected(DisconnectReason.ROOM_DELETED, "gone"), when=_WHEN)
    assert line.endswith("ROOM_DELETED (gone)")
