"""Notifications: the controller's events (:class:`reconciler.controller.Event`) posted as
JSON to webhooks (``reconcile --watch --notify URL``).

- **Formats.** ``generic`` (snapctl's own document: a summary, counts by event and the
  events), ``slack`` (an incoming webhook's ``{"text": …}``) and ``lark`` (a Lark/Feishu
  custom bot's ``{"msg_type": "text", …}``). A URL picks its format with a prefix
  (``slack:https://…``, ``lark:https://…``, ``feishu:…``, ``generic:…``); without one,
  Slack's and Lark/Feishu's webhook hosts are recognized and anything else is generic.
- **Never blocking.** Observing an event only puts it on a bounded queue; a thread gathers
  them and each webhook has its own sender thread. When a queue is full the newest event
  (or message) is dropped and counted, and the next message says how many were.
- **Aggregated.** Events that come within ``window_s`` of the first one make one message:
  a thousand heals are one message with the count and the first addresses.
- **Retried.** Connection errors, timeouts, 429 and 5xx answers are retried with
  exponential backoff (``retry_base_s`` doubling up to ``retry_max_s``, at most
  ``attempts`` tries); other answers are final.
- **No secret.** Events hold addresses, StopReasons and error lines only (which snapctl
  keeps free of secret values); credentials in URLs (``scheme://user:password@``) and
  ``password=`` parameters are masked on top of that. Webhook URLs are secrets themselves:
  log lines name only their scheme and host.
"""

from __future__ import annotations

import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from .errors import UsageError

log = logging.getLogger("snapctl.notify")

FORMATS = ("generic", "slack", "lark")
_PREFIXES = {"generic": "generic", "slack": "slack", "lark": "lark", "feishu": "lark"}
_HOSTS = {
    "hooks.slack.com": "slack",
    "open.feishu.cn": "lark",
    "open.larksuite.com": "lark",
    "open.larkoffice.com": "lark",
}
#: Addresses listed per kind of event in one message; the rest are counted.
LISTED = 20
#: Events a message carries in full (the generic format); the rest are counted.
CARRIED = 200


@dataclass(frozen=True)
class Target:
    """One webhook: where and in which format."""

    url: str
    format: str

    @property
    def shown(self) -> str:
        """The URL as logs may show it: its scheme and host only (the path is often the secret)."""
        parts = urlsplit(self.url)
        return f"{self.format}:{parts.scheme}://{parts.hostname}/…"


def parse_target(text: str) -> Target:
    """``[FORMAT:]URL`` as a :class:`Target`; a UsageError (which never shows the URL) if it is not one."""
    head, sep, rest = text.partition(":")
    fmt = _PREFIXES.get(head.lower()) if sep and not rest.startswith("//") else None
    url = rest if fmt else text
    import httpx

    parts: SplitResult | None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port that is no number or out of range
        httpx.URL(url)  # as the sender will post to it: a control character, a bad host
    except (ValueError, httpx.InvalidURL):
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = f"{head}:…" if sep else "…"
        raise UsageError(
            f"--notify {shown}: not a webhook URL (http:// or https://, with a host, optionally after "
            f"{', '.join(p + ':' for p in _PREFIXES)})"
        )
    return Target(url, fmt or _HOSTS.get(parts.hostname.lower(), "generic"))


_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@]*):[^\s/@]*@")
_PASSWORD_PARAMETER = re.compile(r"(?i)\b((?:ssl)?password|secret[_-]?key|access[_-]?key|token)=[^\s&;,]+")


def scrub(text: str) -> str:
    """Mask credentials of URLs and ``password=…``-like parameters in a line."""
    return _PASSWORD_PARAMETER.sub(r"\1=***", _URL_CREDENTIALS.sub(r"\1:***@", text))


@dataclass(frozen=True)
class Message:
    """What one window of events says, before it is shaped for a webhook."""

    events: tuple[Any, ...]
    dropped: int
    first_at: float
    last_at: float
    host: str

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for event in self.events:
            counts[event.kind.value] = counts.get(event.kind.value, 0) + 1
        return counts

    @property
    def summary(self) -> str:
        parts = [f"{count} {kind.replace('_', ' ')}" for kind, count in self.counts.items()]
        if self.dropped:
            parts.append(f"{self.dropped} more event(s) dropped (queue full)")
        return f"snapctl on {self.host}: " + ", ".join(parts)

    def lines(self) -> list[str]:
        """The summary, then per kind its addresses (the first :data:`LISTED`) or its details."""
        lines = [self.summary]
        by_kind: dict[str, list[Any]] = {}
        for event in self.events:
            by_kind.setdefault(event.kind.value, []).append(event)
        for kind, events in by_kind.items():
            addresses = [e.address for e in events if e.address]
            if addresses:
                shown = ", ".join(addresses[:LISTED])
                more = f" and {len(addresses) - LISTED} more" if len(addresses) > LISTED else ""
                reasons = sorted({e.reason for e in events if e.reason})
                why = f" ({', '.join(reasons[:5])})" if reasons else ""
                lines.append(f"{kind.replace('_', ' ')}{why}: {shown}{more}")
            else:
                lines.extend(f"{kind.replace('_', ' ')}: {scrub(e.detail or e.reason or '')}" for e in events[:LISTED])
        return lines

    def payload(self, fmt: str) -> dict[str, Any]:
        """The JSON body for a webhook of format ``fmt``."""
        from .logs import rfc3339

        if fmt == "slack":
            return {"text": "\n".join(scrub(line) for line in self.lines())}
        if fmt == "lark":
            return {"msg_type": "text", "content": {"text": "\n".join(scrub(line) for line in self.lines())}}
        return {
            "source": "snapctl",
            "format_version": 1,
            "host": self.host,
            "from": rfc3339(self.first_at),
            "to": rfc3339(self.last_at),
            "summary": scrub(self.summary),
            "counts": self.counts,
            "dropped": self.dropped,
            "events": [
                {
                    "event": e.kind.value,
                    "at": rfc3339(e.at),
                    "address": e.address,
                    "reason": scrub(e.reason) if e.reason else e.reason,
                    "detail": scrub(e.detail),
                }
                for e in self.events[:CARRIED]
            ],
            "more_events": max(0, len(self.events) - CARRIED),
        }


