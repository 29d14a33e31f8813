"""A small moderator agent: the agent that examples/testing/test_moderator.py tests.

It joins a room as an ordinary participant and:

- keeps a roster of who is in the room (identity -> display name);
- welcomes every participant each time they join: a reliable data packet on topic
  ``welcome``, to them only (JSON: ``{"text": ..., "sid": <their participant sid>}``);
- answers the RPC method ``who`` with the roster (a JSON list of identities, sorted);
- answers the RPC method ``ask`` with ``"you asked: <question>"``;
- warns whoever sends a chat message (topic ``chat``) containing "spam": a packet on
  topic ``moderation``, to them only.

    python examples/testing/moderator.py --url ws://... --token ...

Without --url it starts a dev server of its own and prints how to join it.
"""

from __future__ import annotations

import argparse
import json

import anyio

import room
from room.events import (
    DataReceived,
    ParticipantConnected,
    ParticipantDisconnected,
    ParticipantNameChanged,
    RoomEvent,
)


class Moderator:
    """The agent; `run` until cancelled. ``roster`` and ``warned`` show its state."""

    def __init__(self) -> None:
        self.roster: dict[str, str] = {}
        self.warned: list[str] = []  # identities warned, in order
        self.welcomed: list[str] = []

    async def run(self, url: str, token: str, *, options: room.RoomOptions | None = None,
                  ) -> None:
        async with room.Room.connect(url, token, options=options) as r:
            me = r.local_participant
            me.register_rpc_method("who", self.who)
            me.register_rpc_method("ask", self.ask)
            # Subscribe before reading who is already here, so no change falls in between.
            events = r.events()
            for participant in list(r.remote_participants.values()):
                await self.arrived(r, participant)
            async for event in events:
                await self.handle(r, event)

    async def handle(self, r: room.Room, event: RoomEvent) -> None:
        match event:
            case ParticipantConnected(participant=p):
                await self.arrived(r, p)
            case ParticipantDisconnected(participant=p):
                self.roster.pop(p.identity, None)
            case ParticipantNameChanged(participant=p) if p.identity in self.roster:
                self.roster[p.identity] = p.name
            case DataReceived(packet=packet) if packet.topic == "chat":
                if b"spam" in packet.data.lower() and packet.participant_identity:
                    self.warned.append(packet.participant_identity)
                    await r.local_participant.publish_data(
                        b"please do not spam", topic="moderation",
                        destination_identities=[packet.participant_identity])
            case _:
                pass

    async def arrived(self, r: room.Room, participant: room.RemoteParticipant) -> None:
        self.roster[participant.identity] = participant.name
        self.welcomed.append(participant.identity)
        # The welcome names the session it is for: someone who leaves and comes back is
        # a new session (a new sid), welcomed again.
        welcome = {"text": f"welcome, {participant.name or participant.identity}",
                   "sid": participant.sid}
        await r.local_participant.publish_data(
            json.dumps(welcome), topic="welcome", destination_identities=[participant.identity])

    def who(self, call: room.RpcInvocationData) -> str:
        return json.dumps(sorted(self.roster))

    def ask(self, call: room.RpcInvocationData) -> str:
        return f"you asked: {call.payload}"


async def main(args: argparse.Namespace) -> None:
    if args.url:
        await Moderator().run(args.url, args.token)
        return
    from room.devserver import DevServer

    async with DevServer() as dev:
        print(f"dev server at {dev.url}; join with:\n  python -m room join {dev.url} "
              f"--token {dev.token('guest', room='moderated')}")
        await Moderator().run(dev.url, dev.token("moderator", room="moderated"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    ns = parser.parse_args()
    anyio.run(main, ns, backend=ns.backend)
