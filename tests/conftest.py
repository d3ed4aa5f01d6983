"""Shared fixtures. The emulator's come first; add others below them."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from reconciler import signing
from reconciler.api import API_VERSION
from reconciler.emulator import EmulatorConfig, EmulatorServer

# -- emulator ------------------------------------------------------------------


class Emulator:
    """A started EmulatorServer and an HTTP client that signs like snapctl does."""

    def __init__(self, server: EmulatorServer):
        self.server = server
        self.config = server.config
        self.url = server.url
        self.host = urlparse(server.url).netloc
        self.http = httpx.Client(base_url=server.url, timeout=10)

    def signed_post(
        self,
        action: str,
        body: dict[str, Any] | bytes,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str = "",
        region: str | None = None,
        x_date: str | None = None,
        query: dict[str, str] | None = None,
        sign_body: bytes | None = None,
        headers: dict[str, str] | None = None,
        drop: Iterable[str] = (),
        timeout: float | None = None,
    ) -> httpx.Response:
        """POST an action signed with the emulator's credentials unless overridden.

        ``sign_body`` signs other bytes than those sent; ``headers`` are set after
        signing and ``drop`` removes headers, to build broken requests.
        """
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        query = {"Action": action, "Version": API_VERSION} if query is None else query
        key = signing.SigningKey(
            access_key or self.config.access_key, secret_key or self.config.secret_key, session_token
        )
        signed = signing.sign_request(
            key=key,
            method="POST",
            host=self.host,
            path="/",
            query=query,
            content_type="application/json",
            body=raw if sign_body is None else sign_body,
            region=region or self.config.region,
            x_date=x_date,
        )
        sent = {"Content-Type": "application/json", **signed, **(headers or {})}
        for name in drop:
            sent.pop(name, None)
        return self.http.post("/", params=query, content=raw, headers=sent, timeout=timeout or self.http.timeout)

    def signed_get(
        self, parameters: dict[str, str], *, action: str = "GetSnapshotTask", session_token: str = ""
    ) -> httpx.Response:
        """GET / with Action, Version and ``parameters`` in the query, signed as snapctl signs a read."""
        query = {"Action": action, "Version": API_VERSION, **parameters}
        key = signing.SigningKey(self.config.access_key, self.config.secret_key, session_token)
        signed = signing.sign_request(
            key=key,
            method="GET",
            host=self.host,
            path="/",
            query=query,
            content_type=None,
            body=b"",
            region=self.config.region,
        )
        return self.http.get("/", params=query, headers=signed)

    def read(self, app: str, room: str, task: str) -> dict[str, Any]:
        """GetSnapshotTask's SnapshotTask (the test fails on an error answer)."""
        response = self.signed_get({"AppId": app, "RoomId": room, "TaskId": task})
        assert response.status_code == 200, response.text
        return response.json()["Result"]["SnapshotTask"]

    def admin(self, path: str, payload: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.post(f"/_emulator/{path}", json=payload or {})

    def configure(self, **settings: Any) -> dict[str, Any]:
        response = self.admin("config", settings)
        assert response.status_code == 200, response.text
        return response.json()

    def tasks(self) -> list[dict[str, Any]]:
        return self.http.get("/_emulator/tasks").json()["tasks"]

    def stats(self) -> dict[str, Any]:
        return self.http.get("/_emulator/stats").json()

    def reset(self) -> None:
        """Forget tasks and counters, and go back to the settings the server started with."""
        assert self.admin("reset").status_code == 200
        self.configure(**self.config.runtime())

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="session")
def _shared_emulator_server():
    with EmulatorServer(EmulatorConfig()) as server:
        yield server


@pytest.fixture
def emulator(_shared_emulator_server) -> Emulator:
    """An emulator with default settings, no tasks and zeroed counters (shared across tests, reset for each)."""
    harness = Emulator(_shared_emulator_server)
    harness.reset()
    yield harness
    harness.close()


@pytest.fixture
def make_emulator():
    """Start dedicated emulators: ``make_emulator(drop_rate=1, seed=3)``; all are stopped after the test.
    ``clock``: the monotonic clock its rate limits read (default: the real one)."""
    started: list[Emulator] = []

    def make(*, clock: Callable[[], float] = time.monotonic, **settings: Any) -> Emulator:
        harness = Emulator(EmulatorServer(EmulatorConfig(**settings), clock=clock).start())
        started.append(harness)
        return harness

    yield make
    for harness in started:
        harness.close()
        harness.server.stop()


# -- PostgreSQL ------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server for this test process (each xdist worker has its own).

    When none can be started every test that needs it fails with the reason: the
    suite never skips the database silently."""
    from pg_server import PgServer, PgServerError

    server = PgServer()
    try:
        server.start()
        failure = None
    except (PgServerError, OSError, subprocess.SubprocessError) as exc:
        server.stop()
        failure = f"cannot start the test PostgreSQL server: {exc}"
    if failure is not None:  # outside the except block: one message, not the exception chained twice
        pytest.fail(failure, pytrace=False)
    yield server
    # The test run does not wait for its databases' files to be deleted (seconds, at its very end).
    server.stop(remove_in_background=True)


@pytest.fixture
def pg(pg_server):
    """The test server with a new empty database: ``pg.state_url`` is a snapctl ``--state`` URL."""
    name = pg_server.new_database()
    return PgDatabase(pg_server, name)


class PgDatabase:
    def __init__(self, server, dbname: str):
        self.server = server
        self.dbname = dbname
        #: The URL with its password, as a CI secret would hold it.
        self.state_url = server.url(dbname)
        self.password = server.password

    def query(self, sql: str, *params: Any) -> list[tuple]:
        with self.server.admin(self.dbname) as conn:
            cur = conn.execute(sql, params or None)
            return cur.fetchall() if cur.description else []


# -- a hostile API ----------------------------------------------------------------


@pytest.fixture
def hostile(emulator):
    """A :class:`hostile_server.HostileServer` in front of the ``emulator``: rig the answers
    of chosen tasks (``hostile.rig(ADDRESS, Hostile(...))``); everything else is the emulator's."""
    from hostile_server import HostileServer

    with HostileServer(emulator.url) as server:
        yield server
