"""Exceptions by meaning, so callers catch what they can act on.

SnapctlError
├── UsageError            bad input: manifests, state, flags (exit 1, nothing sent)
│   ├── ManifestError     with file:line:column locations
│   └── StateError
├── LockError             another process holds the state lock
├── WriteError            a file could not be written (disk full, read-only); what was written before is intact
├── Interrupted           SIGINT/SIGTERM stopped the run before it acted (exit 130)
└── ApiError              the API answered an error, or could not be reached
    ├── AuthError         signature, access key, timestamp, permission
    │   └── CredentialsError  the account's credentials or clock: every call would fail (stops the run)
    ├── EndpointError     the endpoint does not serve this API (stops the run)
    ├── InvalidParameterError
    ├── TaskNotRunningError
    ├── UnreadableAnswerError  an answer of another shape than documented (not retried)
    └── RetryableError    worth retrying with backoff
        ├── ThrottledError    429 FlowLimitExceeded
        ├── ServerError       5xx
        └── TransportError    timeout, dropped connection
            └── NotSentError  provably never left: refused, no such host, TLS refused, unbuildable
                └── RunStoppedError  not sent because an earlier error stopped the run

``stops_run`` marks the errors that concern every call of a run, not one task:
the run stops at the first one and names it once. ``may_have_run`` says whether
the API may have acted on the call (only then is an intent left open).
"""

from __future__ import annotations


class SnapctlError(Exception):
    """Base of every error snapctl raises on purpose."""


class UsageError(SnapctlError):
    """Input the user must fix; nothing was sent or written."""


class StateError(UsageError):
    """The state file cannot be read or does not fit the operation."""


class StateMoved(StateError):
    """The state was migrated away: where it was, a signpost names where it went."""


class LockError(SnapctlError):
    """The state is locked by another process."""


class WriteError(SnapctlError):
    """A file could not be written completely (disk full, read-only directory,
    permissions). Whatever was written before is intact; nothing was left half written."""

    def __init__(self, message: str, *, path: str = "", errno: int = 0):
        super().__init__(message)
        self.path = path
        self.errno = errno


class Interrupted(SnapctlError):
    """SIGINT or SIGTERM stopped the run before it changed anything (during its reads):
    exit status 130. ``observations``: the tasks read before the stop, by address
    (the caller records them where it holds the state's lock); ``total``: how many
    reads there were to make."""

    def __init__(self, message: str, *, observations: dict | None = None, total: int = 0):
        super().__init__(message)
        self.observations = observations or {}
        self.total = total


class ApiError(SnapctlError):
    """An answer of the API that is not success, or no answer at all."""

    retryable = False
    #: Every further call of the run would fail the same way.
    stops_run = False
    #: The API may have acted on the request (no answer, or a server fault).
    may_have_run = False

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
            return f"{self.code}: {self.message}" if self.message else self.code
        if self.message:
            return self.message
        status = f" (HTTP {self.status})" if self.status else ""
        return f"the API answered an error without a code or a message{status}"


class AuthError(ApiError):
    """Credentials, signature, clock or permission: fix the setup, do not retry."""


class CredentialsError(AuthError):
    """The API refused the credentials themselves (signature, access key, token, clock):
    the same for every call of the account, so the run stops at the first one."""

    stops_run = True


class EndpointError(ApiError):
    """What answers at the endpoint is not the snapshot API (no such action there, or
    not the API's envelope): every call would fail the same way, so the run stops."""

    stops_run = True


class InvalidParameterError(ApiError):
    """The API refused a field of the request."""


class TaskNotRunningError(ApiError):
    """Update or Stop of a task the API does not have running."""


class UnreadableAnswerError(ApiError):
    """An answer snapctl will not use: not of the documented shape (a field of another
    type, a value out of its range). Nothing is planned, sent or recorded from it; it is
    not retried (the server would answer alike). The API may have acted on the call."""

    may_have_run = True


class RetryableError(ApiError):
    retryable = True


class ThrottledError(RetryableError):
    """Over the API's rate limit (429 FlowLimitExceeded)."""


class ServerError(RetryableError):
    """A 5xx answer."""

    may_have_run = True


class TransportError(RetryableError):
    """Timeout or dropped connection: the request may or may not have run."""

    may_have_run = True


class NotSentError(TransportError):
    """The request provably never reached the API: the connection was refused, the host
    name does not resolve, the TLS handshake failed, or the request could not be built.
    It concerns the endpoint, not a task, so it stops the run; it is retried only where
    waiting can help (a refused connection)."""

    may_have_run = False
    stops_run = True

    def __init__(self, message: str, *, retryable: bool = False, endpoint: str = "", refused: bool = False, **kwargs):
        super().__init__(message, **kwargs)
        self.retryable = retryable
        self.endpoint = endpoint
        #: The connection was refused (nothing listens): a few in a row end the run.
        self.refused = refused


class RunStoppedError(NotSentError):
    """Not sent: an earlier answer (credentials, an unreachable endpoint) stopped the run."""

    def __init__(self, cause: ApiError):
        super().__init__(f"not sent: the run stopped ({cause})", endpoint=getattr(cause, "endpoint", ""))
        self.cause = cause
