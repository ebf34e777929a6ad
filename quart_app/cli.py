"""``python -m quart_app``: the server (Hypercorn's arguments, :func:`lifecycle.main`),
or ``python -m quart_app publish ...`` (:func:`publish_command`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .lifecycle import main as serve


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["publish"]:
        return publish_command(args[1:])
    return serve(args)


def publish_command(argv: Sequence[str]) -> int:
    """``python -m quart_app publish CHANNEL JSON [--event TYPE] [--idempotency-key KEY]
    [--url BASE_URL]``.

    Prints the event's id and exits 0; otherwise one line on stderr, status 1
    (the publish failed) or 2 (the command or a setting is wrong).
    """
    import argparse
    import json

    from .config import ConfigError
    from .publisher import HTTPPublisher, publish

    parser = argparse.ArgumentParser(
        prog="python -m quart_app publish",
        description="Publish one event to a channel of a running quart_app: through "
        "QUART_BROKER_URL (Redis), or with --url through the server's POST "
        "/channels/<name> and QUART_PUBLISH_TOKEN.",
    )
    parser.add_argument("channel")
    parser.add_argument("data", metavar="JSON", help="the event's data, any JSON value")
    parser.add_argument("--event", default=None, help="the event type (default: message)")
    parser.add_argument(
        "--idempotency-key",
        default=None,
        metavar="KEY",
        help="1-64 characters: the same key again within the server's "
        "PUBLISH_IDEMPOTENCY_S prints the first id and publishes nothing (safe retries)",
    )
    parser.add_argument("--url", default=None, help="the server's base URL (over HTTP)")
    options = parser.parse_args(list(argv))
    try:
        data = json.loads(options.data)
    except ValueError as error:
        print(f"quart_app publish: JSON is not valid JSON ({error})", file=sys.stderr)
        return 2
    key = options.idempotency_key
    try:
        if options.url is not None:
            event_id = HTTPPublisher(options.url).publish_sync(
                data, type=options.event, channel=options.channel, idempotency_key=key
            )
        else:
            event_id = publish(
                data, type=options.event, channel=options.channel, idempotency_key=key
            )
    except ConfigError as error:
        print(error.line("quart_app publish"), file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"quart_app publish: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # one line, whatever went wrong (Redis away, 401, ...)
        print(f"quart_app publish: {error}", file=sys.stderr)
        return 1
    print(event_id)
    return 0
