"""The Volcengine "V4" request signature (HMAC-SHA256).

Pure functions over bytes and strings: the client signs with them and the
emulator verifies with them, so both sides share one implementation of the
canonical request.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote

ALGORITHM = "HMAC-SHA256"
SERVICE = "rtc"
X_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

#: Headers signed on a request with a body, in canonical (sorted) order. A GET
#: carries no Content-Type, and the vendor's SDK then signs the others only.
BASE_SIGNED_HEADERS = ("content-type", "host", "x-content-sha256", "x-date")
SESSION_TOKEN_HEADER = "x-security-token"


@dataclass(frozen=True)
class SigningKey:
    """What identifies and authenticates a caller. ``repr`` never shows the secret."""

    access_key: str
    secret_key: str
    session_token: str = ""

    def __repr__(self) -> str:  # keep secrets out of tracebacks and logs
        return f"SigningKey(access_key={self.access_key!r}, secret_key='***', session_token={'***' if self.session_token else ''!r})"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")


def canonical_query(query: Mapping[str, str]) -> str:
    """Keys sorted, keys and values percent-encoded except ``A-Za-z0-9-_.~``."""
    return "&".join(f"{_encode(k)}={_encode(str(query[k]))}" for k in sorted(query))


def canonical_host(host: str) -> str:
    """A Host of ``name:80`` or ``name:443`` is signed as ``name``."""
    for default_port in (":80", ":443"):
        if host.endswith(default_port):
            return host[: -len(default_port)]
    return host


def format_x_date(moment: datetime | None = None) -> str:
    return (moment or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime(X_DATE_FORMAT)


@functools.lru_cache(maxsize=32)  # one key per day and region: derive it once, not per request
def signing_key(secret_key: str, date: str, region: str, service: str = SERVICE) -> bytes:
    key = _hmac(secret_key.encode("utf-8"), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "request")


def signature(
    *,
    secret_key: str,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    signed_headers: tuple[str, ...],
    body_sha256: str,
    x_date: str,
    region: str,
    service: str = SERVICE,
) -> str:
    """Hex signature over a request whose headers are given lower-cased."""
    canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in signed_headers)
    canonical_request = "\n".join(
        [
            method.upper(),
            path or "/",
            canonical_query(query),
            canonical_headers,
            ";".join(signed_headers),
            body_sha256,
        ]
    )
    date = x_date[:8]
    scope = f"{date}/{region}/{service}/request"
    string_to_sign = "\n".join([ALGORITHM, x_date, scope, sha256_hex(canonical_request.encode("utf-8"))])
    return hmac.new(
        signing_key(secret_key, date, region, service), string_to_sign.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def sign_request(
    *,
    key: SigningKey,
    method: str,
    host: str,
    path: str,
    query: Mapping[str, str],
    content_type: str | None,
    body: bytes,
    region: str,
    x_date: str | None = None,
    service: str = SERVICE,
) -> dict[str, str]:
    """Return the headers to add to a request: X-Date, X-Content-Sha256,
    Authorization and, for STS credentials, X-Security-Token.

    ``content_type`` None: the request carries no Content-Type (a GET), which
    is then not signed."""
    x_date = x_date or format_x_date()
    body_hash = sha256_hex(body)
    headers = {
        "host": canonical_host(host),
        "x-content-sha256": body_hash,
        "x-date": x_date,
    }
    signed: tuple[str, ...] = BASE_SIGNED_HEADERS
    if content_type is None:
        signed = BASE_SIGNED_HEADERS[1:]
    else:
        headers["content-type"] = content_type
    if key.session_token:
        headers[SESSION_TOKEN_HEADER] = key.session_token
        signed = signed + (SESSION_TOKEN_HEADER,)
    sig = signature(
        secret_key=key.secret_key,
        method=method,
        path=path,
        query=query,
        headers=headers,
        signed_headers=signed,
        body_sha256=body_hash,
        x_date=x_date,
        region=region,
        service=service,
    )
    out = {
        "X-Date": x_date,
        "X-Content-Sha256": body_hash,
        "Authorization": f"{ALGORITHM} Credential={key.access_key}/{x_date[:8]}/{region}/{service}/request, "
        f"SignedHeaders={';'.join(signed)}, Signature={sig}",
    }
    if key.session_token:
        out["X-Security-Token"] = key.session_token
    return out


@dataclass(frozen=True)
class ParsedAuthorization:
    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> ParsedAuthorization | None:
    """Parse an ``Authorization`` header; ``None`` when it is not of our scheme."""
    if not value.startswith(ALGORITHM + " "):
        return None
    fields: dict[str, str] = {}
    for part in value[len(ALGORITHM) + 1 :].split(","):
        name, sep, val = part.strip().partition("=")
        if not sep:
            return None
        fields[name] = val
    try:
        credential = fields["Credential"].split("/")
        access_key, date, region, service, terminator = credential
        signed = tuple(fields["SignedHeaders"].split(";"))
        sig = fields["Signature"]
    except (KeyError, ValueError):
        return None
    if terminator != "request" or not sig or not all(signed):
        return None
    return ParsedAuthorization(access_key, date, region, service, signed, sig)
