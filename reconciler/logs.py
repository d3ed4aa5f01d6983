"""Diagnostic logging, off unless ``SNAPCTL_LOG`` names a level.

``SNAPCTL_LOG=debug|info|warning|error`` turns it on; records go to stderr, or
are appended to ``SNAPCTL_LOG_PATH``. Records name tasks, actions, outcomes,
API error codes and request ids: never request bodies, so never secrets.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

LOGGER = logging.getLogger("snapctl")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(environ: Mapping[str, str] | None = None) -> None:
    """Set up the diagnostic log from ``SNAPCTL_LOG``/``SNAPCTL_LOG_PATH``; a UsageError
    names a log file that cannot be written."""
    env = os.environ if environ is None else environ
    name = env.get("SNAPCTL_LOG", "").strip().lower()
    if not name or name in ("0", "off", "false"):
        # Off means off: without a handler, Python's last resort would print warnings on stderr.
        if not LOGGER.handlers:
            LOGGER.addHandler(logging.NullHandler())
        LOGGER.propagate = False
        # Nor for libraries' loggers (asyncio, httpx): they would reach the last resort too.
        logging.getLogger().addHandler(logging.NullHandler())
        return
    path = env.get("SNAPCTL_LOG_PATH", "")
    handler: logging.Handler
    if path:
        from .errors import UsageError
        from .runenv import check_log_path

        check_log_path(path)
        try:
            handler = logging.FileHandler(path, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"SNAPCTL_LOG_PATH {path}: cannot append to it ({exc.strerror})") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(LEVELS.get(name, logging.DEBUG))
    LOGGER.propagate = False


def client_event(event: str, fields: dict[str, Any]) -> None:
    """The client's events (retries) as log records."""
    LOGGER.getChild("client").info("%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))
