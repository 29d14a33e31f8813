"""Reliable data, exactly once and in order across a resume: pure bookkeeping.

LiveKit numbers every reliable `DataPacket` a participant sends (``sequence``, from 1, with
the sender's ``participant_sid``). The server drops a reliable packet whose sequence is not
above the last one it took from that sender, tells a resuming client the last sequence
it received (``ReconnectResponse.last_message_seq``), and a resuming client tells it, per
sender, the last sequence it received (``SyncState.datachannel_receive_states``).

`ReliableOutbox` numbers what we send and retains the most recent packets, so that after
a resume whatever the server did not receive is sent again, once and in order, and after
a full rejoin (a new session, so new numbers) whatever was not yet handed to the
transport goes out on the new one. What a resume needs is bounded: packets in flight
(handed to SCTP, not yet received) plus those still waiting to be sent, which the send
path keeps below a watermark. `ReliableInbox` drops duplicates per sender. Neither does
I/O; both are tested with hypothesis (tests/test_reliable.py).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from livekit.protocol import models, rtc

__all__ = ["ReliableInbox", "ReliableOutbox"]


class ReliableOutbox:
    """Sequence numbers for our reliable packets, and the ones a resume may need again.

    ``retain_bytes`` bounds the retained packets; the oldest are forgotten first, which is
    safe while more than the transport can have in flight is retained (the engine sizes
    it so). ``unsent`` counts the packets stamped but not yet handed to the transport
    (waiting out a reconnection): the engine stops accepting new ones past its own bound.
    """

    def __init__(self, retain_bytes: int) -> None:
        if retain_bytes <= 0:
            raise ValueError("retain_bytes must be positive")
        self.retain_bytes = retain_bytes
        self.next_sequence = 1
        self._retained: collections.deque[tuple[int, bytes]] = (
            collections.deque())  # (sequence, wire form), oldest first
        self._retained_size = 0
        self._handed = 0  # the highest sequence handed to the transport
        self.lost = 0  # packets a resume found neither received nor retained

    @property
    def retained_bytes(self) -> int:
        return self._retained_size

    @property
    def unsent_count(self) -> int:
        """How many stamped packets have not been handed to the transport yet."""
        return self.next_sequence - 1 - self._handed

    @property
    def unsent_bytes(self) -> int:
        return sum(len(data) for _, data in self._unsent_entries())

    def next_unsent(self) -> tuple[int, bytes] | None:
        """The oldest packet not handed to the transport yet: (sequence, wire form)."""
        if not self.unsent_count:
            return None
        return self._retained[len(self._retained) - self.unsent_count]

    def _unsent_entries(self) -> list[tuple[int, bytes]]:
        count = self.unsent_count
        return list(self._retained)[len(self._retained) - count:] if count else []

    def stamp(self, packet: models.DataPacket, participant_sid: str) -> bytes:
        """Number ``packet`` (and name its sender), retain it; its wire form."""
        packet.sequence = self.next_sequence
        packet.participant_sid = participant_sid
        self.next_sequence += 1
        data = packet.SerializeToString()
        self._retained.append((packet.sequence, data))
        self._retained_size += len(data)
        self._trim()
        return data

    def handed(self, sequence: int) -> None:
        """The packet ``sequence`` (and every one before it) went to the transport."""
        self._handed = max(self._handed, sequence)

    def resend_after(self, last_received: int) -> list[tuple[int, bytes]]:
        """After a resume: what the server (which has everything up to
        ``last_received``) still needs, in order, as (sequence, wire form). Packets older
        than that are forgotten."""
        while self._retained and self._retained[0][0] <= last_received:
            self._forget_oldest()
        first = self._retained[0][0] if self._retained else self.next_sequence
        # Sent, no longer retained, and not received: should not happen while more than
        # the transport can hold in flight is retained; counted, never silent.
        self.lost += max(0, first - last_received - 1)
        self._handed = max(self._handed, last_received)
        return list(self._retained)

    def renumber(self, participant_sid: str) -> list[tuple[int, bytes]]:
        """After a full rejoin (new session, new numbering): every retained packet,
        renumbered from 1 for the new sender sid, in order. A new session cannot learn
        what the server got of the old one's, so what may have been in flight goes again:
        the server drops a user packet whose nonce it has seen lately, and RPC requests
        are recognized by their id (see docs/reliability.md)."""
        waiting = [models.DataPacket.FromString(data) for _, data in self._retained]
        self._retained.clear()
        self._retained_size = 0
        self.next_sequence = 1
        self._handed = 0
        out = []
        for packet in waiting:
            data = self.stamp(packet, participant_sid)
            out.append((packet.sequence, data))
        return out

    def _trim(self) -> None:
        # Never forget a packet not handed to the transport yet: the engine bounds those.
        while self._retained_size > self.retain_bytes and self._retained and (
                self._retained[0][0] <= self._handed):
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        _, data = self._retained.popleft()
        self._retained_size -= len(data)


class ReliableInbox:
    """The last reliable sequence received from each sender (by participant sid)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def accept(self, packet: models.DataPacket, *, reliable: bool) -> bool:
        """Whether ``packet`` is new: False for a repeat of a reliable packet already
        received from that sender. Unnumbered and lossy packets are always new."""
        if not reliable or packet.sequence == 0 or not packet.participant_sid:
            return True
        last = self._last.get(packet.participant_sid, 0)
        if packet.sequence <= last:
            return False
        self._last[packet.participant_sid] = packet.sequence
        return True

    def forget(self, participant_sids: Iterable[str]) -> None:
        """Senders that are gone (their sids are never reused)."""
        for sid in participant_sids:
            self._last.pop(sid, None)

    def receive_states(self) -> list[rtc.DataChannelReceiveState]:
        """For ``SyncState.datachannel_receive_states`` on a resume."""
        return [rtc.DataChannelReceiveState(publisher_sid=sid, last_seq=seq)
                for sid, seq in sorted(self._last.items())]
