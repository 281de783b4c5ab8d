"""Serving on gRPC's asyncio API: one event loop runs every handler inline.

A Recommend is a millisecond or two of CPU under the GIL. The thread-pool server hands
each call from gRPC's poller thread to a handler thread, and under load its handler
threads contend for the GIL; here the event loop that receives a call also runs it, so a
process spends its core on requests rather than hand-offs. Run one process per core
(`hybridrec serve --io asyncio --workers N`) for parallelism. The servicer is the same
`RecommenderService` object as in the thread-pool server; only the transport differs.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hybridrec.v1 import recommender_pb2_grpc as pb_grpc

from .errors import HybridrecError
from .interceptors import call_metadata, error_status
from .overload import OverloadGuard, loop_selector, new_event_loop
from .service import RecommenderService, ServingState

log = logging.getLogger("hybridrec")


class AsyncRecommender(pb_grpc.RecommenderServicer):
    """Coroutine handlers over a `RecommenderService`, with the statuses and trailing
    metadata of the thread-pool server's `ErrorInterceptor`."""

    def __init__(self, service: RecommenderService, service_name: str) -> None:
        self.service = service
        self._prefix = f"/{service_name}/"
        self._pid = str(os.getpid())

    async def _call(self, name: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        try:
            response = getattr(self.service, name)(request, context)
        except Exception as exc:
            code, message = error_status(exc, self._prefix + name)
            context.set_trailing_metadata(call_metadata(start, self._pid))
            await context.abort(code, message)
        context.set_trailing_metadata(call_metadata(start, self._pid))
        return response

    async def Recommend(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Recommend", request, context)

    async def SimilarItems(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("SimilarItems", request, context)

    async def GetModelInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("GetModelInfo", request, context)


async def serve_async(state: ServingState, address: str, service_name: str, stop: threading.Event,
                      grace: float, reuse_port: bool = False,
                      on_ready: Callable[[int, RecommenderService], None] | None = None,
                      keep_going: Callable[[], bool] = lambda: True,
                      on_stopping: Callable[[], None] | None = None) -> None:
    """Serve `state` on `address` until `stop` is set (or `keep_going()` turns false), then
    report NOT_SERVING and stop with `grace` seconds for calls in flight."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    service = RecommenderService(state)
    pb_grpc.add_RecommenderServicer_to_server(AsyncRecommender(service, service_name), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (service_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise HybridrecError(f"cannot listen on {address}")
    await server.start()
    watcher = None
    if state.config.overload.fallbacks:
        loop = asyncio.get_running_loop()
        selector = loop_selector(loop)
        if selector is None:
            log.warning("server.overload: this event loop does not measure its idle time (start it with "
                        "run_async); overload protection is off")
        else:
            service.guard = OverloadGuard(state.config.overload, selector)
            watcher = loop.create_task(service.guard.watch())
    for name in ("", service_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if on_ready is not None:
        on_ready(port, service)
    while not stop.is_set() and keep_going():
        await asyncio.sleep(0.2)  # signal handlers set `stop`; polling keeps them plain
    if on_stopping is not None:
        on_stopping()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace)
    if watcher is not None:
        watcher.cancel()
        log.info("%s", service.guard.summary())
    service.log_stored_calls()


def run_async(main: Any) -> Any:
    """Run coroutine `main` on a new event loop that measures its idle time (`server.overload`)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
