"""gpuscope.viewer: a Flask app that shows captures — the verdict, then a
timeline that stays fast on large and growing traces."""

from __future__ import annotations

import os

from flask import Flask


def create_app(test_config: dict | None = None) -> Flask:
    """Configuration: defaults, then GPUSCOPE_* environment variables
    (GPUSCOPE_DATA_DIR, GPUSCOPE_CACHE_DIR, GPUSCOPE_LIVE_SECONDS), then
    test_config."""
    app = Flask(__name__)
    app.config.from_mapping(DATA_DIR=os.getcwd(), CACHE_DIR=None, LIVE_SECONDS=30,
                            POLL_MS=500, OPEN_TRACE=None)
    app.config.from_prefixed_env("GPUSCOPE")
    if test_config:
        app.config.from_mapping(test_config)

    from . import api, pages, store

    store.init_app(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    return app
