"""``python -m tests.faultproxy``: `room.testing.proxy.TcpProxy` in a process of its own.

The proxy itself (cut, stall, refuse) is part of the testing toolkit; this module runs it
where the test process cannot, e.g. inside a test network namespace.
"""

from __future__ import annotations

from room.testing.proxy import TcpProxy

__all__ = ["TcpProxy"]


def main() -> None:
    """``python -m tests.faultproxy --listen HOST:PORT --target HOST:PORT``: a `TcpProxy`
    in a process of its own (e.g. inside a test network namespace, where the test process
    cannot run one on loopback for peers that ignore loopback).

    Prints ``{"port": N}`` once it listens (``PORT`` 0: any free port), then reads one
    command a line from stdin until EOF, answering each with one JSON line: ``cut`` ->
    ``{"cut": n, "t": T}`` (``T``: ``time.monotonic()`` just before cutting, comparable
    with other processes' on this machine), ``stall``, ``unstall``, ``refuse``, ``accept``
    -> ``{"ok": "stall"}`` etc., ``stats`` -> ``{"connections": n, "cuts": n}``.
    """
    import argparse
    import json
    import sys
    import time

    import anyio.to_thread

    def address(text: str) -> tuple[str, int]:
        host, _, port = text.rpartition(":")
        return host, int(port)

    parser = argparse.ArgumentParser(description="a TCP proxy that cuts on command")
    parser.add_argument("--listen", type=address, required=True, help="HOST:PORT")
    parser.add_argument("--target", type=address, required=True, help="HOST:PORT")
    args = parser.parse_args()

    def say(**fields: object) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    async def run() -> None:
        proxy = TcpProxy(*args.target)
        listen_host, listen_port = args.listen
        listener = await anyio.create_tcp_listener(local_host=listen_host,
                                                   local_port=listen_port)
        proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, proxy._handle)
            say(port=proxy.port)
            while line := await anyio.to_thread.run_sync(sys.stdin.readline,
                                                         abandon_on_cancel=True):
                match line.strip():
                    case "":
                        continue
                    case "cut":
                        t = time.monotonic()
                        say(cut=proxy.cut(), t=t)
                    case "stall" | "unstall" | "refuse" | "accept" as name:
                        getattr(proxy, name)()
                        say(ok=name)
                    case "stats":
                        say(connections=proxy.connections, cuts=proxy.cuts)
                    case other:
                        say(error=f"unknown command {other!r}")
            tg.cancel_scope.cancel()  # stdin closed: stop

    anyio.run(run)


if __name__ == "__main__":
    main()
