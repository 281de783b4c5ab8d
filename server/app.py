"""Building and running the gRPC server: Recommender, health checking and reflection."""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hybridrec.v1 import recommender_pb2 as pb
from hybridrec.v1 import recommender_pb2_grpc as pb_grpc

from .bundle import Model, load_model
from .errors import HybridrecError
from .interceptors import ErrorInterceptor
from .pipeline import load_serving_config
from .plugin_manager import Plugins
from .precompute import load_tables
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


def load_state(model_dir: str | Path, config_path: str | Path, plugins: Plugins | None = None,
               mmap: bool | None = None, precomputed: bool = True) -> ServingState:
    """Load and validate a bundle and build the pipelines of a config. `mmap` as `load_model`'s:
    True maps every array read-only (processes serving one bundle share its pages), None maps
    the large ones. `precomputed`: also map the stored answers `server.precomputed` names."""
    plugins = plugins or Plugins()
    config = load_serving_config(config_path, plugins)
    model = plain_arrays(load_model(model_dir, mmap=mmap))
    for name, pipeline in config.pipelines.items():
        for stage in pipeline.rerankers:
            if getattr(stage.params, "similarity", None) == "category" and model.item_categories is None:
                log.warning("pipeline %s: re-ranker %s diversifies over categories, but the model %s has none "
                            "(its items had no content.category_field column); it uses content similarity",
                            name, stage.name, model_dir)
    return ServingState(model=model, config=config, precomputed=load_tables(model, config) if precomputed else {})


def plain_arrays(model: Model) -> Model:
    """The model with its memory-mapped arrays as plain ndarray views of the same mapping.

    `np.memmap` is a Python subclass whose `__getitem__` and `__array_finalize__` run on every
    slice and fancy index: about 2.4 us each, and a Recommend on the medium scale bundle makes
    about 21 of them with every array mapped (~0.05-0.1 ms of CPU, 1-2% of the request). A
    base-class view reads the same shared pages for free."""
    changes = {f.name: getattr(model, f.name).view(np.ndarray) for f in dataclasses.fields(model)
               if isinstance(getattr(model, f.name), np.memmap)}
    return dataclasses.replace(model, **changes) if changes else model


def create_server(state: ServingState, address: str = "127.0.0.1:0", max_workers: int = 8,
                  reuse_port: bool = False, faiss_threads: int | None = 1) -> RunningServer:
    """Start a server on `address` (port 0 picks a free one); returns it with the bound port.
    `reuse_port` lets several processes listen on one port (SO_REUSEPORT; `serve_workers`).
    `faiss_threads` caps FAISS's OpenMP threads in every handler thread (`set_faiss_threads`)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="hybridrec",
                                   initializer=set_faiss_threads, initargs=(faiss_threads,)),
        interceptors=[ErrorInterceptor()],
        options=[("grpc.so_reuseport", 1 if reuse_port else 0)],
    )
    service = RecommenderService(state)
    if state.config.overload.fallbacks:
        log.warning("server.overload works with --io asyncio (it watches the event loop); "
                    "ignored with --io threads")
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
          max_workers: int = 8, grace: float = 5.0, ready: threading.Event | None = None,
          faiss_threads: int | None = 1, io: str = "threads") -> None:
    """Run until SIGTERM or SIGINT; on either, drain (NOT_SERVING) and stop gracefully.
    `io`: "threads" (a handler thread pool) or "asyncio" (handlers inline on an event loop)."""
    check_io(io)
    set_faiss_threads(faiss_threads)
    state = load_state(model_dir, config_path)
    model = state.model
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received signal %d: draining and stopping", signum)
        stop.set()

    def announce(bound: int) -> None:
        log.info("serving model %s (%d users, %d items) with pipelines %s (default %s) on %s:%d",
                 model.version, model.num_users, model.num_items, ", ".join(state.config.pipelines),
                 state.config.default_pipeline, host, bound)
        if ready is not None:
            ready.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if io == "asyncio":
        from .aio import run_async, serve_async

        run_async(serve_async(state, f"{host}:{port}", SERVICE_NAME, stop, grace,
                              on_ready=lambda bound, _service: announce(bound)))
    else:
        running = create_server(state, f"{host}:{port}", max_workers, faiss_threads=faiss_threads)
        announce(running.port)
        stop.wait()
        running.stop(grace)
        running.service.log_stored_calls()
    log.info("stopped")


IO_CHOICES = ("threads", "asyncio")


def check_io(io: str) -> None:
    if io not in IO_CHOICES:
        raise HybridrecError(f"io: {io!r} is not one of: {', '.join(IO_CHOICES)}")


def set_faiss_threads(threads: int | None) -> None:
    """Cap FAISS's OpenMP threads in a serving process (None or 0: leave FAISS's default).

    A request's searches are tiny (one user vector, a few seed items), and the server already
    runs requests in parallel on its handler threads (and processes): OpenMP fan-out per search
    only adds spinning threads that fight the handlers for the cores.

    OpenMP keeps this setting per thread: a thread that never set it uses the process default
    (one thread per core), so every gRPC handler thread calls this as it starts, not only the
    main thread. Without that, each search on a handler thread woke a second OpenMP thread
    that spun after the search: 3.5 ms of server CPU per Recommend on the 1M-item bundle
    instead of 2.3 ms."""
    if threads:
        faiss.omp_set_num_threads(threads)


def resolve_workers(workers: int) -> int:
    """`--workers 0` means one process per CPU this process may run on."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) a SO_REUSEPORT socket on host:port; returns it and the port.

    Held by the supervisor for the workers' lifetime, it picks the port when `port` is 0 and
    keeps it reserved; never listening, it gets no connections. A port some other socket already
    holds is refused first: with SO_REUSEPORT we would otherwise share it with that server."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise HybridrecError(f"cannot listen on {host}:{port}: {exc}") from None
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no owner
        probe.bind(sockaddr)
        port = probe.getsockname()[1]
    except OSError as exc:
        raise HybridrecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((sockaddr[0], port, *sockaddr[2:]))
    except OSError as exc:
        sock.close()
        raise HybridrecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock, port


