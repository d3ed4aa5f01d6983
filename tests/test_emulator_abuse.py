"""The emulator under a few hundred seeded malformed requests.

Requests are written byte for byte on raw sockets (well-formed HTTP/1.1, so what
is tested is the emulator, not uvicorn's HTTP parser): bodies of random bytes,
truncated or deeply nested JSON, huge numbers, wrong types and odd unicode, sent
with a valid signature so they reach the body checks; missing and garbled
Authorization, X-Date and Content-Type; empty, repeated and garbage Action and
Version. Every answer must be the API's error envelope with a 4xx status (faults
are off, so never a 5xx), the emulator must keep serving, and a valid signed
request must still succeed afterwards.
"""

from __future__ import annotations

import itertools
import json
import random
import socket
from urllib.parse import quote

import pytest

from reconciler import signing
from reconciler.api import API_VERSION, ERROR_CODES
from reconciler.emulator import EmulatorConfig, EmulatorServer

SEED = 424242
ACTIONS = ("StartSnapshot", "UpdateSnapshot", "StopSnapshot")
VALID_START = {
    "AppId": "abuse",
    "RoomId": "Room",
    "TaskId": "Task",
    "MaxIdleTime": 180,
    "ImageConfig": {"Format": 0, "Width": 320, "Height": 240, "Interval": 2},
    "StorageConfig": {"Type": 0, "TosConfig": {"AccountId": "2100000990", "Region": 0, "Bucket": "b"}},
}


class Raw:
    """An HTTP/1.1 client on a raw socket: every byte of the request is ours."""

    def __init__(self, url: str):
        self.host = url.removeprefix("http://")
        self.port = int(self.host.rsplit(":", 1)[1])
        self.config = EmulatorConfig()

    def send(
        self, method: str, target: str, headers: list[tuple[str, bytes]], body: bytes = b""
    ) -> tuple[int, dict, bytes]:
        lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
        names = {name.lower() for name, _ in headers}
        if "host" not in names:
            lines.append(b"Host: " + self.host.encode())
        lines += [name.encode("latin-1") + b": " + value for name, value in headers]
        lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        answer_headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        return int(status_line.split()[1]), answer_headers, payload

    def signed_headers(
        self,
        action: str,
        body: bytes,
        *,
        query: dict | None = None,
        content_type: str = "application/json",
        x_date: str | None = None,
    ) -> list[tuple[str, bytes]]:
        query = {"Action": action, "Version": API_VERSION} if query is None else query
        key = signing.SigningKey(self.config.access_key, self.config.secret_key)
        signed = signing.sign_request(
            key=key,
            method="POST",
            host=self.host,
            path="/",
            query=query,
            content_type=content_type,
            body=body,
            region=self.config.region,
            x_date=x_date,
        )
        return [("Content-Type", content_type.encode("latin-1"))] + [
            (k, v.encode("latin-1")) for k, v in signed.items()
        ]

    def post(self, action: str, body: bytes, **kw) -> tuple[int, dict, bytes]:
        target = f"/?Action={quote(action)}&Version={API_VERSION}"
        return self.send("POST", target, self.signed_headers(action, body, **kw), body)


# Generators: each returns (method, target, headers, body) for a request that must be refused.


def deep(depth: int, opener: str = "[", closer: str = "]") -> bytes:
    return (opener * depth + closer * depth).encode()


def random_text(rng: random.Random, n: int) -> str:
    alphabet = "aZ09 _-./@\t\"\\'{}[]:,é中🙂\u202e\u0000\u00ff"
    return "".join(rng.choice(alphabet) for _ in range(n))


BODY_KINDS = 12