class Notifier:
    """Posts the events it observes (call it with an event) to ``targets``; see the module's doc.
    With a Prometheus ``registry``, ``snapctl_notifications_total{outcome}`` counts messages
    sent, failed (given up after the retries) and dropped (a webhook's queue full)."""

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        window_s: float = 10.0,
        queue_size: int = 10_000,
        timeout_s: float = 10.0,
        attempts: int = 6,
        retry_base_s: float = 1.0,
        retry_max_s: float = 60.0,
        registry: Any = None,
    ):
        self.targets = list(targets)
        self.window_s = window_s
        self.attempts, self.retry_base_s, self.retry_max_s = attempts, retry_base_s, retry_max_s
        self._outcomes = None
        if registry is not None:
            from prometheus_client import Counter

            self._outcomes = Counter(
                "snapctl_notifications", "Notification messages by outcome", ["outcome"], registry=registry
            )
            for outcome in ("sent", "failed", "dropped"):
                self._outcomes.labels(outcome)
        self._events: queue.Queue[Any] = queue.Queue(queue_size)
        self._dropped = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._host = socket.gethostname()
        self._timeout_s = timeout_s
        self._outboxes: list[queue.Queue[Message | None]] = [queue.Queue(100) for _ in self.targets]
        self._threads = [threading.Thread(target=self._gather, name="snapctl-notify", daemon=True)]
        self._threads += [
            threading.Thread(target=self._send_all, args=(target, outbox), name="snapctl-notify-send", daemon=True)
            for target, outbox in zip(self.targets, self._outboxes)
        ]
        for thread in self._threads:
            thread.start()

    def __call__(self, event: Any) -> None:
        """Queue ``event``; never blocks (a full queue drops it and counts it)."""
        try:
            self._events.put_nowait(event)
        except queue.Full:
            with self._lock:
                self._dropped += 1

    def close(self, flush_s: float = 5.0) -> None:
        """Send what is gathered now, give the senders up to ``flush_s`` seconds, and stop."""
        self._stop.set()
        deadline = time.monotonic() + flush_s
        for thread in self._threads:  # a sender still waiting on a webhook then is left to die with the process
            thread.join(max(0.0, deadline - time.monotonic()))

    def _count(self, outcome: str) -> None:
        if self._outcomes is not None:
            self._outcomes.labels(outcome).inc()

    def _gather(self) -> None:
        while True:
            try:
                first = self._events.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    break
                continue
            events = [first]
            closes = time.monotonic() + self.window_s
            while not self._stop.is_set():
                wait = closes - time.monotonic()
                if wait <= 0:
                    break
                try:
                    events.append(self._events.get(timeout=min(wait, 0.2)))
                except queue.Empty:
                    pass
            while True:  # what came in meanwhile belongs to this message too
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            with self._lock:
                dropped, self._dropped = self._dropped, 0
            message = Message(tuple(events), dropped, events[0].at, events[-1].at, self._host)
            for outbox in self._outboxes:
                try:
                    outbox.put_nowait(message)
                except queue.Full:
                    self._count("dropped")
            if self._stop.is_set() and self._events.empty():
                break
        for outbox in self._outboxes:
            try:
                outbox.put_nowait(None)
            except queue.Full:
                pass

    def _send_all(self, target: Target, outbox: queue.Queue[Message | None]) -> None:
        import httpx

        with httpx.Client(timeout=self._timeout_s, follow_redirects=False) as http:
            while True:
                try:
                    message = outbox.get(timeout=0.2)
                except queue.Empty:
                    if self._stop.is_set() and not self._threads[0].is_alive():
                        return
                    continue
                if message is None:
                    return
                self._send(http, target, message)

    def _send(self, http: Any, target: Target, message: Message) -> None:
        import httpx

        body = message.payload(target.format)
        for attempt in range(1, self.attempts + 1):
            try:
                # Only the status is read: a webhook's body says nothing snapctl uses, and one that
                # never ends (or trickles) would hold this sender, and its memory, for ever.
                with http.stream("POST", target.url, json=body) as answer:
                    status = answer.status_code
                if status < 300:
                    self._count("sent")
                    return
                retry = status == 429 or status >= 500
                why = f"HTTP {status}"
            except httpx.HTTPError as exc:
                retry, why = True, type(exc).__name__
            if not retry or attempt == self.attempts or self._stop.is_set():
                log.warning("notification to %s not delivered: %s (attempt %d)", target.shown, why, attempt)
                self._count("failed")
                return
            delay = min(self.retry_max_s, self.retry_base_s * 2 ** (attempt - 1))
            log.info("notification to %s: %s; retrying in %.1fs", target.shown, why, delay)
            if self._stop.wait(delay):
                self._count("failed")
                return
