"""The command line, ``python -m room``: run a dev server, mint tokens, watch a room, demo.

Each verb is an async function run with ``anyio.run`` on the backend the user picks. Ctrl-C
(and SIGTERM) stop the running verb cleanly: rooms leave (the server is told), and the dev
server tells its participants it is shutting down; the exit code is then ``128 + signal``
(130 for Ctrl-C), without a traceback. `format_event` is the one-line
rendering of a room event that ``join`` and ``demo`` print; it is public so that tools and
tests can reuse it.

The modules: ``_format`` (event lines), ``_common`` (output, default keys), one per verb
(``_serve``, ``_token``, ``_join``, ``_demo``) and ``_main`` (the parser, signal handling,
`main`).
"""

from room.cli._format import format_event
from room.cli._main import build_parser, main

__all__ = ["build_parser", "format_event", "main"]