def bad_body(rng: random.Random, kind: int | None = None) -> bytes:
    """A body the API must refuse (as a StartSnapshot; Update and Stop then find no task running)."""
    kind = rng.randrange(BODY_KINDS) if kind is None else kind
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 3000))
    if kind == 1:
        text = json.dumps(VALID_START).encode()
        return text[: rng.randrange(0, len(text) - 1)]
    if kind == 2:
        return rng.choice(
            [
                deep(rng.choice([200, 1023, 1025, 5000, 30000])),
                deep(rng.choice([50, 2000]), '{"a":', "}").replace(b'{"a":}', b'{"a":1}'),
                b'{"AppId": ' + deep(rng.choice([100, 900])) + b"}",
            ]
        )
    if kind == 3:
        body = dict(VALID_START)
        field = rng.choice(["MaxIdleTime", "ImageConfig", "StorageConfig", "AppId"])
        body[field] = "NUMBER"
        number = rng.choice(
            [
                "1" + "0" * 400,
                "-" + "9" * 300,
                "1e999",
                "-1e999",
                "NaN",
                "Infinity",
                "1.5e308",
                "0.0000001",
                "18446744073709551616",
                "-9223372036854775809",
            ]
        )
        return json.dumps(body).replace('"NUMBER"', number).encode()
    if kind == 4:
        body = json.loads(json.dumps(VALID_START))
        path = rng.choice(
            [
                ("AppId",),
                ("RoomId",),
                ("TaskId",),
                ("MaxIdleTime",),
                ("ImageConfig", "Interval"),
                ("ImageConfig", "Format"),
                ("StorageConfig", "Type"),
                ("StorageConfig",),
                ("ImageConfig",),
            ]
        )
        wrong = rng.choice([None, True, [], {}, [1, 2], {"x": 1}, 3.5, -1, "", "x" * 200, 10**6])
        if path == ("ImageConfig",) and isinstance(wrong, dict):
            wrong = [wrong]  # a mapping of unknown fields would be a valid ImageConfig (all defaults)
        target = body
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = wrong
        return json.dumps(body).encode()
    if kind == 5:
        body = dict(VALID_START)
        body[rng.choice(["AppId", "RoomId", "TaskId"])] = random_text(rng, rng.randrange(1, 40)) + "é"
        return json.dumps(body, ensure_ascii=rng.random() < 0.5).encode()
    if kind == 6:
        return rng.choice(
            [
                b'{"AppId": "\\ud800"}',
                b'\xef\xbb\xbf{"AppId": "a"}',
                b'{"AppId": "a\x00"}',
                b"\xc0\xaf",
                '{"AppId": "\u202eevil"}'.encode(),
                b'{"AppId": "\xff\xfe"}',
                b"\x00" * 64,
            ]
        )
    if kind == 7:
        return rng.choice(
            [b"[]", b'"x"', b"1", b"null", b"true", b"", b" ", b"{}", b"[" + json.dumps(VALID_START).encode() + b"]"]
        )
    if kind == 8:
        return json.dumps({**VALID_START, "Pad": "x" * 70000}).encode()  # over 64 KiB
    if kind == 9:
        missing = rng.choice(["AppId", "RoomId", "TaskId"])
        return json.dumps({k: v for k, v in VALID_START.items() if k != missing}).encode()
    if kind == 10:
        return json.dumps(
            {**VALID_START, "TargetStreams": {"StreamList": [{"UserId": "u", "Index": 1}] * rng.choice([2, 18])}}
        ).encode()
    return json.dumps({**VALID_START, "StorageConfig": {"Type": rng.choice([1, 4, -1, "0"]), "TosConfig": {}}}).encode()


#: What HTTP allows in a header value (visible ASCII, space, obs-text), so it reaches the emulator.
FIELD_BYTES = bytes([*range(0x20, 0x7F), *range(0x80, 0x100)])


def authorization_variants(rng: random.Random, good: bytes) -> list[bytes]:
    return [
        b"",
        b"HMAC-SHA256",
        b"HMAC-SHA256 ",
        b"Bearer abc",
        b"HMAC-SHA256 Credential=",
        b"HMAC-SHA256 ,,,,",
        b"HMAC-SHA256 Credential=a/b/c/d/request, SignedHeaders=, Signature=x",
        b"HMAC-SHA256 Credential=a/b/c/d/request, SignedHeaders=x-date;;host, Signature=x",
        good.replace(b"Signature=", b"Signature=\xe9\xff"),
        good.replace(b"Signature=", b"Signature=0"),
        good[: rng.randrange(len(good))],
        good.replace(b"SignedHeaders=", b"SignedHeaders=x-missing;"),
        good.replace(b"AKLT", b"AKLX"),
        good.replace(b"/rtc/", b"/rtx/"),
        good.replace(b"/cn-north-1/", b"/\xe9/"),
        bytes(rng.choice(FIELD_BYTES) for _ in range(rng.randrange(1, 8000))),
    ]


X_DATES = [
    b"",
    b"garbage",
    b"20250101T000000Z",
    b"99999999T999999Z",
    b"20250230T000000Z",
    b"19700101T000000Z",
    b"2025-01-01T00:00:00Z",
    b"\xe9\xe9\xe9",
    b"0" * 5000,
    b"20991231T235959Z",
    b"00010101T000000Z",
    b"20250101T000000Z\xe9",
]
CONTENT_TYPES = [
    b"text/plain",
    b"multipart/form-data; boundary=x",
    b"",
    b"\xff/\xfe",
    b"application/x-www-form-urlencoded",
    b"application/json; charset=latin-1",
]


