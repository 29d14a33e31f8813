"""The argument parser, the stop-on-signal wrapper and `main`, which runs one verb."""


from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
from anyio.abc import TaskStatus

from room import __version__
from room.cli._common import _DEFAULT_KEY, _DEFAULT_SECRET
from room.cli._demo import _demo
from room.cli._join import _join
from room.cli._serve import _serve
from room.cli._token import _token
from room.devserver import DevServer
from room.options import RoomOptions, RtcConfiguration

__all__ = ["build_parser", "main"]


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
