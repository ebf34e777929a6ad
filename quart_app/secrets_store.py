"""The session secret: from QUART_SECRET_KEY, else kept in the instance folder."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("quart_app")


def load_or_create_secret(instance_path: Path) -> str:
    """Read the kept key, or create it atomically (several workers may start at once)."""
    path = instance_path / "secret_key"
    if not path.exists():
        tmp = instance_path / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # fails if another worker won the race; then use theirs
            log.warning(
                "QUART_SECRET_KEY is not set: generated a secret key and kept it in the "
                "instance folder (secret_key) so sessions survive a restart"
            )
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    else:
        log.info("QUART_SECRET_KEY is not set: using the secret key kept in the instance folder")
    key = path.read_text().strip()
    if len(key) < 32:
        raise RuntimeError(f"the kept secret key in {path.name} is too short; delete the file")
    return key
