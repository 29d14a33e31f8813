"""The exception hierarchy: everything `room` raises on purpose derives from `RoomError`."""

from __future__ import annotations

__all__ = [
    "RoomError",
    "ConnectError",
    "ConnectionClosedError",
    "RequestRefusedError",
    "RequestTimeoutError",
    "EventStreamOverflowError",
    "PublishDataError",
    "RpcError",
    "UnsupportedFeatureError",
]


class RoomError(Exception):
    """Base class of every error `room` raises on purpose."""


class ConnectError(RoomError):
    """Joining the room failed; the message says why and never contains the token."""


class ConnectionClosedError(RoomError):
    """The operation needs a connected room, and the room is disconnected (or disconnecting)."""


class RequestRefusedError(RoomError):
    """The server refused a request (for example a metadata update without permission).

    ``reason`` is the name of LiveKit's ``RequestResponse.Reason`` (``"NOT_ALLOWED"``, ...).
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"server refused the request ({reason}): {message}" if message
                         else f"server refused the request ({reason})")


class RequestTimeoutError(RoomError):
    """The server did not answer a request in time."""


class EventStreamOverflowError(RoomError):
    """An ``events()`` subscriber fell too far behind: its buffer filled up.

    Raised by the subscriber's iterator after the events it had buffered, instead of
    silently dropping the ones that did not fit. Make the budget larger
    (``RoomOptions.event_buffer_bytes``, or ``event_buffer_size`` if you set that) or
    consume faster (see docs/events.md).
    """


class PublishDataError(RoomError):
    """A data packet could not be published (too large, or no permission, or closed room)."""


class RpcError(RoomError):
    """An RPC call failed; ``code`` is one of LiveKit's RPC error codes."""

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        super().__init__(f"RPC error {code}: {message}")


class UnsupportedFeatureError(RoomError, NotImplementedError):
    """An option asks for something `room` does not implement yet.

    Raised when the options are built (``RoomOptions(dynacast=True)``,
    ``RoomOptions(e2ee=...)``, ``RtcConfiguration(continual_gathering_policy=
    ContinualGatheringPolicy.GATHER_CONTINUALLY)``), never later: an option `room` would
    silently ignore is refused instead. The message says what to do instead. It is a
    `NotImplementedError` (the value is valid, the implementation is missing) and a
    `RoomError`.
    """
