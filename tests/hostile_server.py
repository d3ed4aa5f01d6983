"""A hostile API endpoint for tests: a small real HTTP server on 127.0.0.1 in front of an emulator.

Every request snapctl sends is forwarded, as signed, to the emulator (``upstream``), which
checks its signature, counts it and acts on it, so the emulator's counters say what was
sent. The answer comes back as the emulator gave it, except for a *rigged* call: an action
of one task (``rig(address, Hostile(...))``), answered instead with what the test chose,
in the manner it chose:

- ``task``: fields merged (deeply) into the emulator's own ``Result.SnapshotTask``, for
  a GetSnapshotTask answer of the documented envelope with a field of another type,
  shape or range (``{"ImageConfig": {"Width": "0"}}``, ``{"StartTime": 253402300800000}``);
  integers of any size (Python's JSON writes them);
- ``envelope``: fields merged into the whole answer (``{"ResponseMetadata": {"Error": ...}}``);
- ``body``: the raw bytes of the answer, as is;
- ``pad``: that many spaces after the JSON (still valid JSON), for oversized answers;
- ``gzip``: the body compressed, sent with ``Content-Encoding: gzip`` (a bomb, with ``pad``);
- ``chunked``: no ``Content-Length`` (``Transfer-Encoding: chunked``);
- ``trickle_s``: the body sent one byte at a time, that many seconds apart;
- ``status`` and ``headers``: the HTTP status and extra headers.

``sent_bytes`` records, for each rigged answer, how many body bytes went out before the
client stopped reading (or all of them); ``requests`` every request's action, address
and headers. Reads added later reuse it as is: rig their action by name.
"""

from __future__ import annotations

import gzip as gzip_module
import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "accept-encoding"}


@dataclass(frozen=True)
class Hostile:
    """How one rigged call is answered (see the module's docstring)."""

    task: dict[str, Any] | None = None
    envelope: dict[str, Any] | None = None
    body: bytes | None = None
    pad: int = 0
    gzip: bool = False
    chunked: bool = False
    trickle_s: float = 0.0
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    action: str
    address: str
    headers: dict[str, str]


def merged(base: Any, patch: Any) -> Any:
    """``patch`` merged into ``base``: mappings key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{key: merged(base.get(key), value) for key, value in patch.items()}}
    return patch


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    #: socketserver's default backlog is 5: of 64 connections opened at once (``--parallelism 64``)
    #: the rest waited in TCP's SYN retries (1 s, 3 s, 7 s) rather than being served.
    request_queue_size = 128


class HostileServer:
    """``with HostileServer(emulator.url) as hostile: hostile.rig("app/room/task", Hostile(...))``."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.rigged: dict[tuple[str, str], Hostile] = {}
        self.requests: list[Seen] = []
        self.sent_bytes: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._http = httpx.Client(timeout=30)
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-api", daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def rig(self, address: str, hostile: Hostile, *, action: str = "GetSnapshotTask") -> None:
        """Answer ``action`` of the task ``APP/ROOM/TASK`` with ``hostile`` from now on."""
        with self._lock:
            self.rigged[(action, address)] = hostile

    def unrig(self, address: str | None = None, *, action: str = "GetSnapshotTask") -> None:
        """Answer as the emulator does again: for ``address``, or for every task."""
        with self._lock:
            if address is None:
                self.rigged.clear()
            else:
                self.rigged.pop((action, address), None)

    # -- serving -------------------------------------------------------------------

    def _handler_class(self):
        hostile_server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                hostile_server._serve(self)

            def do_POST(self) -> None:
                hostile_server._serve(self)

        return Handler

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        split = urlsplit(handler.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        fields = query
        if handler.command == "POST":
            try:
                parsed = json.loads(body)
                fields = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                fields = {}
        address = "/".join(str(fields.get(name, "")) for name in ("AppId", "RoomId", "TaskId"))
        action = query.get("Action", "")
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.requests.append(Seen(handler.command, action, address, headers))
            hostile = self.rigged.get((action, address))
        forwarded = {name: value for name, value in headers.items() if name not in _HOP_BY_HOP}
        # The Host header stays as signed: the emulator checks the signature against it.
        answer = self._http.request(
            handler.command, self.upstream + handler.path, content=body or None, headers=forwarded
        )
        if hostile is None:
            self._send(handler, answer.status_code, answer.content, {"Content-Type": "application/json"})
            return
        self._send_hostile(handler, address, hostile, answer)

    def _send_hostile(self, handler, address: str, hostile: Hostile, answer: httpx.Response) -> None:
        if hostile.body is not None:
            payload = hostile.body
        else:
            document = answer.json()
            if hostile.task is not None:
                result = document.get("Result") if isinstance(document.get("Result"), dict) else {}
                task = merged(result.get("SnapshotTask") or {}, hostile.task)
                document["Result"] = {**result, "SnapshotTask": task}
                document["ResponseMetadata"].pop("Error", None)
            if hostile.envelope is not None:
                document = merged(document, hostile.envelope)
            payload = json.dumps(document, ensure_ascii=False).encode()  # any integer, as is
        payload += b" " * hostile.pad
        headers = {"Content-Type": "application/json", **hostile.headers}
        if hostile.gzip:
            payload = gzip_module.compress(payload, compresslevel=9)
            headers["Content-Encoding"] = "gzip"
        status = hostile.status or (200 if hostile.task is not None else answer.status_code)
        sent = self._send(handler, status, payload, headers, chunked=hostile.chunked, trickle_s=hostile.trickle_s)
        with self._lock:
            self.sent_bytes.setdefault(address, []).append(sent)

    def _send(
        self,
        handler,
        status: int,
        payload: bytes,
        headers: dict[str, str],
        *,
        chunked: bool = False,
        trickle_s: float = 0.0,
    ) -> int:
        """Send an answer; how many body bytes went out before the client hung up."""
        sent = 0
        try:
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            if chunked:
                handler.send_header("Transfer-Encoding", "chunked")
            else:
                handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            step = 1 if trickle_s else 64 * 1024
            for start in range(0, len(payload), step):
                if self._stopping.is_set():
                    break
                piece = payload[start : start + step]
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                handler.wfile.flush()
                sent += len(piece)
                if trickle_s:
                    time.sleep(trickle_s)
            if chunked:
                handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        return sent
