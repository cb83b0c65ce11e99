"""/metrics over HTTP: the small HTTP/1.0 responder of MetricsListen (prometheus.py counts).

Besides /metrics the process serving it answers ``/healthz`` (200 while it serves) and
``/readyz`` (200 when it may take mail, 503 with a short JSON reason when not: readiness.py),
for balancers, Kubernetes and container runtimes (docs/behaviour.md §11.10).

One request per connection, GET or HEAD of a path, request line and headers of at most
MAX_REQUEST bytes, the answer built by prometheus-client and the connection closed.  The
rules against idle and dribbling scrapers (docs/behaviour.md, section 11.6):

- A request must be read whole within REQUEST_TIMEOUT of the connection's start: the
  deadline is on the whole request, so a byte a second does not extend it.  The answer
  then has ANSWER_TIMEOUT to be written.
- At most MAX_CONNECTIONS connections are held at once, so the listener never takes the
  descriptors that mail needs (they fit in the spare of listeners.raise_fd_limit).  A
  connection past that takes the place of the oldest one still sending its request, which
  is closed: idle or slow connections cannot keep a real scrape out (a scraper sends its
  request as soon as it connects, so it is the newest).  Only when every held connection
  is being answered is the newcomer closed unanswered.

The body is built synchronously in the event loop: about a millisecond even with many
workers' files.  Nothing a scraper does, nor a failure to build the body (a `500`, logged),
ends the serving task: it shares worker 0's event loop with mail.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable

import trio

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.common.log_format import structured
from trio_proxsmtp.daemon.listeners import socket_name
from trio_proxsmtp.daemon.readiness import Readiness

__all__ = [
    "ANSWER_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_REQUEST",
    "REQUEST_TIMEOUT",
    "MetricsResponder",
    "handle_metrics_request",
    "serve_metrics",
]

log = logging.getLogger(LOGGER_NAME)

Exposition = Callable[[], tuple[bytes, str]]

REQUEST_TIMEOUT = 3.0  # seconds from the connection's start to the end of its headers
ANSWER_TIMEOUT = 10.0  # seconds to write the answer
MAX_REQUEST = 8192  # bytes of request line and headers
MAX_CONNECTIONS = 32  # connections held at once; a newcomer closes the oldest still reading

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


def _response(status: int, body: bytes, content_type: str, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.0 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + body


def _complete(request: bytes) -> bool:
    return b"\r\n\r\n" in request or b"\n\n" in request


def _parse(request: bytes) -> tuple[bytes, bool] | bytes:
    """(the path, HEAD?) of a GET or HEAD, else the error response."""
    if not _complete(request):  # _read_request stopped at MAX_REQUEST
        return _response(400, b"request too large\n", "text/plain", False)
    line = request.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _response(400, b"bad request\n", _TEXT, False)
    method, target = parts[0], parts[1]
    if method not in (b"GET", b"HEAD"):
        return _response(405, b"only GET and HEAD\n", _TEXT, False)
    return target.split(b"?", 1)[0], method == b"HEAD"


def _metrics(exposition: Exposition, head_only: bool) -> bytes:
    try:
        body, content_type = exposition()
    except Exception:
        log.exception("metrics: couldn't build the exposition")
        return _response(500, b"metrics unavailable\n", _TEXT, head_only)
    return _response(200, body, content_type, head_only)


async def _answer_all(request: bytes, exposition: Exposition, health: Readiness | None) -> bytes:
    """/metrics, and with `health` /healthz (the process serves: 200) and /readyz."""
    parsed = _parse(request)
    if isinstance(parsed, bytes):
        return parsed
    path, head_only = parsed
    if path == b"/metrics":
        return _metrics(exposition, head_only)
    if health is None:
        return _response(404, b"see /metrics\n", _TEXT, head_only)
    if path == b"/healthz":
        return _response(200, b'{"status":"ok"}\n', _JSON, head_only)
    if path == b"/readyz":
        ready, body = await health.check()
        return _response(200 if ready else 503, body, _JSON, head_only)
    return _response(404, b"see /metrics, /healthz, /readyz\n", _TEXT, head_only)


async def _read_request(stream: trio.abc.Stream, timeout: float) -> bytes | None:
    """The request line and headers read within `timeout` (or what came before they passed
    MAX_REQUEST); None when the client left or was too slow."""
    request = b""
    with trio.move_on_after(timeout):
        while not _complete(request):
            if len(request) > MAX_REQUEST:
                return request
            try:
                data = await stream.receive_some(4096)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            request += data
        return request
    return None


async def _send_answer(
    stream: trio.abc.Stream,
    request: bytes,
    exposition: Exposition,
    timeout: float,
    health: Readiness | None = None,
) -> None:
    with (
        trio.move_on_after(timeout),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await stream.send_all(await _answer_all(request, exposition, health))


async def handle_metrics_request(
    stream: trio.abc.Stream,
    exposition: Exposition,
    timeout: float = REQUEST_TIMEOUT,
    answer_timeout: float = ANSWER_TIMEOUT,
) -> None:
    """Answer one HTTP request on `stream` and close it; a slow or oversized one is dropped."""
    async with stream:
        request = await _read_request(stream, timeout)
        if request is not None:
            await _send_answer(stream, request, exposition, answer_timeout)


class MetricsResponder:
    """The connections of one MetricsListen: at most `limit` held, the oldest one still
    reading its request closed to make room for a newcomer (see the module's docstring)."""

    def __init__(
        self,
        exposition: Exposition,
        *,
        limit: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
        answer_timeout: float = ANSWER_TIMEOUT,
        health: Readiness | None = None,
    ) -> None:
        self._exposition = exposition
        self._health = health
        self._limit = limit
        self._request_timeout = request_timeout
        self._answer_timeout = answer_timeout
        self._reading: dict[trio.CancelScope, None] = {}  # oldest first
        self._answering = 0
        self.evicted = 0  # connections closed to make room for a newer one
        self.refused = 0  # newcomers closed because every held one was being answered

    @property
    def held(self) -> int:
        """Connections being read or answered (an evicted one is already closing)."""
        return len(self._reading) + self._answering

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection and close it."""
        async with stream:
            if self.held >= self._limit:
                if not self._reading:
                    self.refused += 1
                    return
                oldest = next(iter(self._reading))
                del self._reading[oldest]
                oldest.cancel()
                self.evicted += 1
            request = None
            with trio.CancelScope() as room:
                self._reading[room] = None
                try:
                    request = await _read_request(stream, self._request_timeout)
                finally:
                    self._reading.pop(room, None)
            if request is None:
                return
            self._answering += 1
            try:
                await _send_answer(
                    stream, request, self._exposition, self._answer_timeout, self._health
                )
            finally:
                self._answering -= 1


async def serve_metrics(
    sockets: list[socket.socket],
    exposition: Exposition,
    *,
    health: Readiness | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics (and with `health` /healthz, /readyz) on the bound `sockets` until
    cancelled; started() gets their names.  Says once where, in the log."""
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
    responder = MetricsResponder(exposition, health=health)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, responder.handle, listeners)
        names = [listener.socket.getsockname()[:2] for listener in listeners]
        urls = ", ".join(f"http://{socket_name(name)}/metrics" for name in names)
        paths = " (and /healthz, /readyz)" if health is not None else ""
        log.info("metrics on %s%s", urls, paths, extra=structured("metrics", [("url", urls)]))
        task_status.started(names)
