"""Where the access key comes from: the vendor SDK's conventions.

Every value is checked before it is used to sign: a control character (a
trailing newline of a token pasted from a file), white space or a non-ASCII
character is refused with a message that names where the value came from and
never shows it.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Mapping
from pathlib import Path

from .errors import UsageError
from .signing import SigningKey


def credentials_file(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".volc" / "credentials"


def check_credential_text(value: str, source: str) -> str:
    """``value`` if it can go into a signed header; else a UsageError naming ``source``, not the value."""
    for position, char in enumerate(value, 1):
        code = ord(char)
        if char in "\r\n":
            problem = "a line break"
        elif char.isspace() and code < 0x80:
            problem = "white space"
        elif code < 0x20 or code == 0x7F:
            problem = "a control character"
        elif code > 0x7E:
            problem = "a non-ASCII character"
        else:
            continue
        end = " at its end" if position == len(value) else f" at character {position}"
        raise UsageError(f"{source} holds {problem}{end}; fix it (the value is not shown)")
    return value


def load_credentials(environ: Mapping[str, str] | None = None) -> SigningKey:
    """``VOLC_ACCESSKEY``/``VOLC_SECRETKEY`` (+``VOLC_SESSION_TOKEN``), else the
    ``[default]`` section of ``~/.volc/credentials``."""
    env = os.environ if environ is None else environ
    access_key = env.get("VOLC_ACCESSKEY", "")
    secret_key = env.get("VOLC_SECRETKEY", "")
    if access_key or secret_key:
        if not (access_key and secret_key):
            have, missing = ("VOLC_ACCESSKEY", "VOLC_SECRETKEY") if access_key else ("VOLC_SECRETKEY", "VOLC_ACCESSKEY")
            raise UsageError(
                f"{have} is set but {missing} is not{near_miss_hint(env)}: set both, or neither to use "
                "~/.volc/credentials"
            )
        return SigningKey(
            check_credential_text(access_key, "VOLC_ACCESSKEY"),
            check_credential_text(secret_key, "VOLC_SECRETKEY"),
            check_credential_text(env.get("VOLC_SESSION_TOKEN", ""), "VOLC_SESSION_TOKEN"),
        )
    path = credentials_file(env)
    if path.is_file():
        return _from_file(path)
    raise UsageError(
        f"no credentials{near_miss_hint(env)}: set VOLC_ACCESSKEY and VOLC_SECRETKEY, or write access_key_id and "
        f"secret_access_key in the [default] section of {path}"
    )


#: The variables snapctl reads its credentials from.
CREDENTIAL_VARIABLES = ("VOLC_ACCESSKEY", "VOLC_SECRETKEY", "VOLC_SESSION_TOKEN")


def near_miss_hint(environ: Mapping[str, str]) -> str:
    """`` (VOLC_ACCESS_KEY is set: did you mean VOLC_ACCESSKEY?)`` for each variable set under
    a name close to one snapctl reads (never a value); empty when there is none."""
    import difflib

    meant = []
    for name in sorted(environ):
        if name in CREDENTIAL_VARIABLES or not environ[name]:
            continue
        match = difflib.get_close_matches(name.upper(), CREDENTIAL_VARIABLES, n=1, cutoff=0.8)
        if match:
            meant.append(f"{name} is set: did you mean {match[0]}?")
    return f" ({'; '.join(meant)})" if meant else ""


def _from_file(path: Path) -> SigningKey:
    """The ``[default]`` section, read literally: no ``%`` interpolation, so a secret holding
    ``%`` is read as written. Errors name the file and line, never a value."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read credentials ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"{path} line {line}: cannot read credentials (not UTF-8 text)") from None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as exc:
        raise UsageError(
            f"{path} line {exc.lineno}: cannot read credentials (a [default] section header must come first)"
        ) from None
    except configparser.ParsingError as exc:
        lines = ", ".join(str(number) for number, _ in exc.errors)
        raise UsageError(
            f"{path} line {lines}: cannot read credentials (expected `name = value`; the line is not shown)"
        ) from None
    except (configparser.DuplicateSectionError, configparser.DuplicateOptionError) as exc:
        what = f"option {exc.option}" if isinstance(exc, configparser.DuplicateOptionError) else f"[{exc.section}]"
        raise UsageError(f"{path} line {exc.lineno}: cannot read credentials ({what} appears twice)") from None
    except configparser.Error as exc:
        raise UsageError(f"{path}: cannot read credentials ({type(exc).__name__})") from None
    if not parser.has_section("default"):
        raise UsageError(f"{path} has no [default] section with access_key_id and secret_access_key")
    section = parser["default"]
    values = {}
    for option in ("access_key_id", "secret_access_key", "session_token"):
        value = section.get(option, "").strip()
        if not value and option != "session_token":
            raise UsageError(f"{path}: the [default] section has no {option}")
        values[option] = check_credential_text(value, f"{option} in {path} line {_line_of(text, option)}")
    return SigningKey(values["access_key_id"], values["secret_access_key"], values["session_token"])


def _line_of(text: str, option: str) -> int:
    """The line of ``option = ...`` in the [default] section (for messages)."""
    in_default = False
    pattern = re.compile(rf"\s*{re.escape(option)}\s*[=:]", re.IGNORECASE)
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            in_default = stripped.lower() == "[default]"
        elif in_default and pattern.match(line):
            return number
    return 0
