"""The HTTP server around the app: connection timeouts, head limits, protocol errors.

SPEC §11: an idle keep-alive connection closes after 75 s; a client that has not sent
its whole request head within 30 s is dropped; a request head over 16 KiB is a 431
problem. Errors aiohttp raises while parsing a request (a NUL byte in a header, a
malformed request line) and client disconnects become problem+json answers with an
`X-Request-ID` where an answer can still be sent, and one rate-limited WARNING line
without a traceback each (aiohttp logs them at ERROR with a traceback).

aiohttp offers no public hook for the answer to a request it could not parse
(aio-libs/aiohttp#3287), so this subclasses its RequestHandler (the protocol of one
connection) and the Server that creates one per connection, and `HardenedRunner`
builds that Server in place of aiohttp's. `python run.py` and the tests that need the
real connection behaviour serve through `HardenedRunner`.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import uuid
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

from server.config import Settings
from server.constants import (
    HTTP_SHUTDOWN_TIMEOUT_SECONDS,
    LINGER_AFTER_REFUSAL_SECONDS,
    MAX_REQUEST_HEAD_BYTES,
    PROTOCOL_WARNING_BURST,
    PROTOCOL_WARNING_WINDOW_SECONDS,
)
from server.http.errors import (
    PROBLEM_CONTENT_TYPE,
    REQUEST_ID_HEADER,
    Problem,
    problem_body,
    request_id_of,
)
from server.http.logs import RateLimitedLog

log = logging.getLogger("server.http")


def _head_too_large() -> Problem:
    return Problem(
        431,
        "request-head-too-large",
        f"the request line and headers are larger than {MAX_REQUEST_HEAD_BYTES // 1024} KiB",
    )


@web.middleware
async def head_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """431 for a complete head over the limit (one that arrived in pieces is refused by
    the protocol before it is complete; see `_ProtocolHandler`)."""
    size = len(request.method) + len(request.raw_path) + len(" HTTP/1.1\r\n\r\n") + 1
    for name, value in request.raw_headers:
        size += len(name) + len(value) + 4  # ": " and CRLF
    if size > MAX_REQUEST_HEAD_BYTES:
        raise _head_too_large()
    return await handler(request)


def _parse_error_problem(exc: HttpProcessingError) -> Problem:
    # LineTooLong: one line over max_line_size / max_field_size (= the head limit);
    # llhttp's "Too many headers" is a head over the limit too, in another shape.
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and exc.message.startswith("Too many headers")
    ):
        return _head_too_large()
    return Problem(400, "malformed-request", "the request is not valid HTTP/1.1")


def _summary(exc: BaseException) -> str:
    """One line about an exception, bounded: parser messages quote the client's bytes."""
    text = " ".join(str(getattr(exc, "message", "") or exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


class _ProtocolHandler(RequestHandler):
    """One connection: aiohttp's protocol plus the head timeout and limit, and problem
    answers for what aiohttp cannot parse."""

    __slots__ = (
        "_before_first_head",
        "_head_bytes",
        "_head_timeout",
        "_head_timer",
        "_refused",
        "_warnings",
    )

    def __init__(
        self, *args: Any, head_timeout: float, warnings: RateLimitedLog, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout = head_timeout
        self._warnings = warnings
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # received while waiting for a head, none of it parsed yet
        self._refused = False  # answered without a request; what still comes is dropped
        # No head complete yet on this connection. Every byte until then is head bytes,
        # even before aiohttp's start() first waits: uvloop may deliver data first.
        self._before_first_head = True

    # --- the request head: in time, and not too large ---------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # A new connection must bring its first head in time (nothing sent is no excuse).
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        """Idle between requests (or before the first): every byte now is head bytes.

        aiohttp's start() waits on `_waiter` only with no request queued, after the
        previous one's body was read to its end; while a body streams in, it does not.
        """
        if self._messages:
            return False
        waiter = self._waiter
        return self._before_first_head or (waiter is not None and not waiter.done())

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        awaiting = self._awaiting_head()
        super().data_received(data)
        if not awaiting or self.transport is None:
            return
        if self._messages:  # a head is complete (or the parser refused it): answered
            self._disarm_head_timer()
            self._head_bytes = 0
            self._before_first_head = False
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_REQUEST_HEAD_BYTES:
            self._refuse(_head_too_large())
        elif self._head_timer is None:  # the first byte of a head on a reused connection
            # From here the head timeout applies, not the idle one (as nginx does):
            # aiohttp arms its keep-alive timer again after the response.
            if self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
                self._keepalive_handle = None
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self._loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or not self._awaiting_head():
            return
        if self._head_bytes:
            detail = f"the request head was not complete within {self._head_timeout:g} s"
            self._refuse(Problem(408, "request-timeout", detail))
        else:  # connected and said nothing (browsers pre-open connections): just close
            log.debug("closed a connection that sent nothing in %g s", self._head_timeout)
            self.force_close()

    def _refuse(self, problem: Problem) -> None:
        """Answer without a request (its head never completed), then close."""
        assert self.transport is not None
        request_id = uuid.uuid4().hex
        body = problem_body(problem, instance="", request_id=request_id)
        head = (
            f"HTTP/1.1 {problem.status} {HTTPStatus(problem.status).phrase}\r\n"
            f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{REQUEST_ID_HEADER}: {request_id}\r\n"
            f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
            "Connection: close\r\n\r\n"
        )
        transport = self.transport
        transport.write(head.encode("ascii") + body)
        self._warnings.warning(
            "refused a request head: %s",
            problem.detail,
            status=problem.status,
            request_id=request_id,
            peer=self._peer(),
        )
        # Closing at once while the client still sends would reset the connection, and
        # a reset can destroy the answer before the client reads it: send FIN after the
        # answer, drop what still arrives for a moment, then close.
        self._refused = True
        self._disarm_head_timer()
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER_AFTER_REFUSAL_SECONDS, self.force_close)

    def _peer(self) -> str | None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return str(peer[0]) if isinstance(peer, tuple) else None

    # --- what aiohttp itself raised ---------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp calls this for a request it could not parse (status 400), and for an
        exception that escaped the app's middlewares: a client that went away, or a bug."""
        request_id = request_id_of(request)
        if isinstance(exc, HttpProcessingError):
            problem = _parse_error_problem(exc)
            self._warnings.warning(
                "malformed request: %s",
                _summary(exc),
                status=problem.status,
                request_id=request_id,
                peer=request.remote,
            )
            instance = ""  # the request line was not read, so there is no path
        elif isinstance(exc, ConnectionError):
            self._warnings.warning(
                "client disconnected during %s %s: %s",
                request.method,
                request.path,
                _summary(exc),
                request_id=request_id,
                peer=request.remote,
            )
            problem = Problem(400, "malformed-request", "the connection was closed mid-request")
            instance = request.path
        else:
            log.error(
                "unhandled error outside the app's middlewares",
                exc_info=exc,
                extra={"request_id": request_id},
            )
            problem = Problem(
                status, "internal-error", "an unexpected error occurred; it has been logged"
            )
            instance = request.path
        if request.writer.output_size > 0:
            # As aiohttp: part of a response is out, another cannot follow; drop it.
            raise ConnectionError("response already started; cannot send an error")
        response = web.Response(
            status=problem.status,
            body=problem_body(problem, instance=instance, request_id=request_id),
            content_type=PROBLEM_CONTENT_TYPE,
            headers={REQUEST_ID_HEADER: request_id},
        )
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp's other error lines: a connection error is a client gone, not a bug."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, ConnectionError | HttpProcessingError):
            self._warnings.warning("connection error: %s", _summary(exc), peer=self._peer())
        else:
            super().log_exception(*args, **kwargs)


class _Server(web.Server):
    """aiohttp's Server, making `_ProtocolHandler`s for its connections."""

    def __init__(
        self,
        plain: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        head_timeout: float,
        handler_kwargs: dict[str, Any],
    ) -> None:
        """Serves what `plain` (the Server aiohttp built for the app) would have served."""
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=loop,
            **handler_kwargs,
        )
        self._handler_loop = loop
        self._handler_kwargs = handler_kwargs
        self._head_timeout = head_timeout
        # One limiter for all connections: a flood of bad requests costs a few lines.
        self._warnings = RateLimitedLog(
            log, PROTOCOL_WARNING_BURST, PROTOCOL_WARNING_WINDOW_SECONDS
        )

    def __call__(self) -> RequestHandler:
        return _ProtocolHandler(
            self,
            loop=self._handler_loop,
            head_timeout=self._head_timeout,
            warnings=self._warnings,
            **self._handler_kwargs,
        )


class HardenedRunner(web.AppRunner):
    """An AppRunner whose connections follow SPEC §11 (see the module docstring).

    handler_cancellation stays off (aiohttp's default): a handler whose client went away
    runs to its end, so an accepted upload or bulk request is never half-abandoned
    between its commit and its answer.
    """

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(
            app,
            access_log=None,
            shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT_SECONDS,
            handle_signals=False,
        )
        self._settings = settings

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's start-up, as usual
        return _Server(
            plain,
            loop=asyncio.get_running_loop(),
            head_timeout=self._settings.head_timeout,
            handler_kwargs={
                "keepalive_timeout": self._settings.keepalive_timeout,
                # No single line may be larger than the whole head may be.
                "max_line_size": MAX_REQUEST_HEAD_BYTES,
                "max_field_size": MAX_REQUEST_HEAD_BYTES,
                "access_log": None,  # server.http.logs writes the access log, with request ids
            },
        )
