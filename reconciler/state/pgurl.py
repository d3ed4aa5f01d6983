"""A PostgreSQL state's URL as libpq reads it, and as it may be shown: the connection
parameters parsed by libpq's own parser, and a URL rebuilt from them with every secret as
``***``. Nothing libpq takes as the password is ever shown, however the URL was written; a
URL libpq refuses is named without quoting any of it. Only parsing: nothing here connects.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from ..errors import StateError, UsageError


def is_database_url(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith(("postgresql://", "postgres://"))


# The URL, as libpq reads it ------------------------------------------------------------------

#: Connection parameters whose value is a secret: never shown.
SECRET_PARAMETERS = ("password", "sslpassword")
#: What libpq quotes in its complaints that may be shown: separators it expected.
_SHOWN_QUOTES = frozenset({"]", ":", "/", "=", "@", "?", "&"})


def _libpq_complaint(exc: BaseException) -> str:
    """libpq's reason for refusing a URL, without what it quotes of the URL (the URL itself,
    a parameter's value: either may be the password)."""
    text = " ".join(str(exc).split()).split(': "', 1)[0] or "unreadable"
    return re.sub(r'"([^"]*)"', lambda m: m.group(0) if m.group(1) in _SHOWN_QUOTES else '"…"', text)


def parse_database_url(url: str) -> dict[str, str]:
    """The connection parameters of ``url`` exactly as libpq reads them (psycopg's conninfo
    parsing is libpq's own ``PQconninfoParse``), or UsageError in one line that shows none of it."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:  # pragma: no cover - a dependency; only a broken install lacks it
        raise StateError(f"a postgresql:// state needs psycopg ({exc}); reinstall snapctl-rtc") from None
    try:
        read = conninfo_to_dict(url)
    except Exception as exc:  # psycopg.ProgrammingError; any other refusal is the same to the user
        raise UsageError(
            f"the state's postgresql:// URL cannot be read (libpq: {_libpq_complaint(exc)}); it is not shown, "
            "as it may hold the password. Percent-encode '@', ':', '/', '?', '#' and '%' in the user name "
            "and password, and close the brackets of an IPv6 address"
        ) from None
    params = {k: str(v) for k, v in read.items() if v is not None}
    if any("@" in params.get(key, "") for key in ("host", "port", "dbname")):
        # An '@' libpq took for part of the host, port or database: a user name or password
        # holding '/' (libpq's user part ends there), whose rest would be shown as those.
        raise UsageError(
            "the state's postgresql:// URL has an '@' after the first '/': libpq would read the user name "
            "and password as the host and database (it is not shown, as it may hold the password). "
            "Percent-encode '/' as %2F in the user name and password"
        )
    return params


def _quoted(value: str, safe: str = "") -> str:
    """A URL component as text that cannot break a line or hide a character (percent-encoded)."""
    return quote(value, safe=safe + "-._~!$'()*+;")


def masked_url(params: dict[str, str]) -> str:
    """A URL naming the database of ``params`` (libpq's reading) with every secret as ``***``,
    built from those parameters, never from the text given: nothing libpq takes as the password
    can be shown, however the URL was written."""
    user = params.get("user")
    userinfo = ""
    if user is not None or params.get("password"):
        userinfo = _quoted(user or "") + (":***" if params.get("password") else "") + "@"
    hosts = (params.get("host") or "").split(",")
    ports = (params.get("port") or "").split(",")
    query: list[tuple[str, str]] = []
    netloc_hosts: list[str] = []
    if any("/" in host for host in hosts) or len(ports) not in (1, len(hosts)):
        # A socket directory, or what libpq will refuse at connect: as parameters.
        query += [(key, params[key]) for key in ("host", "port") if params.get(key)]
    else:
        for number, host in enumerate(hosts):
            port = ports[number] if len(ports) > 1 else ports[0]
            shown = f"[{_quoted(host, ':')}]" if ":" in host else _quoted(host)
            netloc_hosts.append(shown + (f":{_quoted(port)}" if port else ""))
    for key, value in params.items():
        if key in ("user", "password", "host", "port", "dbname"):
            continue
        query.append((key, "***" if key in SECRET_PARAMETERS and value else value))
    text = f"postgresql://{userinfo}{','.join(netloc_hosts)}/{_quoted(params.get('dbname', ''))}"
    if query:
        text += "?" + "&".join(f"{_quoted(k)}={v if v == '***' else _quoted(v, '/:,')}" for k, v in query)
    return text


def redact(url: str) -> str:
    """A database URL without its password (as libpq reads it), or a placeholder if libpq cannot read it."""
    try:
        return masked_url(parse_database_url(url))
    except UsageError:
        return "<an unreadable postgresql:// URL>"
