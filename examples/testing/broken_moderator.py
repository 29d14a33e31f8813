"""A deliberately broken copy of the moderator, for the test suite to catch.

It welcomes each identity only the first time it joins: someone who leaves and comes back
is not welcomed again. ``MODERATOR=broken pytest examples/testing`` runs the moderator's
tests against it; they fail, and hypothesis prints the shortest history that shows it.
"""

from __future__ import annotations

from moderator import Moderator

import room


class BrokenModerator(Moderator):
    async def arrived(self, r: room.Room, participant: room.RemoteParticipant) -> None:
        if participant.identity in self.welcomed:  # the bug: "already welcomed once"
            self.roster[participant.identity] = participant.name
            return
        await super().arrived(r, participant)
