"""``python -m room join``: join a room and print its events until it ends or Ctrl-C."""


from __future__ import annotations

import anyio

from room.cli._common import _error, _say
from room.cli._format import _show, _summary, format_event
from room.errors import ConnectError, EventStreamOverflowError
from room.options import RoomOptions
from room.room import Room

__all__: list[str] = []


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