def queries(action: str) -> list[str]:
    return [
        "",
        "Action=",
        "Version=",
        "Action=&Version=",
        f"Action={action}",
        f"Version={API_VERSION}",
        f"Action={action}&Version=",
        f"Action=&Version={API_VERSION}",
        f"Action={action}&Version=2020-01-01",
        f"Action=startsnapshot&Version={API_VERSION}",
        f"Action=DescribeSnapshot&Version={API_VERSION}",
        f"Action=%zz&Version={API_VERSION}",
        "Action=%&Version=%",
        "Action=%E9%FF%00&Version=%00",
        f"Action={action}&Action=Nope&Version={API_VERSION}",
        f"Action=Nope&Action={action}&Version={API_VERSION}&Version=x",
        "&&&===&&",
        "Action=" + "A" * 4000 + f"&Version={API_VERSION}",
        f"Action={action}&Version={API_VERSION}&Version=2020-01-01",
        f"Action={quote('🙂')}&Version={API_VERSION}",
    ]


METHODS_AND_PATHS = [
    ("GET", f"/?Action=StartSnapshot&Version={API_VERSION}"),
    ("PUT", "/"),
    ("DELETE", "/"),
    ("PATCH", "/"),
    ("POST", "/api"),
    ("POST", "//"),
    ("POST", "/_emulator/nope"),
    ("GET", "/_emulator/config"),
    ("POST", "/_emulator/config"),
    ("POST", "/_emulator/streams-stopped"),
    ("POST", "/%00"),
]
ADMIN_BODIES = [
    b"{",
    b"[]",
    b'{"nope": 1}',
    b'{"error_rate": 2}',
    b'{"qps": "x"}',
    b'{"AppId": "a b"}',
    b'{"AppId": "a", "RoomId": "r", "Immediate": "yes"}',
    b"\xff\xfe",
    b'{"deny_apps": "x"}',
    b'{"slow_ms": -1}',
]


def exhaustive_requests(rng: random.Random, raw: Raw):
    """Each listed variant once, so the seed cannot skip any."""
    body = json.dumps(VALID_START).encode()
    for kind in range(BODY_KINDS):
        action = ACTIONS[kind % 3]
        malformed = bad_body(rng, kind)
        yield "POST", f"/?Action={action}&Version={API_VERSION}", raw.signed_headers(action, malformed), malformed
    headers = raw.signed_headers("StartSnapshot", body)
    good_auth = dict(headers)["Authorization"]
    target = f"/?Action=StartSnapshot&Version={API_VERSION}"
    for variant in authorization_variants(rng, good_auth):
        yield "POST", target, [(k, variant if k == "Authorization" else v) for k, v in headers], body
    for name in ("Authorization", "X-Date", "Content-Type", "X-Content-Sha256"):
        yield "POST", target, [(k, v) for k, v in headers if k != name], body
    for x_date in X_DATES:
        yield "POST", target, [(k, x_date if k == "X-Date" else v) for k, v in headers], body
    for content_type in CONTENT_TYPES:
        yield "POST", target, [(k, content_type if k == "Content-Type" else v) for k, v in headers], body
    for query in queries("StopSnapshot"):
        yield query_request(raw, query, "StopSnapshot", body)
    for method, path in METHODS_AND_PATHS:
        yield method, path, [("Content-Type", b"application/json")], body
    for admin_body in ADMIN_BODIES:
        for path in ("/_emulator/config", "/_emulator/streams-stopped"):
            yield "POST", path, [("Content-Type", b"application/json")], admin_body


def bad_header_request(rng: random.Random, raw: Raw):
    action = rng.choice(ACTIONS)
    body = json.dumps(VALID_START).encode()
    headers = raw.signed_headers(action, body)
    kind = rng.randrange(6)
    if kind == 0:  # no Authorization, or a garbled one
        auth = dict(headers)["Authorization"]
        headers = [(k, v) for k, v in headers if k != "Authorization"]
        if rng.random() < 0.8:
            headers.append(("Authorization", rng.choice(authorization_variants(rng, auth))))
    elif kind == 1:  # X-Date: missing, garbage, far away
        headers = [(k, v) for k, v in headers if k != "X-Date"]
        if rng.random() < 0.85:
            headers.append(("X-Date", rng.choice(X_DATES)))
    elif kind == 2:  # signed, then the content type changed
        headers = [(k, v) for k, v in headers if k != "Content-Type"]
        if rng.random() < 0.8:
            headers.append(("Content-Type", rng.choice(CONTENT_TYPES)))
    elif kind == 3:  # body changed after signing, or a wrong body hash
        if rng.random() < 0.5:
            body = body.replace(b"Room", b"Roon")
        else:
            headers = [(k, v) for k, v in headers if k != "X-Content-Sha256"] + [("X-Content-Sha256", b"0" * 64)]
    elif kind == 4:  # a wrong content type signed as such: passes the signature, the body decides
        content_type = rng.choice(["text/plain", "application/xml", "", "a" * 300])
        body = bad_body(rng)
        headers = raw.signed_headers(action, body, content_type=content_type)
    else:  # the Host changed after signing, or signed headers duplicated
        if rng.random() < 0.5:
            headers.append(("Host", b"evil.example:443"))
        else:
            headers.append(("X-Date", b"20250101T000000Z"))
    return "POST", f"/?Action={action}&Version={API_VERSION}", headers, body


