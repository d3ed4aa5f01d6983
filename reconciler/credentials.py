"""Where the access key comes from: the vendor SDK's conventions."""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import UsageError
from .signing import SigningKey

DEFAULT_ENDPOINT = "https://rtc.volcengineapi.com"
DEFAULT_REGION = "cn-north-1"


def credentials_file(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".volc" / "credentials"


def load_credentials(environ: Mapping[str, str] | None = None) -> SigningKey:
    """``VOLC_ACCESSKEY``/``VOLC_SECRETKEY`` (+``VOLC_SESSION_TOKEN``), else the
    ``[default]`` section of ``~/.volc/credentials``."""
    env = os.environ if environ is None else environ
    access_key = env.get("VOLC_ACCESSKEY", "")
    secret_key = env.get("VOLC_SECRETKEY", "")
    if access_key and secret_key:
        return SigningKey(access_key, secret_key, env.get("VOLC_SESSION_TOKEN", ""))
    path = credentials_file(env)
    if path.is_file():
        parser = configparser.ConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: cannot read credentials ({type(exc).__name__})") from None
        section = parser["default"] if parser.has_section("default") else None
        if section and section.get("access_key_id") and section.get("secret_access_key"):
            return SigningKey(
                section["access_key_id"].strip(),
                section["secret_access_key"].strip(),
                section.get("session_token", "").strip(),
            )
    raise UsageError(
        "no credentials: set VOLC_ACCESSKEY and VOLC_SECRETKEY, or write access_key_id and "
        f"secret_access_key in the [default] section of {path}"
    )


def resolve_endpoint(flag: str | None, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    endpoint = flag or env.get("SNAPCTL_ENDPOINT") or DEFAULT_ENDPOINT
    if not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"endpoint {endpoint!r} must start with http:// or https://")
    return endpoint.rstrip("/")


def resolve_region(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("VOLC_REGION") or DEFAULT_REGION
