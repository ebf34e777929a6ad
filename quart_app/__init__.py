"""quart_app: trackable long-running jobs and live server push over Server-Sent Events."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quart import Quart
from quart_schema import tag_blueprint

from . import channels, db, edge, errors, logs, metrics, security, servers, sse, state
from .blueprints import api, generator, ops, pages, presence_api, publish_api, push
from .config import ConfigError, default_config, validate
from .routing import UrlMap
from .secrets_store import load_or_create_secret

__all__ = ["create_app", "sse"]

# Flask-SSE's spelling, ``await sse.publish(data, type=..., channel=...)``: the
# encoder module carries the publish function that lives with the channels.
sse.publish = channels.publish
# /api/v1 routes in modules of their own (POST /api/v1/publish, presence) are part of
# the /api/v1 blueprint: its envelope, its error handlers.
api.bp.register_blueprint(publish_api.bp)
api.bp.register_blueprint(presence_api.bp)

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("quart_app")


class App(Quart):
    # Matching a request leaves no garbage cycle behind (see routing.py).
    url_map_class = UrlMap


def create_app(config: Mapping[str, Any] | None = None) -> Quart:
    """The app, configured from the defaults, the environment and ``config``.

    A bad setting raises :class:`~quart_app.config.ConfigError`; when a server's
    worker is loading the app (Hypercorn, Granian), it ends that worker with the
    setting's one line instead of a traceback.
    """
    try:
        return _build(config)
    except ConfigError as error:
        if servers.serving_under() is None:
            raise
        raise SystemExit(error.line()) from None


def _build(config: Mapping[str, Any] | None) -> Quart:
    overrides = dict(config or {})
    instance = overrides.get("INSTANCE_PATH") or os.environ.get("QUART_INSTANCE_PATH")
    app = App(
        __name__,
        instance_path=str(Path(instance).resolve()) if instance else None,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    app.config.update(default_config())
    app.config.from_prefixed_env()
    app.config.update(overrides)
    app.config.update(validate(app.config))
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_or_create_secret(Path(app.instance_path))
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    logs.init_app(app)

    errors.init_app(app)
    security.init_app(app)
    app_state = state.init_app(app)

    app.register_blueprint(generator.bp)
    app.register_blueprint(push.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(pages.bp)
    db.init_app(app, app_state)
    channels.init_app(app, app_state)
    app_state.stats = metrics.init_app(app_state, app.config)
    api.init_app(app)
    tag_blueprint(ops.bp, ["operations"])
    # Last: the edge wraps the finished ASGI app (proxies, framing, budgets).
    edge.init_app(app)
    return app
