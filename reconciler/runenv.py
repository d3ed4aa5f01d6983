"""The run's environment, resolved and checked once before any output and any request.

Credentials, the endpoint, the region, proxies from the environment, the
diagnostic log's path and the metrics address are all inputs the user can get
wrong. Each is checked here, up front, into one :class:`~reconciler.errors.UsageError`
line that names the input and never shows a secret value, so a bad input never
surfaces later as a traceback or as a failure per task.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .credentials import load_credentials
from .errors import UsageError
from .signing import SigningKey

DEFAULT_ENDPOINT = "https://rtc.volcengineapi.com"
DEFAULT_REGION = "cn-north-1"
_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
#: Proxy schemes httpx speaks; SOCKS needs the ``socks`` extra (socksio).
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


@dataclass(frozen=True)
class RunEnv:
    """What a run needs to reach the API, already checked."""

    endpoint: str
    region: str
    key: SigningKey | None = None


def resolve(
    endpoint_flag: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    credentials: bool = True,
) -> RunEnv:
    """Resolve and check the endpoint, region, proxies and (with ``credentials``) the access key."""
    env = os.environ if environ is None else environ
    endpoint = resolve_endpoint(endpoint_flag, env)
    region = resolve_region(env)
    check_proxies(env)
    key = load_credentials(env) if credentials else None
    return RunEnv(endpoint=endpoint, region=region, key=key)


def _describe_bad_characters(value: str) -> str | None:
    for char in value:
        if char in "\r\n":
            return "a line break"
        if char.isspace():
            return "white space"
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return "a control character"
        if ord(char) > 0x7E:
            return "a non-ASCII character"
    return None


def resolve_endpoint(flag: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The endpoint URL from ``--endpoint``, else ``SNAPCTL_ENDPOINT``, else the public API;
    checked (scheme, host, port) and without a trailing slash."""
    env = os.environ if environ is None else environ
    if flag:
        text, source = flag, "--endpoint"
    elif env.get("SNAPCTL_ENDPOINT"):
        text, source = env["SNAPCTL_ENDPOINT"], "SNAPCTL_ENDPOINT"
    else:
        return DEFAULT_ENDPOINT
    return parse_endpoint(text, source)


def parse_endpoint(text: str, source: str = "--endpoint") -> str:
    """``text`` as a normalised endpoint URL, or a UsageError that says what is wrong with it."""
    bad = _describe_bad_characters(text)
    if bad:
        raise UsageError(f"{source} holds {bad}: write a URL such as https://rtc.volcengineapi.com")
    if "@" in text:
        # Refused before any message that shows the value: the part before "@" may hold a
        # password, whatever else is wrong with the URL (another scheme, an unclosed bracket).
        raise UsageError(f"{source} must not hold a user name or password (user@host); snapctl signs its requests")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise UsageError(f"{source} {text!r} is not a URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not text.lower().startswith(parts.scheme.lower() + "://"):
        raise UsageError(f"{source} {text!r} must start with http:// or https://")
    host = parts.hostname or ""
    if not host:
        raise UsageError(f"{source} {text!r} has no host name")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{source} {text!r}: the port must be a number from 1 to 65535") from None
    if port == 0:
        raise UsageError(f"{source} {text!r}: the port must be a number from 1 to 65535")
    if not _valid_host(host):
        raise UsageError(f"{source} {text!r}: {host!r} is not a host name or IP address")
    if parts.query or parts.fragment or text.rstrip("/").endswith(("?", "#")):
        raise UsageError(f"{source} {text!r} must not have a query (?) or a fragment (#)")
    return text.rstrip("/")


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.fullmatch(host)) and ".." not in host


def is_loopback(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_region(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    region = env.get("VOLC_REGION") or DEFAULT_REGION
    if not _REGION.fullmatch(region):
        bad = _describe_bad_characters(region) or "other characters"
        raise UsageError(
            f"VOLC_REGION holds {bad}: write a region name such as {DEFAULT_REGION} (letters, digits and '-')"
        )
    return region


def check_proxies(environ: Mapping[str, str]) -> None:
    """Refuse a proxy setting httpx would choke on, naming the variable but never its value
    (a proxy URL may hold a password)."""
    for name in _PROXY_VARIABLES:
        for variable in (name, name.upper()):
            value = environ.get(variable, "")
            if not value:
                continue
            if _describe_bad_characters(value):
                raise UsageError(f"{variable} holds {_describe_bad_characters(value)} (the value is not shown)")
            url = value if "://" in value else "http://" + value  # as httpx reads it
            scheme = url.split("://", 1)[0].lower()
            if scheme not in PROXY_SCHEMES:
                raise UsageError(
                    f"{variable} is a {scheme}:// proxy, which snapctl cannot use: "
                    "write an http://, https:// or socks5:// proxy URL, or unset it"
                )
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 -- raises on a port out of range
            except ValueError:
                raise UsageError(f"{variable} is not a valid proxy URL (the value is not shown)") from None
            if not parts.hostname:
                raise UsageError(f"{variable} names no proxy host (the value is not shown)")
            if scheme.startswith("socks") and not _socks_supported():
                raise UsageError(
                    f"{variable} is a SOCKS proxy; install snapctl's socks extra to use one "
                    "(pip install 'snapctl[socks]'), or unset it"
                )


def _socks_supported() -> bool:
    import importlib.util

    return importlib.util.find_spec("socksio") is not None


def check_log_path(path: str) -> None:
    """``SNAPCTL_LOG_PATH`` must be a file snapctl can append to, in a directory that exists."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"SNAPCTL_LOG_PATH {path} is a directory; name a file to append the log to")
    if not target.parent.is_dir():
        raise UsageError(f"SNAPCTL_LOG_PATH {path}: the directory {target.parent} does not exist")


def check_metrics_address(host: str, port: int) -> None:
    """``--metrics-host`` must resolve (the port is checked when the server binds it)."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UsageError(f"--metrics-host {host!r} does not resolve to an address to listen on") from None


__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_REGION",
    "RunEnv",
    "check_log_path",
    "check_metrics_address",
    "check_proxies",
    "is_loopback",
    "parse_endpoint",
    "resolve",
    "resolve_endpoint",
    "resolve_region",
]
