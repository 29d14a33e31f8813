"""A LiveKit-compatible development server (`DevServer`) for hermetic tests and demos."""

from room.devserver.auth import AuthError, Grants, mint_token, verify_token
from room.devserver.server import DevServer

__all__ = ["AuthError", "DevServer", "Grants", "mint_token", "verify_token"]
