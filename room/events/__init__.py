"""Room events: frozen dataclasses, delivered by `Room.events()` subscriptions."""

from room.events._types import *  # noqa: F403
from room.events._types import __all__ as _types_all
from room.events.hub import BufferStatistics, EventHub, Subscription

__all__ = [*_types_all, "BufferStatistics", "EventHub", "Subscription"]
