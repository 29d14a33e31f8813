"""Interop with the official LiveKit SDK, run inside a network namespace (tests/netns.py)."""
