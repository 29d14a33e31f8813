"""``python -m room``: the command line (see `room.cli`)."""

from room.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
