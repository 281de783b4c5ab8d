"""One server interceptor maps domain exceptions to gRPC statuses and times every call."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import grpc

from .errors import HybridrecError

log = logging.getLogger("hybridrec")

SERVER_TIME_KEY = "hybridrec-server-time-us"


class ErrorInterceptor(grpc.ServerInterceptor):
    """HybridrecError -> its own status and message; anything else -> INTERNAL with a
    generic message and the traceback in the server log. Adds the handler's own time in
    microseconds as trailing metadata `hybridrec-server-time-us`."""

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behaviour = handler.unary_unary
        method = handler_call_details.method

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                return behaviour(request, context)
            except HybridrecError as exc:
                context.abort(exc.code, str(exc))
            except Exception:
                if context.code() is not None:  # the handler already aborted
                    raise
                log.exception("unhandled error in %s", method)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")
            finally:
                elapsed_us = int((time.perf_counter() - start) * 1e6)
                context.set_trailing_metadata(((SERVER_TIME_KEY, str(elapsed_us)),))

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
