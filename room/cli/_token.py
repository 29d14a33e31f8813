"""``python -m room token``: print an access token."""


from __future__ import annotations

import argparse

from room.cli._common import _say
from room.devserver.auth import mint_token

__all__: list[str] = []


def _token(args: argparse.Namespace) -> int:
    try:
        token = mint_token(
            args.api_key, args.api_secret, args.identity, room=args.room, name=args.name,
            metadata=args.metadata, attributes=dict(args.attribute), ttl=args.ttl,
            hidden=args.hidden, can_publish=not args.no_publish,
            can_subscribe=not args.no_subscribe, can_publish_data=not args.no_publish_data,
            can_update_own_metadata=not args.no_update_metadata)
    except ValueError as exc:
        args.verb_parser.error(str(exc))
    _say(token)
    return 0
