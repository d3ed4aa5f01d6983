"""The desired requests' secrets as a plan compares them: fingerprinted like the state's
(once per distinct value, the key derivations started in the background), or taken as
the state holds them when their values are not known.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..state import SECRET_FIELDS, State, is_fingerprint, secret_holders
from .model import UNKNOWN_SECRET


def _secrets_as_known(
    want: Mapping[str, Any], have: Mapping[str, Any] | None, missing: str = UNKNOWN_SECRET
) -> dict[str, Any]:
    """``want`` with each secret field as ``have`` holds it, else ``missing``."""
    out = dict(want)
    for path in SECRET_FIELDS:
        parent: Any = out
        ok = True
        for part in path[:-1]:
            child = parent.get(part) if isinstance(parent, dict) else None
            if not isinstance(child, dict):
                ok = False
                break
            parent[part] = child = dict(child)  # copied: the desired body may be shared
            parent = child
        if not ok or path[-1] not in parent:
            continue
        known: Any = have
        for part in path:
            known = known.get(part) if isinstance(known, Mapping) else None
        parent[path[-1]] = known if known is not None else missing
    return out


class _Fingerprints:
    """``state.fingerprint(dict(request))`` for many requests, each secret-holding
    part fingerprinted once per distinct value (requests mostly share their
    storage block, and a fingerprint costs a deep copy and an HMAC)."""

    def __init__(self, state: State):
        self.state = state
        self.tops = tuple(dict.fromkeys(path[0] for path in SECRET_FIELDS))
        self.memo: dict[tuple, Any] = {}

    def __call__(self, request: Mapping[str, Any]) -> dict[str, Any]:
        done = self.fingerprinted(request, wait=True)
        assert done is not None
        return done

    def fingerprinted(self, request: Mapping[str, Any], *, wait: bool) -> dict[str, Any] | None:
        """The request fingerprinted; without ``wait``, None while its secrets' fingerprints
        are being computed (they are started in the background then)."""
        request = request if type(request) is dict else dict(request)
        if not _holds_secret(request):
            return request
        out = dict(request)
        for top in self.tops:
            if top not in request:
                continue
            value = request[top]
            try:
                key = (top, orjson.dumps(value) if isinstance(value, (dict, list)) else value)
                hash(key)
            except (TypeError, orjson.JSONEncodeError):
                return self.state.fingerprint(dict(request))
            done = self.memo.get(key)
            if done is None:
                if not wait and not self.state.prefetch_fingerprints(_secret_values({top: value})):
                    return None
                done = self.memo[key] = self.state.fingerprint({top: value})[top]
            out[top] = done
        return out


def _secret_values(request: Mapping[str, Any]) -> list[Any]:
    """The secret values ``state.fingerprint`` would fingerprint (scrypt) in ``request``."""
    values = []
    for path in SECRET_FIELDS:
        parent: Any = request
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent and not is_fingerprint(parent[path[-1]]):
            values.append(parent[path[-1]])
    return values


def _holds_secret(request: dict[str, Any]) -> bool:
    """Whether ``state.fingerprint`` has something to fingerprint in ``request``."""
    return any(
        name in parent and not is_fingerprint(parent[name])
        for parent, names in secret_holders(request)
        for name in names
    )
