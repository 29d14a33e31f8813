"""The connection lifecycle (pure) under random fault histories, and reliable data
bookkeeping across resumes and rejoins: what a user relies on, checked by hypothesis."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from livekit.protocol import models

from room.events import (
    ConnectionStateChanged,
    Disconnected,
    Reconnected,
    Reconnecting,
    RoomEvent,
)
from room.options import ReconnectPolicy
from room.transport.lifecycle import Action, Lifecycle, Phase, Step
from room.transport.reliable import ReliableInbox, ReliableOutbox
from room.types import ConnectionState, DisconnectReason

POLICY = ReconnectPolicy(max_attempts=4, base_delay=0.5, max_delay=2.0, give_up_after=30.0)


class LifecycleMachine(RuleBasedStateMachine):
    """Faults, attempts and the clock in any order; the events and actions a user and
    the engine see must follow the rules of `room.transport.lifecycle`."""

    def __init__(self) -> None:
        super().__init__()
        self.life = Lifecycle(POLICY)
        self.now = 0.0
        self.events: list[RoomEvent] = []
        self.steps: list[Step] = []
        self.take(self.life.joined())

    def take(self, step: Step) -> None:
        self.events += step.events
        self.steps.append(step)
        if step.action is Action.RESUME:
            assert self.life.phase is Phase.RESUMING
        if step.action is Action.REJOIN:
            assert self.life.phase is Phase.REJOINING
        if step.action is Action.CLOSE:
            assert self.life.phase is Phase.DISCONNECTED
        assert 0.0 <= step.delay <= POLICY.max_delay

    @rule(seconds=st.floats(0.0, 20.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.take(self.life.deadline_passed(self.now))

    @rule(healthy=st.booleans())
    def signal_lost(self, healthy: bool) -> None:
        self.take(self.life.signal_lost(self.now, "lost", transport_healthy=healthy))

    @rule()
    def transport_failed(self) -> None:
        self.take(self.life.transport_failed(self.now, "failed"))

    @rule(action=st.sampled_from(["DISCONNECT", "RESUME", "RECONNECT"]),
          reason=st.sampled_from(list(DisconnectReason)))
    def server_leave(self, action: str, reason: DisconnectReason) -> None:
        self.take(self.life.server_leave(self.now, reason, action))

    @rule()
    def attempt_succeeded(self) -> None:
        self.take(self.life.attempt_succeeded())

    @rule(needs_rejoin=st.booleans(), healthy=st.booleans())
    def attempt_failed(self, needs_rejoin: bool, healthy: bool) -> None:
        self.take(self.life.attempt_failed(self.now, "no", needs_rejoin=needs_rejoin,
                                           transport_healthy=healthy))

    @precondition(lambda self: self.life.phase is not Phase.DISCONNECTED)
    @rule()
    def user_leaves(self) -> None:
        self.take(self.life.closed(DisconnectReason.CLIENT_INITIATED, "bye"))

    @invariant()
    def one_terminal_disconnected_and_nothing_after(self) -> None:
        ends = [i for i, e in enumerate(self.events) if isinstance(e, Disconnected)]
        assert len(ends) <= 1
        if ends:
            assert ends[0] == len(self.events) - 1
            assert self.life.phase is Phase.DISCONNECTED

    @invariant()
    def reconnecting_is_always_answered(self) -> None:
        """Reconnecting, then Reconnected or Disconnected, before any other Reconnecting."""
        open_trouble = False
        for e in self.events:
            if isinstance(e, Reconnecting):
                assert not open_trouble
                open_trouble = True
            elif isinstance(e, (Reconnected, Disconnected)):
                open_trouble = False
        assert open_trouble == self.life.reconnecting

    @invariant()
    def state_changes_are_real_and_match(self) -> None:
        states = [e.state for e in self.events if isinstance(e, ConnectionStateChanged)]
        assert all(a is not b for a, b in itertools.pairwise(states))
        assert states[-1] is self.life.connection_state
        if Phase.CONNECTED is self.life.phase:
            assert states[-1] is ConnectionState.CONNECTED

    @invariant()
    def attempts_are_bounded(self) -> None:
        assert self.life.attempts <= POLICY.max_attempts


TestLifecycle = LifecycleMachine.TestCase
TestLifecycle.settings = settings(max_examples=300, stateful_step_count=40, deadline=None,
                                  derandomize=True)


def test_without_a_policy_the_first_fault_ends_the_room() -> None:
    life = Lifecycle(None)
    life.joined()
    step = life.signal_lost(1.0, "gone", transport_healthy=True)
    assert step.action is Action.CLOSE
    assert isinstance(step.events[-1], Disconnected)
    assert step.events[-1].reason is DisconnectReason.SIGNAL_CLOSE


def test_events_of_one_repaired_fault_in_the_order_api_md_gives() -> None:
    life = Lifecycle(POLICY)
    joined = life.joined()
    assert [type(e).__name__ for e in joined.events] == ["ConnectionStateChanged",
                                                         "Connected"]
    trouble = life.signal_lost(0.0, "gone", transport_healthy=True)
    assert trouble.action is Action.RESUME and trouble.delay == 0.0
    assert [type(e).__name__ for e in trouble.events] == ["ConnectionStateChanged",
                                                          "Reconnecting"]
    retry = life.attempt_failed(0.1, "refused", needs_rejoin=True)
    assert retry.action is Action.REJOIN and retry.events == []
    done = life.attempt_succeeded()
    assert [type(e).__name__ for e in done.events] == ["Reconnected",
                                                       "ConnectionStateChanged"]


def test_giving_up_after_the_attempts_or_the_deadline() -> None:
    life = Lifecycle(POLICY)
    life.joined()
    life.transport_failed(0.0, "down")
    for _ in range(POLICY.max_attempts - 1):
        assert life.attempt_failed(1.0, "no", needs_rejoin=False).action is Action.REJOIN
    last = life.attempt_failed(2.0, "no", needs_rejoin=False)
    assert last.action is Action.CLOSE
    life2 = Lifecycle(POLICY)
    life2.joined()
    life2.signal_lost(0.0, "gone", transport_healthy=True)
    assert life2.deadline_passed(POLICY.give_up_after + 0.1).action is Action.CLOSE


# -- reliable data ---------------------------------------------------------------------

def _packet(n: int) -> models.DataPacket:
    return models.DataPacket(user=models.UserPacket(payload=str(n).encode()))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(["send", "hand", "resume", "deliver"]),
                          st.integers(0, 5)), max_size=80))
def test_across_resumes_every_packet_reaches_the_server_once_in_order(
        script: list[tuple[str, int]]) -> None:
    """The server gets what was handed (some of it may be lost on a broken transport);
    after each resume it says how far it got and the outbox sends the rest again. The
    server keeps a packet only if its sequence is above the last it kept (as LiveKit's
    does). At the end, with the connection healthy, it has every packet, once, in order."""
    outbox = ReliableOutbox(retain_bytes=1 << 20)
    in_flight: list[tuple[int, bytes]] = []
    received: list[bytes] = []
    last = 0
    sent = 0

    def server_takes(seq: int, data: bytes) -> None:
        nonlocal last
        if seq > last:
            last = seq
            received.append(models.DataPacket.FromString(data).user.payload)

    def hand_all() -> None:
        while (entry := outbox.next_unsent()) is not None:
            in_flight.append(entry)
            outbox.handed(entry[0])

    for op, n in script:
        if op == "send":
            for _ in range(n + 1):
                outbox.stamp(_packet(sent), "PA_me")
                sent += 1
        elif op == "hand":
            hand_all()
        elif op == "deliver":
            for entry in in_flight[: n + 1]:
                server_takes(*entry)
            del in_flight[: n + 1]
        else:  # resume: what was in flight is lost (the transport broke meanwhile)
            in_flight.clear()
            in_flight.extend(outbox.resend_after(last))
            for seq, _ in in_flight:
                outbox.handed(seq)
    hand_all()
    for entry in in_flight:
        server_takes(*entry)
    assert received == [str(i).encode() for i in range(sent)]
    assert outbox.lost == 0


def test_after_a_rejoin_everything_retained_goes_again_renumbered() -> None:
    outbox = ReliableOutbox(retain_bytes=1 << 20)
    for i in range(3):
        outbox.stamp(_packet(i), "PA_old")
    outbox.handed(2)  # two handed (maybe received), one waiting
    again = outbox.renumber("PA_new")
    assert [seq for seq, _ in again] == [1, 2, 3]
    packets = [models.DataPacket.FromString(data) for _, data in again]
    assert [p.user.payload for p in packets] == [b"0", b"1", b"2"]
    assert {p.participant_sid for p in packets} == {"PA_new"}
    assert outbox.next_sequence == 4


def test_the_inbox_drops_repeats_per_sender_and_reports_its_state() -> None:
    inbox = ReliableInbox()
    a1 = models.DataPacket(sequence=1, participant_sid="PA_a")
    a2 = models.DataPacket(sequence=2, participant_sid="PA_a")
    b1 = models.DataPacket(sequence=1, participant_sid="PA_b")
    assert [inbox.accept(p, reliable=True) for p in (a1, a2, a1, b1, a2)] == [
        True, True, False, True, False]
    assert inbox.accept(a1, reliable=False)  # lossy packets are never repeats
    assert inbox.accept(models.DataPacket(), reliable=True)  # unnumbered
    assert [(s.publisher_sid, s.last_seq) for s in inbox.receive_states()] == [
        ("PA_a", 2), ("PA_b", 1)]
    inbox.forget(["PA_a"])
    assert inbox.accept(a1, reliable=True)


def test_retention_is_bounded_but_never_forgets_what_was_not_sent() -> None:
    outbox = ReliableOutbox(retain_bytes=100)
    for i in range(50):
        outbox.stamp(_packet(i), "PA_me")
    assert outbox.unsent_count == 50  # nothing handed: all kept, whatever the bound
    while (entry := outbox.next_unsent()) is not None:
        outbox.handed(entry[0])
    outbox.stamp(_packet(99), "PA_me")  # trims what was handed
    assert outbox.retained_bytes <= 100 + 20
