"""Diagnostic logging, off unless ``SNAPCTL_LOG`` names a level.

``SNAPCTL_LOG=debug|info|warning|error`` turns it on; records go to stderr, or
are appended to ``SNAPCTL_LOG_PATH``. Records name tasks, actions, outcomes,
API error codes and request ids: never request bodies, so never secrets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

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
            handler = _FileLog(path, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"SNAPCTL_LOG_PATH {path}: cannot append to it ({exc.strerror})") from None
    else:
        handler = _StreamLog(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(LEVELS.get(name, logging.DEBUG))
    LOGGER.propagate = False


class _SaysOnce(logging.Handler):
    """A diagnostic log that cannot take a record (a full disk, a closed stderr) is said once on
    stderr and logs no more: Python's own prints a traceback on stderr for every record, and a
    run goes on whatever becomes of its log."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)  # the file or stream handler's

    def handleError(self, record: logging.LogRecord) -> None:
        if self.broken:
            return
        self.broken = True
        error = sys.exc_info()[1]
        reason = getattr(error, "strerror", None) or error
        where = getattr(self, "baseFilename", "on stderr")
        with contextlib.suppress(Exception):
            sys.stderr.write(f"Warning: cannot write the diagnostic log {where} ({reason}); nothing more is logged.\n")
            sys.stderr.flush()


class _FileLog(_SaysOnce, logging.FileHandler):
    pass


class _StreamLog(_SaysOnce, logging.StreamHandler):
    pass


def client_event(event: str, fields: dict[str, Any]) -> None:
    """The client's events (retries) as log records."""
    LOGGER.getChild("client").info("%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))


#: The line formats of a long-running command (``reconcile --watch --log-format``).
LINE_FORMATS = ("text", "json")


def rfc3339(at: float | None = None) -> str:
    """``at`` (seconds since the epoch; now by default) as RFC 3339 UTC with milliseconds."""
    import datetime

    moment = datetime.datetime.fromtimestamp(time.time() if at is None else at, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamp(line: str, fmt: str, *, stream: str, at: float | None = None) -> str:
    """One output line with its time. ``text``: ``TIME line``; ``json``: an object with
    ``time``, ``level``, ``stream`` and ``message``. A line that is a JSON object already
    (a ``--json`` document) gets ``time`` as its first key in either format, so it stays one
    parseable document."""
    import orjson

    when = rfc3339(at)
    if line.startswith("{"):
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError:
            document = None
        if isinstance(document, dict):
            return orjson.dumps({"time": when} | {k: v for k, v in document.items() if k != "time"}).decode()
    if fmt == "text":
        return f"{when} {line}" if line else when
    plain = _ANSI.sub("", line)
    level = "error" if plain.startswith("Error") else "warning" if plain.startswith("Warning") else "info"
    return orjson.dumps({"time": when, "level": level, "stream": stream, "message": plain}).decode()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class StampedStream:
    """A text stream that writes each complete line through :func:`stamp` to ``target``
    (thread-safe; a partial line waits for its end, or for :meth:`close`)."""

    def __init__(self, target: TextIO, fmt: str, name: str):
        self._target, self._fmt, self._name = target, fmt, name
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._pending = (self._pending + text).split("\n")
            for line in lines:
                self._target.write(stamp(line, self._fmt, stream=self._name) + "\n")
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def close(self) -> None:
        with self._lock:
            if self._pending:
                self._target.write(stamp(self._pending, self._fmt, stream=self._name) + "\n")
                self._pending = ""
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()

    @property
    def encoding(self) -> str:
        return getattr(self._target, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:
        return getattr(self._target, "errors", None) or "strict"


class StampedFormatter(logging.Formatter):
    """Diagnostic log records as :func:`stamp` lines: RFC 3339 UTC, text or JSON."""

    def __init__(self, fmt: str):
        super().__init__("%(levelname)s %(name)s[%(process)d]: %(message)s")
        self._line_format = fmt

    def format(self, record: logging.LogRecord) -> str:
        if self._line_format == "text":
            return stamp(super().format(record), "text", stream="log", at=record.created)
        import orjson

        document = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "stream": "log",
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document).decode()


@contextlib.contextmanager
def stamped_lines(fmt: str) -> Iterator[None]:
    """While inside: every line written to stdout and stderr, and every diagnostic log
    record, carries its time (RFC 3339 UTC), as text or JSON (``fmt``)."""
    streams = {"stdout": sys.stdout, "stderr": sys.stderr}
    stamped = {name: StampedStream(stream, fmt, name) for name, stream in streams.items()}
    formatters = [(handler, handler.formatter) for handler in LOGGER.handlers]
    for handler, _ in formatters:
        handler.setFormatter(StampedFormatter(fmt))
    sys.stdout, sys.stderr = stamped["stdout"], stamped["stderr"]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams["stdout"], streams["stderr"]
        for stream in stamped.values():
            stream.close()
        for handler, formatter in formatters:
            handler.setFormatter(formatter)
