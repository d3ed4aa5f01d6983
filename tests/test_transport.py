"""The client's connection pool (reconciler/transport.py), against a real HTTP/1.1
server on 127.0.0.1 that counts its connections and can close idle ones, as a
server's keep-alive timeout does."""

from __future__ import annotations

import asyncio
import ssl
import subprocess

import httpx
import pytest

from reconciler.transport import Transport


class CountingServer:
    """HTTP/1.1 with keep-alive: answers every request ``ok`` after ``delay_s``;
    counts the connections it accepted; ``drop_idle(keep=...)`` closes its idle ones."""

    def __init__(self, delay_s: float = 0.02, tls: ssl.SSLContext | None = None):
        self.delay_s = delay_s
        self.tls = tls
        self.accepted: list[asyncio.StreamWriter] = []
        self.idle: set[asyncio.StreamWriter] = set()
        self.requests = 0

    async def __aenter__(self) -> CountingServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for writer in self.accepted:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(writer)
        try:
            while True:
                self.idle.add(writer)
                head = await reader.readuntil(b"\r\n\r\n")
                self.idle.discard(writer)
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests += 1
                await asyncio.sleep(self.delay_s)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.idle.discard(writer)
            writer.close()

    async def drop_idle(self, keep: asyncio.StreamWriter | None = None) -> int:
        """Close every idle connection but ``keep``, as a keep-alive timeout would."""
        dropped = [writer for writer in self.idle if writer is not keep]
        for writer in dropped:
            writer.close()
        await asyncio.sleep(0.05)  # the FINs reach the client
        return len(dropped)


def client(limit: int) -> tuple[httpx.AsyncClient, Transport]:
    transport = Transport(limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit))
    return httpx.AsyncClient(transport=transport), transport


def test_concurrent_requests_share_at_most_the_limit_of_connections_and_reuse_them():
    async def scenario():
        async with CountingServer() as server:
            http, transport = client(5)
            async with http:
                for _ in range(3):
                    answers = await asyncio.gather(*(http.post(server.url, content=b"{}") for _ in range(40)))
                    assert [a.status_code for a in answers] == [200] * 40
                    assert len(transport.connections) <= 5
            return server.requests, len(server.accepted)

    requests, accepted = asyncio.run(scenario())
    assert requests == 120
    # Three waves of 40 over five connections: opened once, then kept and reused.
    assert 1 <= accepted <= 5


def test_a_connection_the_server_closed_is_never_sent_on():
    async def scenario():
        async with CountingServer(delay_s=0.005) as server:
            http, transport = client(4)
            async with http:
                await asyncio.gather(*(http.get(server.url) for _ in range(12)))
                opened = len(server.accepted)
                assert await server.drop_idle() == opened
                # Every pooled connection is now closed by the server: each request must
                # find that out before sending, and open a new connection instead.
                for _ in range(6):
                    assert (await http.get(server.url)).status_code == 200
                answers = await asyncio.gather(*(http.get(server.url) for _ in range(12)))
                assert [a.status_code for a in answers] == [200] * 12
                assert len(transport.connections) <= 4
            return opened, len(server.accepted)

    opened, accepted = asyncio.run(scenario())
    assert accepted > opened  # new connections replaced the closed ones


def test_idle_connections_the_server_closed_are_let_go_of_while_another_serves():
    async def scenario():
        async with CountingServer(delay_s=0.005) as server:
            http, transport = client(5)
            async with http:
                await http.get(server.url)  # the pool's first connection, and the server's
                await asyncio.gather(*(http.get(server.url) for _ in range(15)))
                before = len(server.accepted)
                assert len(transport.connections) == before > 1
                # The server drops all but the first connection; one request at a time
                # keeps reusing that first one, and the pool's sweep (one idle connection
                # probed per pass) finds and closes the dropped ones.
                await server.drop_idle(keep=server.accepted[0])
                for _ in range(4 * len(server.accepted)):
                    assert (await http.get(server.url)).status_code == 200
                return len(transport.connections), before, len(server.accepted)

    pooled, before, accepted = asyncio.run(scenario())
    assert pooled == 1
    assert accepted == before  # nothing new was opened: the first connection served every request


def test_tls_connections_verify_the_server_and_are_reused(tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def scenario(trusted: bool):
        async with CountingServer(delay_s=0.005, tls=tls) as server:
            if trusted:
                monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # as a user points at a private CA
            else:
                monkeypatch.delenv("SSL_CERT_FILE", raising=False)
            http, transport = client(3)
            async with http:
                for _ in range(2):
                    answers = await asyncio.gather(*(http.get(server.url) for _ in range(9)))
                    assert [a.status_code for a in answers] == [200] * 9
                assert len(transport.connections) <= 3
            return len(server.accepted)

    assert 1 <= asyncio.run(scenario(trusted=True)) <= 3
    # The same server, its certificate not trusted: refused before any request is sent.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(scenario(trusted=False))
