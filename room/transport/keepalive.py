"""LiveKit signal keepalive as pure state: when to ping, the round-trip time, when it is dead.

The server tells the client ``ping_interval`` and ``ping_timeout`` in the join response.
The client sends ``ping_req`` every interval; each ``pong_resp`` proves the connection is
alive. No pong for ``ping_timeout`` seconds means the connection is dead. Time is passed
in (seconds, monotonic), so this is testable without a clock.
"""

from __future__ import annotations

from livekit.protocol import rtc

__all__ = ["Keepalive"]


# The largest round-trip time reported (an hour, in ms): anything larger is nonsense.
_MAX_RTT_MS = 3_600_000

class Keepalive:
    def __init__(self, *, interval: float, timeout: float, now: float) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("ping interval and timeout must be positive")
        self.interval = interval
        self.timeout = timeout
        self.rtt_ms = 0
        self._last_alive = now

    def ping(self, now: float) -> rtc.SignalRequest:
        """The ping to send at ``now``."""
        return rtc.SignalRequest(ping_req=rtc.Ping(timestamp=int(now * 1000), rtt=self.rtt_ms))

    def alive(self, now: float) -> None:
        """Record that the server said something at ``now``."""
        self._last_alive = max(self._last_alive, now)

    def pong(self, now: float, pong: rtc.Pong) -> None:
        """Record a pong received at ``now`` (updates the round-trip time)."""
        self.alive(now)
        if pong.last_ping_timestamp:
            # Clamped: a server may echo any timestamp, and the next ping carries it.
            self.rtt_ms = min(max(0, int(now * 1000) - pong.last_ping_timestamp), _MAX_RTT_MS)

    def deadline(self) -> float:
        """The time at which, without a pong, the connection counts as dead."""
        return self._last_alive + self.timeout

    def expired(self, now: float) -> bool:
        return now > self.deadline()
