"""``python -m room serve``: run a dev server until Ctrl-C."""


from __future__ import annotations

import shlex
from contextlib import AsyncExitStack

import anyio

from room.cli._common import _DEFAULT_KEY, _DEFAULT_SECRET, _error, _say
from room.devserver import DevServer

__all__: list[str] = []


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
