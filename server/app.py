"""Building and running the gRPC server: Recommender, health checking and reflection."""
from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hybridrec.v1 import recommender_pb2 as pb
from hybridrec.v1 import recommender_pb2_grpc as pb_grpc

from .bundle import load_model
from .errors import HybridrecError
from .interceptors import ErrorInterceptor
from .pipeline import load_serving_config
from .plugin_manager import Plugins
from .service import RecommenderService, ServingState

log = logging.getLogger("hybridrec")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name


@dataclass
class RunningServer:
    """A started server, the port it bound, and the handles to change or stop it."""

    server: grpc.Server
    port: int
    service: RecommenderService
    health: health.HealthServicer

    def stop(self, grace: float | None = 2.0) -> None:
        """Report NOT_SERVING first, so balancers drain, then stop with a grace period."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def load_state(model_dir: str | Path, config_path: str | Path, plugins: Plugins | None = None) -> ServingState:
    """Load and validate a bundle and build the pipelines of a config."""
    plugins = plugins or Plugins()
    config = load_serving_config(config_path, plugins)
    model = load_model(model_dir)
    return ServingState(model=model, config=config)


def create_server(state: ServingState, address: str = "127.0.0.1:0", max_workers: int = 8) -> RunningServer:
    """Start a server on `address` (port 0 picks a free one); returns it with the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="hybridrec"),
        interceptors=[ErrorInterceptor()],
        options=[("grpc.so_reuseport", 0)],
    )
    service = RecommenderService(state)
    pb_grpc.add_RecommenderServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise HybridrecError(f"cannot listen on {address}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, service, health_servicer)


def serve(model_dir: str | Path, config_path: str | Path, host: str = "127.0.0.1", port: int = 50051,
          max_workers: int = 8, grace: float = 5.0, ready: threading.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT; on either, drain (NOT_SERVING) and stop gracefully."""
    state = load_state(model_dir, config_path)
    running = create_server(state, f"{host}:{port}", max_workers)
    model = state.model
    log.info("serving model %s (%d users, %d items) with pipelines %s (default %s) on %s:%d",
             model.version, model.num_users, model.num_items, ", ".join(state.config.pipelines),
             state.config.default_pipeline, host, running.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received signal %d: draining and stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if ready is not None:
        ready.set()
    stop.wait()
    running.stop(grace)
    log.info("stopped")