def _worker_main(number: int, reserved: socket.socket, conn: Any, model_dir: Path, config_path: Path,
                 address: str, max_workers: int, grace: float, faiss_threads: int | None,
                 io: str = "threads") -> None:
    """One serving process (forked by `serve_workers`): load, listen with SO_REUSEPORT, report
    ready (or the error) through `conn`, serve until SIGTERM/SIGINT, then drain and stop."""
    stop = threading.Event()
    parent = os.getppid()
    reported = False

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    def supervised() -> bool:
        if os.getppid() != parent:  # the supervisor was killed without forwarding a signal
            log.error("worker %d (pid %d): supervisor gone", number, os.getpid())
            return False
        return True

    def ready(port: int, *_: Any) -> None:
        nonlocal reported
        conn.send(("ready", os.getpid(), port))
        conn.close()
        reported = True
        log.info("worker %d (pid %d) serving model %s", number, os.getpid(), state.model.version)

    def stopping() -> None:
        log.info("worker %d (pid %d) draining and stopping", number, os.getpid())

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reserved.close()  # the supervisor's copy keeps the port
    try:
        set_faiss_threads(faiss_threads)
        state = load_state(model_dir, config_path, mmap=True)
        if io == "asyncio":
            from .aio import run_async, serve_async

            run_async(serve_async(state, address, SERVICE_NAME, stop, grace, reuse_port=True,
                                  on_ready=ready, keep_going=supervised, on_stopping=stopping))
            return
        running = create_server(state, address, max_workers, reuse_port=True, faiss_threads=faiss_threads)
    except Exception as exc:  # reported by the supervisor, in one line
        if reported:
            raise
        known = isinstance(exc, (HybridrecError, OSError, ValueError))
        if not known:
            log.exception("worker %d failed to start", number)
        conn.send(("error", str(exc) if known else f"{type(exc).__name__}: {exc}"))
        conn.close()
        sys.exit(1)
    ready(running.port)
    while not stop.wait(1.0) and supervised():
        pass
    stopping()
    running.stop(grace)
    running.service.log_stored_calls()


