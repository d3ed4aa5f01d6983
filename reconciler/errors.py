"""Exceptions by meaning, so callers catch what they can act on.

SnapctlError
├── UsageError            bad input: manifests, state, flags (exit 1, nothing sent)
│   ├── ManifestError     with file:line:column locations
│   └── StateError
├── LockError             another process holds the state lock
├── WriteError            a file could not be written (disk full, read-only); what was written before is intact
└── ApiError              the API answered an error, or could not be reached
    ├── AuthError         signature, access key, timestamp, permission
    ├── InvalidParameterError
    ├── TaskNotRunningError
    └── RetryableError    worth retrying with backoff
        ├── ThrottledError    429 FlowLimitExceeded
        ├── ServerError       5xx
        └── TransportError    timeout, dropped connection
"""

from __future__ import annotations


class SnapctlError(Exception):
    """Base of every error snapctl raises on purpose."""


class UsageError(SnapctlError):
    """Input the user must fix; nothing was sent or written."""


class StateError(UsageError):
    """The state file cannot be read or does not fit the operation."""


class LockError(SnapctlError):
    """The state is locked by another process."""


class WriteError(SnapctlError):
    """A file could not be written completely (disk full, read-only directory,
    permissions). Whatever was written before is intact; nothing was left half written."""

    def __init__(self, message: str, *, path: str = "", errno: int = 0):
        super().__init__(message)
        self.path = path
        self.errno = errno


class ApiError(SnapctlError):
    """An answer of the API that is not success, or no answer at all."""

    retryable = False

    def __init__(
        self, message: str, *, code: str = "", code_n: int = 0, request_id: str = "", status: int = 0, action: str = ""
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.code_n = code_n
        self.request_id = request_id
        self.status = status
        self.action = action

    def __str__(self) -> str:
        if self.code:
            return f"{self.code}: {self.message}"
        return self.message


class AuthError(ApiError):
    """Credentials, signature, clock or permission: fix the setup, do not retry."""


class InvalidParameterError(ApiError):
    """The API refused a field of the request."""


class TaskNotRunningError(ApiError):
    """Update or Stop of a task the API does not have running."""


class RetryableError(ApiError):
    retryable = True


class ThrottledError(RetryableError):
    """Over the API's rate limit (429 FlowLimitExceeded)."""


class ServerError(RetryableError):
    """A 5xx answer."""


class TransportError(RetryableError):
    """Timeout, refused or dropped connection: the request may or may not have run."""
