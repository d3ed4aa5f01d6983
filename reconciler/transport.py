"""The HTTP transport of the API client: httpx's, over a connection pool whose
work per request does not grow with the number of connections it holds.

httpcore 1.0's pool (httpx's, and the last release of both) re-examines every
connection each time a request arrives or a response ends, and asks each idle
one whether the server closed it, a ``getpeername`` and a ``select`` per idle
socket. At the API's limits (two actions at 150 calls/s each, a tenth of a
second away) the client holds dozens of connections, so that scan took most of
the event loop's time: the slower the loop, the more requests in flight, the
more connections, the slower the loop (1,000 replaces took 5.8 times the ideal on
this project's host; 1.1 times over this pool).

:class:`ConnectionPool` makes the same decisions with less asking: it hands a
queued request the first connection able to take it, and probes only that one
(the probe that finds a connection the server closed, as httpcore's does);
the other idle connections are probed one per pass, in turn, so a connection
the server closed is still let go of soon. The pool is otherwise httpcore's
(connecting, HTTP/1.1, TLS, timeouts, closing), as is everything the transport
does with requests and errors.
"""

from __future__ import annotations

import httpcore
import httpx


class ConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore's pool, with an assignment pass that probes one idle connection, not all."""

    _sweep = 0

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        closing: list[httpcore.AsyncConnectionInterface] = []
        connections = [connection for connection in self._connections if not connection.is_closed()]
        # An idle HTTP/1.1 connection handed to a request stays idle until that request
        # sends on it: it is spoken for, and must not go to a second request meanwhile.
        promised = {request.connection for request in self._requests if request.connection is not None}
        if connections:
            self._sweep = (self._sweep + 1) % len(connections)
            swept = connections[self._sweep]
            if swept not in promised and swept.is_idle() and swept.has_expired():
                connections.remove(swept)
                closing.append(swept)
        for pool_request in self._requests:
            if not pool_request.is_queued():
                continue
            origin = pool_request.request.url.origin
            chosen = None
            index = 0
            while index < len(connections):
                connection = connections[index]
                if (
                    connection.can_handle_request(origin)
                    and connection.is_available()
                    and not (connection.is_idle() and connection in promised)
                ):
                    if connection.is_idle() and connection.has_expired():
                        del connections[index]
                        closing.append(connection)
                        continue
                    chosen = connection
                    break
                index += 1
            if chosen is None:
                if len(connections) >= self._max_connections:
                    idle = next((c for c in connections if c.is_idle() and c not in promised), None)
                    if idle is None:
                        continue  # the request waits for a connection to come free
                    connections.remove(idle)
                    closing.append(idle)
                chosen = self.create_connection(origin)
                connections.append(chosen)
            pool_request.assign_to_connection(chosen)
            promised.add(chosen)
        if len(connections) > self._max_keepalive_connections:  # never, when both limits are equal
            kept_alive = [c for c in connections if c.is_idle() and c not in promised]
            for connection in kept_alive[: max(0, len(kept_alive) - self._max_keepalive_connections)]:
                connections.remove(connection)
                closing.append(connection)
        self._connections = connections
        return closing


class Transport(httpx.AsyncHTTPTransport):
    """httpx's transport for direct connections, over :class:`ConnectionPool`."""

    def __init__(self, *, limits: httpx.Limits, verify: bool = True):
        ssl_context = httpx.create_ssl_context(verify=verify)
        super().__init__(verify=ssl_context, limits=limits)
        self._pool = ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )

    @property
    def connections(self) -> list[httpcore.AsyncConnectionInterface]:
        """The connections the pool holds now."""
        return self._pool.connections