def query_request(raw: Raw, query: str, action: str, body: bytes):
    # Signed for exactly this query (as the emulator will parse it), so the query itself is judged.
    headers = raw.signed_headers(
        action, body, query={k: v for k, _, v in (p.partition("=") for p in query.split("&") if p)}
    )
    return "POST", "/?" + query if query else "/", headers, body


def bad_query_request(rng: random.Random, raw: Raw):
    action = rng.choice(ACTIONS)
    return query_request(raw, rng.choice(queries(action)), action, json.dumps(VALID_START).encode())


def other_method_or_path(rng: random.Random, raw: Raw):
    body = json.dumps(VALID_START).encode()
    method, target = rng.choice(METHODS_AND_PATHS)
    if target in ("/_emulator/config", "/_emulator/streams-stopped"):
        body = rng.choice(ADMIN_BODIES + [rng.randbytes(100)])
    return method, target, [("Content-Type", b"application/json")], body


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(EmulatorConfig(qps=0, seed=SEED)) as srv:
        yield srv


def assert_error_envelope(status: int, headers: dict, payload: bytes, what) -> None:
    assert 400 <= status < 500, (status, payload[:300], what)
    assert headers.get("content-type", "").startswith("application/json"), (headers, what)
    document = json.loads(payload)
    error = document["ResponseMetadata"]["Error"]
    assert isinstance(error["Message"], str) and error["Message"], what
    assert error["Code"] in ERROR_CODES, (error, what)
    assert (error["CodeN"], status) == ERROR_CODES[error["Code"]], (error, status, what)
    assert "Result" not in document or document["Result"] is None


def test_hundreds_of_malformed_requests_get_error_envelopes(server):
    rng = random.Random(SEED)
    raw = Raw(server.url)
    codes: dict[str, int] = {}
    api_requests = 0

    def random_requests():
        for n in range(320):
            kind = n % 4
            if kind == 0:
                action = rng.choice(ACTIONS)
                body = bad_body(rng)
                yield "POST", f"/?Action={action}&Version={API_VERSION}", raw.signed_headers(action, body), body
            elif kind == 1:
                yield bad_header_request(rng, raw)
            elif kind == 2:
                yield bad_query_request(rng, raw)
            else:
                yield other_method_or_path(rng, raw)

    for n, (method, target, headers, body) in enumerate(
        itertools.chain(exhaustive_requests(rng, raw), random_requests())
    ):
        api_requests += method in ("POST", "GET") and target.split("?")[0] == "/"
        status, answer_headers, payload = raw.send(method, target, headers, body)
        assert_error_envelope(status, answer_headers, payload, (n, method, target[:200], headers, body[:200]))
        code = json.loads(payload)["ResponseMetadata"]["Error"]["Code"]
        codes[code] = codes.get(code, 0) + 1

    assert n + 1 >= 400
    # The refusals cover every stage of the checks.
    assert {
        "MissingParameter",
        "InvalidActionOrVersion",
        "MissingAuthenticationToken",
        "MissingSignature",
        "MissingRequestInfo",
        "InvalidTimestamp",
        "InvalidAccessKey",
        "SignatureDoesNotMatch",
        "InvalidParameter",
        "InvalidParameter.TaskNotRunning",
    } <= set(codes), codes
    assert server._thread.is_alive()
    status, _, payload = raw.send("GET", "/_emulator/stats", [])
    stats = json.loads(payload)
    assert status == 200 and stats["total"] == api_requests and stats["tasks_running"] == 0
    assert stats["faults"] == {"error": 0, "drop": 0, "slow": 0}

    # Still serving: a valid signed request succeeds.
    status, _, payload = raw.post("StartSnapshot", json.dumps(VALID_START).encode())
    assert status == 200 and json.loads(payload)["Result"] == "ok", payload
    status, _, payload = raw.send("GET", "/_emulator/tasks", [])
    assert [t["TaskId"] for t in json.loads(payload)["tasks"]] == ["Task"]
