"""One server interceptor maps domain exceptions to gRPC statuses and times every call."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import grpc

from .errors import HybridrecError

log = logging.getLogger("hybridrec")

SERVER_TIME_KEY = "hybridrec-server-time-us"
WORKER_PID_KEY = "hybridrec-worker-pid"


class ErrorInterceptor(grpc.ServerInterceptor):
    """HybridrecError -> its own status and message; anything else -> INTERNAL with a
    generic message and the traceback in the server log. Adds the handler's own time in
    microseconds as trailing metadata `hybridrec-server-time-us`, and the id of the process
    that served the call as `hybridrec-worker-pid` (several with `serve --workers N`).

    The wrapped handler of each method is built once and cached: gRPC calls
    `intercept_service` on every RPC, and the registered handlers never change once the
    server has started."""

    def __init__(self) -> None:
        self._handlers: dict[str, Any] = {}
        self._pid = str(os.getpid())  # created in the process that serves (after any fork)

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._wrap(handler, method)
        self._handlers[method] = wrapped  # a race only builds the same handler twice
        return wrapped

    def _wrap(self, handler: Any, method: str) -> Any:
        behaviour = handler.unary_unary
        pid = self._pid
        perf_counter = time.perf_counter

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            start = perf_counter()
            try:
                return behaviour(request, context)
            except Exception as exc:
                if not isinstance(exc, HybridrecError) and context.code() is not None:
                    raise  # the handler already aborted
                context.abort(*error_status(exc, method))
            finally:
                context.set_trailing_metadata(call_metadata(start, pid))

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def error_status(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status a failed call returns: a HybridrecError's own code and message, or INTERNAL
    with a generic message (the traceback goes to the server log)."""
    if isinstance(exc, HybridrecError):
        return exc.code, str(exc)
    log.error("unhandled error in %s", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log"


def call_metadata(start: float, pid: str) -> tuple[tuple[str, str], ...]:
    """Trailing metadata of every call: handler time since `start` (us) and the serving pid."""
    return ((SERVER_TIME_KEY, str(int((time.perf_counter() - start) * 1e6))), (WORKER_PID_KEY, pid))