def serve_workers(model_dir: str | Path, config_path: str | Path, host: str = "127.0.0.1", port: int = 50051,
                  workers: int = 2, max_workers: int = 8, grace: float = 5.0, faiss_threads: int | None = 1,
                  start_timeout: float = 600.0, on_ready: Any = None, io: str = "threads") -> None:
    """Serve with `workers` processes sharing one port (SO_REUSEPORT), under this supervisor.

    The supervisor reserves the port (so port 0 works), then forks the workers before it has
    created any gRPC object: gRPC Python supports fork() only before a server or channel
    exists (grpc/grpc examples/python/multiprocessing, issue 16001). Each worker loads the
    bundle itself, memory-mapped, and runs its own grpc.server; the kernel spreads new
    connections over them. SIGTERM/SIGINT are forwarded to every worker, which reports
    NOT_SERVING and stops gracefully. Raises HybridrecError if a worker fails to start or
    dies while serving (after stopping the others)."""
    check_io(io)
    workers = resolve_workers(workers)
    reserved, port = reserve_port(host, port)
    address = f"{host}:{port}"
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    # Installed before forking so a signal during start-up is not lost; each worker installs
    # its own handlers first thing.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    ctx = multiprocessing.get_context("fork")
    procs: list[Any] = []
    conns: list[Any] = []
    failure: str | None = None
    try:
        for number in range(workers):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, name=f"hybridrec-worker-{number}", daemon=False,
                               args=(number, reserved, writer, Path(model_dir), Path(config_path), address,
                                     max_workers, grace, faiss_threads, io))
            proc.start()
            writer.close()
            procs.append(proc)
            conns.append(reader)
        failure = _wait_ready(procs, conns, stop, start_timeout)
        if failure is None and not stop.is_set():
            pids = ", ".join(str(p.pid) for p in procs)
            log.info("serving on %s:%d with %d worker processes (pids %s)", host, port, workers, pids)
            if on_ready is not None:
                on_ready(port, [p.pid for p in procs])
            failure = _watch(procs, stop)
        if received:
            log.info("received signal %d: stopping %d workers", received[0], workers)
    finally:
        _stop_workers(procs, grace)
        reserved.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    bad = [f"pid {p.pid} exit code {p.exitcode}" for p in procs if p.exitcode not in (0, None)]
    if failure is None and bad and not received:
        failure = "workers exited abnormally: " + ", ".join(bad)
    if failure is not None:
        raise HybridrecError(failure)
    log.info("stopped")


def _wait_ready(procs: list[Any], conns: list[Any], stop: threading.Event, timeout: float) -> str | None:
    """Wait until every worker reports ready; returns a failure message, or None."""
    pending = dict(zip(conns, range(len(conns))))
    sentinels = {p.sentinel: i for i, p in enumerate(procs)}
    deadline = time.monotonic() + timeout
    while pending and not stop.is_set():
        if time.monotonic() > deadline:
            return f"{len(pending)} of {len(procs)} workers not ready after {timeout:.0f} s"
        for ready in multiprocessing.connection.wait([*pending, *sentinels], timeout=0.2):
            if ready in pending:
                number = pending.pop(ready)
                try:
                    message = ready.recv()
                except EOFError:
                    procs[number].join(5)
                    message = ("error", f"exited with code {procs[number].exitcode}")
                ready.close()
                if message[0] != "ready":
                    return f"worker {number} failed to start: {message[1]}"
            elif ready in sentinels and procs[sentinels[ready]].exitcode is not None:
                number = sentinels.pop(ready)
                conn = next((c for c, n in pending.items() if n == number), None)
                if conn is not None and conn.poll():
                    continue  # its message is read on the next round
                if conn is not None:
                    return f"worker {number} failed to start: exited with code {procs[number].exitcode}"
    return None


def _watch(procs: list[Any], stop: threading.Event) -> str | None:
    """Serve until a signal (None) or until a worker dies (its failure message)."""
    while not stop.is_set():
        multiprocessing.connection.wait([p.sentinel for p in procs], timeout=0.5)
        dead = [p for p in procs if p.exitcode is not None]
        if dead and not stop.is_set():
            p = dead[0]
            log.error("worker pid %d exited with code %s while serving: stopping the others", p.pid, p.exitcode)
            return f"worker pid {p.pid} exited with code {p.exitcode} while serving"
    return None


def _stop_workers(procs: list[Any], grace: float) -> None:
    """SIGTERM every live worker (each drains), wait past its grace period, then SIGKILL."""
    for p in procs:
        if p.exitcode is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace + 10.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            log.error("worker pid %d did not stop in time: killing it", p.pid)
            p.kill()
            p.join(5)
