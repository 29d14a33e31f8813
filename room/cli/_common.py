"""What the verbs share: the default API key and secret, and line-by-line output."""


from __future__ import annotations

import sys
from typing import TextIO

__all__: list[str] = []

_DEFAULT_KEY = "devkey"
_DEFAULT_SECRET = "secret"


def _say(text: str = "", *, file: TextIO | None = None) -> None:
    # Flushed line by line: the output is meant to be watched live, often through a pipe.
    print(text, file=file or sys.stdout, flush=True)


def _error(text: str) -> None:
    _say(f"error: {text}", file=sys.stderr)

