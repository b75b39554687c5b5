"""The store: the capture directory and one trace index per capture, reached
from requests through get_store()."""

from __future__ import annotations

import hashlib
import os
import threading

from flask import Flask, current_app

from . import sessions
from .index import Index


class Store:
    def __init__(self, directory: str, cache_dir: str | None = None, live_s: float = 30.0):
        self.directory = os.path.realpath(directory)
        self.cache_dir = cache_dir or self._default_cache()
        self.live_s = live_s
        self._indexes: dict[str, Index] = {}
        self._lock = threading.Lock()

    def _default_cache(self) -> str:
        beside = os.path.join(self.directory, ".gpuscope-index")
        if os.access(self.directory, os.W_OK):
            return beside
        key = hashlib.sha1(self.directory.encode()).hexdigest()[:16]
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return os.path.join(base, "gpuscope", "index", key)

    def captures(self) -> list[sessions.Capture]:
        return sessions.list_captures(self.directory, self.live_s)

    def capture(self, name: str) -> sessions.Capture | None:
        return sessions.find(self.directory, name, self.live_s)

    def index(self, cap: sessions.Capture) -> Index:
        with self._lock:
            ix = self._indexes.get(cap.name)
            if ix is None:
                ix = self._indexes[cap.name] = Index(
                    cap.trace, os.path.join(self.cache_dir, cap.name + ".sqlite"))
            return ix


def get_store() -> Store:
    return current_app.extensions["gpuscope_store"]


def init_app(app: Flask) -> None:
    app.extensions["gpuscope_store"] = Store(app.config["DATA_DIR"], app.config.get("CACHE_DIR"),
                                             float(app.config.get("LIVE_SECONDS", 30)))
