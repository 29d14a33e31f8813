"""The command line, ``python -m room``: run a dev server, mint tokens, watch a room, demo.

Each verb is an async function run with ``anyio.run`` on the backend the user picks. Ctrl-C
(and SIGTERM) stop the running verb cleanly: rooms leave (the server is told), and the dev
server tells its participants it is shutting down; the exit code is then ``128 + signal``
(130 for Ctrl-C), without a traceback. `format_event` is the one-line
rendering of a room event that ``join`` and ``demo`` print; it is public so that tools and
tests can reuse it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime
from functools import partial
from typing import TextIO

import anyio
from anyio.abc import TaskStatus

from room import __version__
from room.data import DataPacket
from room.devserver import DevServer
from room.devserver.auth import mint_token
from room.errors import ConnectError, EventStreamOverflowError, RoomError
from room.events import (
    ActiveSpeakersChanged,
    ConnectionQualityChanged,
    ConnectionStateChanged,
    DataReceived,
    Disconnected,
    E2EEStateChanged,
    LocalTrackPublished,
    LocalTrackSubscribed,
    LocalTrackUnpublished,
    ParticipantAttributesChanged,
    ParticipantConnected,
    ParticipantDisconnected,
    ParticipantMetadataChanged,
    ParticipantNameChanged,
    RoomEvent,
    RoomMetadataChanged,
    SipDTMFReceived,
    Subscription,
    TrackMuted,
    TrackPublished,
    TrackSubscribed,
    TrackSubscriptionFailed,
    TrackUnmuted,
    TrackUnpublished,
    TrackUnsubscribed,
    TranscriptionReceived,
)
from room.options import RoomOptions, RtcConfiguration
from room.participant import Participant
from room.publication import TrackPublication
from room.room import Room
from room.types import ParticipantKind

__all__ = ["build_parser", "format_event", "main"]

_DEFAULT_KEY = "devkey"
_DEFAULT_SECRET = "secret"
# Longest rendering of one user-supplied value in an event line (repr included).
_MAX_VALUE = 60


# -- formatting ----------------------------------------------------------------------------


def format_event(event: RoomEvent, *, when: datetime | None = None) -> str:
    """One readable line for ``event``: local time, event name, participant, details.

    ``when`` defaults to now. User-supplied strings are shown as (shortened) Python
    literals, so the line never spans several lines; changes read ``old -> new``.
    """
    stamp = (when or datetime.now()).strftime("%H:%M:%S.%f")[:-3]
    who, detail = _describe(event)
    return f"{stamp} {type(event).__name__:<28} {who:<12} {detail}".rstrip()


def _show(value: str) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 4] + "...'"


def _change(old: str, new: str) -> str:
    return f"{_show(old)} -> {_show(new)}"


def _ident(p: Participant | None) -> str:
    return p.identity if p is not None else "-"


def _publication(pub: TrackPublication) -> str:
    muted = " muted" if pub.muted else ""
    return f"{pub.sid} {_show(pub.name)} {pub.kind.name} {pub.source.name}{muted}"


def _summary(p: Participant) -> str:
    """What is known about ``p`` (only the fields that are set), for join and connect lines."""
    parts = []
    if p.name:
        parts.append(f"name={_show(p.name)}")
    if p.kind is not ParticipantKind.STANDARD:
        parts.append(f"kind={p.kind.name}")
    if p.metadata:
        parts.append(f"metadata={_show(p.metadata)}")
    for key, value in sorted(p.attributes.items()):
        parts.append(f"{key}={_show(value)}")
    if p.track_publications:
        parts.append(f"tracks={len(p.track_publications)}")
    return " ".join(parts)


def _packet(packet: DataPacket) -> str:
    try:
        body = _show(packet.data.decode())
    except UnicodeDecodeError:
        body = f"{len(packet.data)} bytes"
    topic = f"topic={_show(packet.topic)} " if packet.topic else ""
    return f"{topic}{packet.kind.name} {body}"


def _describe(event: RoomEvent) -> tuple[str, str]:
    """(participant identity or ``-``, details) for one event."""
    match event:
        case ParticipantConnected(participant=p):
            return p.identity, _summary(p)
        case ParticipantDisconnected(participant=p):
            reason = p.disconnect_reason.name if p.disconnect_reason is not None else "?"
            return p.identity, f"reason={reason}"
        case ParticipantNameChanged(participant=p, old_name=old, new_name=new):
            return p.identity, _change(old, new)
        case ParticipantMetadataChanged(participant=p, old_metadata=old, new_metadata=new):
            return p.identity, _change(old, new)
        case ParticipantAttributesChanged(participant=p, changed_attributes=changed):
            # An empty value is how LiveKit reports a deleted attribute.
            return p.identity, " ".join(
                f"{k}={_show(v)}" if v else f"{k} deleted" for k, v in sorted(changed.items()))
        case RoomMetadataChanged(old_metadata=old, new_metadata=new):
            return "-", _change(old, new)
        case ConnectionStateChanged(state=state):
            return "-", state.value
        case Disconnected(reason=reason, message=message):
            why = f" ({' '.join(message.split())})" if message else ""
            return "-", f"{reason.name}{why}"
        case ConnectionQualityChanged(participant=p, quality=quality):
            return p.identity, quality.name
        case ActiveSpeakersChanged(speakers=speakers):
            return "-", "speakers: " + (", ".join(s.identity for s in speakers) or "none")
        case (TrackPublished(participant=p, publication=pub)
              | TrackUnpublished(participant=p, publication=pub)
              | TrackSubscribed(participant=p, publication=pub)
              | TrackUnsubscribed(participant=p, publication=pub)
              | TrackMuted(participant=p, publication=pub)
              | TrackUnmuted(participant=p, publication=pub)):
            return p.identity, _publication(pub)
        case TrackSubscriptionFailed(participant=p, track_sid=sid, error=error):
            return p.identity, f"{sid}: {' '.join(error.split())}"
        case LocalTrackPublished(publication=pub) | LocalTrackUnpublished(publication=pub):
            return "(local)", _publication(pub)
        case LocalTrackSubscribed(track=track):
            return "(local)", f"{track.sid} {_show(track.name)} {track.kind.name}"
        case DataReceived(packet=packet):
            return _ident(packet.participant), _packet(packet)
        case SipDTMFReceived(dtmf=dtmf):
            return _ident(dtmf.participant), f"digit={_show(dtmf.digit)} code={dtmf.code}"
        case TranscriptionReceived(participant=p, segments=segments):
            return _ident(p), " | ".join(
                _show(s.text) + ("" if s.final else " (interim)") for s in segments)
        case E2EEStateChanged(participant=p, state=state):
            return p.identity, state.name
        case _:  # Connected, Reconnecting, Reconnected carry no fields
            return "-", ""


# -- output --------------------------------------------------------------------------------


def _say(text: str = "", *, file: TextIO | None = None) -> None:
    # Flushed line by line: the output is meant to be watched live, often through a pipe.
    print(text, file=file or sys.stdout, flush=True)


def _error(text: str) -> None:
    _say(f"error: {text}", file=sys.stderr)


# -- serve ---------------------------------------------------------------------------------


async def _serve(server: DevServer, stop: anyio.Event) -> int:
    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(server)
        except OSError as exc:
            _error(f"cannot listen on {server.host}:{server.port}: {exc.strerror or exc}")
            return 1
        keys = []
        if server.api_key != _DEFAULT_KEY or server.api_secret != _DEFAULT_SECRET:
            keys = ["--api-key", server.api_key, "--api-secret", server.api_secret]
        token_cmd = shlex.join(["python", "-m", "room", "token", *keys,
                                "--identity", "alice", "--room", "demo"])
        _say(f"room dev server listening on {server.url}")
        _say(f"  API key:    {server.api_key}")
        _say(f"  API secret: {server.api_secret}")
        _say("mint a token:")
        _say(f"  {token_cmd}")
        _say("and watch the room:")
        _say(f'  python -m room join {shlex.quote(server.url)} --token "$({token_cmd})"')
        _say("press Ctrl-C to stop")
        await stop.wait()
        _say("stopping: telling the participants the server is shutting down")
    return 0


# -- token ---------------------------------------------------------------------------------


def _token(args: argparse.Namespace) -> int:
    try:
        token = mint_token(
            args.api_key, args.api_secret, args.identity, room=args.room, name=args.name,
            metadata=args.metadata, attributes=dict(args.attribute), ttl=args.ttl,
            hidden=args.hidden, can_publish=not args.no_publish,
            can_subscribe=not args.no_subscribe, can_publish_data=not args.no_publish_data,
            can_update_own_metadata=not args.no_update_metadata)
    except ValueError as exc:
        args.verb_parser.error(str(exc))
    _say(token)
    return 0


# -- join ----------------------------------------------------------------------------------


async def _join(url: str, token: str, options: RoomOptions, stop: anyio.Event) -> int:
    joined: Room | None = None
    connecting = anyio.CancelScope()

    async def leave_on_stop() -> None:
        await stop.wait()
        if joined is None:
            connecting.cancel()  # not in yet: give up joining
        else:
            # Leave rather than cancel: the stream then ends with our own Disconnected.
            await joined.disconnect()

    async with anyio.create_task_group() as tg:
        tg.start_soon(leave_on_stop)
        try:
            with connecting:
                async with Room.connect(url, token, options=options) as r:
                    joined = r
                    return await _print_room(r)
        except ConnectError as exc:
            # The library never puts the token in a message; redact anyway, cheaply.
            _error(str(exc).replace(token, "<token>") if token else str(exc))
            return 1
        finally:
            tg.cancel_scope.cancel()
    return 130  # stopped while joining


async def _print_room(r: Room) -> int:
    """Print who is in ``r``, then every event until ``Disconnected``."""
    events = r.events()  # before any await: nothing after the join is missed
    sid = ""
    with anyio.move_on_after(1.0):
        sid = await r.sid()
    _say(f"joined room {r.name!r} as {r.local_participant.identity!r}"
         + (f" (room sid {sid})" if sid else ""))
    if r.metadata:
        _say(f"room metadata: {_show(r.metadata)}")
    others = sorted(r.remote_participants.values(), key=lambda p: p.identity)
    _say(f"{len(others)} other participant(s) here:" if others else "no one else is here")
    for p in others:
        _say(f"  {p.identity} {_summary(p)}".rstrip())
    try:
        async for event in events:
            _say(format_event(event))
    except EventStreamOverflowError as exc:
        _error(str(exc))
        return 1
    return 0


# -- demo ----------------------------------------------------------------------------------

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


# -- running -------------------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m room`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m room",
        description="LiveKit rooms with structured concurrency: a dev server and tools.")
    parser.add_argument("--version", action="version", version=f"room {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v info, -vv debug) to stderr")
    verbs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    backend = argparse.ArgumentParser(add_help=False)
    backend.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio",
                         help="the AnyIO backend to run on (default: asyncio)")
    keys = argparse.ArgumentParser(add_help=False)
    keys.add_argument("--api-key", default=_DEFAULT_KEY, help="default: %(default)s")
    keys.add_argument("--api-secret", default=_DEFAULT_SECRET, help="default: %(default)s")

    serve = verbs.add_parser(
        "serve", parents=[keys, backend], help="run a LiveKit-compatible dev server",
        description="Run the dev server until Ctrl-C.")
    serve.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    serve.add_argument("--port", type=int, default=7880,
                       help="default: %(default)s; 0 picks a free port")
    serve.add_argument("--ping-interval", type=int, default=5,
                       help="seconds between client pings (default: %(default)s)")
    serve.add_argument("--ping-timeout", type=int, default=15,
                       help="seconds without a pong after which clients give up "
                            "(default: %(default)s)")
    serve.add_argument("--presence-interval", type=float, default=3.0,
                       help="seconds joins and leaves of participants that publish nothing "
                            "may wait before the others hear, as on livekit-server; 0: "
                            "at once (default: %(default)g)")
    serve.add_argument("--join-timeout", type=_positive, default=60.0,
                       help="remove a participant whose WebRTC has not connected after "
                            "this many seconds (default: %(default)g)")

    token = verbs.add_parser(
        "token", parents=[keys], help="print an access token",
        description="Print a LiveKit access token (HS256 JWT) signed with the API secret.")
    token.add_argument("--identity", required=True)
    token.add_argument("--room", required=True)
    token.add_argument("--name")
    token.add_argument("--metadata")
    token.add_argument("--attribute", type=_attribute, action="append", default=[],
                       metavar="KEY=VALUE", help="may be repeated")
    token.add_argument("--ttl", type=_positive, default=3600.0,
                       help="seconds of validity (default: %(default)g)")
    token.add_argument("--hidden", action="store_true", help="invisible to the others")
    token.add_argument("--no-publish", action="store_true")
    token.add_argument("--no-subscribe", action="store_true")
    token.add_argument("--no-publish-data", action="store_true")
    token.add_argument("--no-update-metadata", action="store_true",
                       help="may not change its own name, metadata, attributes")

    join = verbs.add_parser(
        "join", parents=[backend], help="join a room and print its events",
        description="Join a room and print one line per event until Ctrl-C or disconnect.")
    join.add_argument("url", help="the server's ws://, wss://, http:// or https:// URL")
    join.add_argument("--token", required=True, help="the access token")
    join.add_argument("--timeout", type=_positive, default=10.0,
                      help="seconds to wait for the join (default: %(default)g)")
    join.add_argument("--host-address", action="append", default=None, metavar="IP",
                      help="gather ICE candidates on this local address only (repeatable; "
                           "default: every non-loopback interface, or loopback for a dev "
                           "server on loopback)")

    demo = verbs.add_parser(
        "demo", parents=[backend], help="watch two participants talk on an embedded server",
        description="Start a dev server, let alice watch while bob acts, print what she sees.")
    demo.add_argument("--fast", action="store_true", help="no pauses between steps")

    for verb in (serve, token, join, demo):
        verb.set_defaults(verb_parser=verb)  # to report errors found after parsing
    return parser


_Verb = Callable[[anyio.Event], Awaitable[int]]


async def _until_signal(verb: _Verb) -> int:
    """Run ``verb(stop)``; SIGINT or SIGTERM sets ``stop`` and makes the exit code 128 + signal.

    Each verb winds itself down when ``stop`` is set, rather than being cancelled: ``serve``
    leaves its ``async with DevServer`` so the server can tell its participants it is
    shutting down, ``join`` leaves the room and prints the resulting ``Disconnected``,
    ``demo`` stops at its next step. A second signal cancels whatever is still running.
    """
    code: int | None = None
    stop = anyio.Event()

    async def watch(*, task_status: TaskStatus[None]) -> None:
        nonlocal code
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    if stop.is_set():
                        tg.cancel_scope.cancel()
                    code = 128 + signum
                    stop.set()
        except NotImplementedError:  # asyncio on Windows: Ctrl-C stays KeyboardInterrupt
            task_status.started()

    result = 130
    async with anyio.create_task_group() as tg:
        await tg.start(watch)
        try:
            result = await verb(stop)
        finally:
            tg.cancel_scope.cancel()
    return result if code is None else code


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m room`` with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "token":
        return _token(args)
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        args.verb_parser.error("the trio backend needs trio: pip install 'room-rtc[trio]'")
    verb: _Verb
    if args.command == "serve":
        try:
            server = DevServer(host=args.host, port=args.port, api_key=args.api_key,
                               api_secret=args.api_secret, ping_interval=args.ping_interval,
                               ping_timeout=args.ping_timeout,
                               presence_interval=args.presence_interval,
                               join_timeout=args.join_timeout)
        except ValueError as exc:
            args.verb_parser.error(str(exc))
        if args.verbose == 0:  # who joins and leaves is what a dev server's user watches
            logging.getLogger("room.devserver").setLevel(logging.INFO)
        verb = partial(_serve, server)
    elif args.command == "join":
        try:
            rtc_config = RtcConfiguration(host_addresses=args.host_address)
        except ValueError as exc:
            args.verb_parser.error(str(exc))
        verb = partial(_join, args.url, args.token,
                       RoomOptions(connect_timeout=args.timeout, rtc_config=rtc_config))
    else:
        verb = partial(_demo, args.backend, args.fast)
    try:
        return anyio.run(_until_signal, verb, backend=args.backend)
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # Trio may deliver Ctrl-C inside a task group, before our handler is in place.
        if group.split(KeyboardInterrupt)[1] is None:
            return 130
        raise
