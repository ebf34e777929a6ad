"""The history schema from the command line: ``python -m quart_app.migrations COMMAND``.

It reads the application's configuration (``QUART_DATABASE_URL``,
``QUART_INSTANCE_PATH``...), as the server does.

* ``current`` prints the database's revision and this release's head;
* ``check`` exits 1 unless the database is at the head (a deploy step);
* ``upgrade`` upgrades to the head under the same lock as start-up, so a
  release can migrate before its workers start (they then find the head);
* ``revision -m MESSAGE`` (developers) writes the next revision into
  ``versions/``, with the operations that would bring a database at the head
  to ``db.tables.metadata`` (Alembic's autogenerate: read it, then edit it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from . import SchemaError, alembic_config, current, head, lock, migrate


async def run(command: str, message: str | None = None) -> int:
    from .. import create_app
    from ..db.engine import create_engine
    from ..state import get_state

    history = get_state(create_app()).history
    engine = create_engine(history.url, history.engine_options)
    target = head()
    try:
        async with engine.connect() as conn:
            if command == "upgrade":
                await conn.run_sync(lock)
                before, after = await conn.run_sync(
                    lambda sync: migrate(sync, url=history.display_url)
                )
                await conn.commit()
                print(f"{history.display_url}: {before or '(empty)'} -> {after}")
                return 0
            found = await conn.run_sync(current)
            if command == "revision" and found == target:
                await conn.run_sync(lambda sync: _revision(sync, message or "change"))
                return 0
    except SchemaError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    print(f"{history.display_url}: revision {found or '(none)'}, head {target}")
    if command in ("check", "revision") and found != target:
        print("the database is not at the head revision: run `upgrade`", file=sys.stderr)
        return 1
    return 0


def _revision(connection: Any, message: str) -> None:
    from alembic import command

    number = int(head()) + 1
    config = alembic_config(connection)
    command.revision(config, message, autogenerate=True, rev_id=f"{number:04d}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quart_app.migrations",
        description="Show, check or upgrade the history database's schema revision.",
    )
    parser.add_argument("command", choices=["current", "check", "upgrade", "revision"])
    parser.add_argument("-m", "--message", help="what a new revision does (revision)")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.command, args.message))


if __name__ == "__main__":
    sys.exit(main())
