"""A Recommender server that runs no pipeline: the cost of gRPC Python alone on this host.

`serve_load.py --noop` starts it after each real server, with the same worker count and load,
so every report shows how much of a call's CPU is the transport (gRPC core, grpc.aio, asyncio,
protobuf) and how much is hybridrec's. It serves the same proto as `hybridrec serve --io asyncio
--workers N`: N forked processes on one SO_REUSEPORT port, each a `grpc.aio` server on the same
idle-measuring event loop, answering every `Recommend` with `k` fixed items and the same trailing
metadata (handler time, worker pid). It prints the supervisor's `serving on HOST:PORT with N
worker processes (pids ...)` line and stops its workers on SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from hybridrec.server.aio import run_async  # noqa: E402
from hybridrec.server.app import reserve_port  # noqa: E402
from hybridrec.server.cli import port_number, positive_int  # noqa: E402
from hybridrec.server.interceptors import call_metadata  # noqa: E402
from hybridrec.v1 import recommender_pb2 as pb  # noqa: E402
from hybridrec.v1 import recommender_pb2_grpc as pb_grpc  # noqa: E402

ITEM_IDS = [f"noop-{n}" for n in range(100)]


class NoopRecommender(pb_grpc.RecommenderServicer):
    def __init__(self) -> None:
        self.pid = str(os.getpid())

    async def Recommend(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        response = pb.RecommendResponse(model_version="noop", pipeline="noop", cold_start=not request.user_id)
        add = response.items.add
        for item_id in ITEM_IDS[: max(1, min(request.k, len(ITEM_IDS)))]:
            add(item_id=item_id, score=0.5)
        context.set_trailing_metadata(call_metadata(start, self.pid))
        return response


async def serve(address: str, stopping: list[bool], ready_fd: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    pb_grpc.add_RecommenderServicer_to_server(NoopRecommender(), server)
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"noop worker {os.getpid()}: cannot listen on {address}")
    await server.start()
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    while not stopping:
        await asyncio.sleep(0.2)
    await server.stop(1.0)


def worker(address: str, ready_fd: int) -> None:
    stopping: list[bool] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    run_async(serve(address, stopping, ready_fd))


def stop(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=0)
    parser.add_argument("--workers", type=positive_int, default=1)
    args = parser.parse_args()
    reserved, port = reserve_port(args.host, args.port)  # held (not listening) until the end
    address = f"{args.host}:{port}"
    ready_r, ready_w = os.pipe()
    pids = []
    for _ in range(args.workers):  # forked before any gRPC object exists here
        pid = os.fork()
        if pid == 0:
            reserved.close()
            os.close(ready_r)
            code = 0
            try:
                worker(address, ready_w)
            except BaseException:  # noqa: BLE001 - report, then leave without running the parent's code
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(ready_w)
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _: received.append(number))
    ready = b""
    while len(ready) < args.workers:  # a byte from each worker once it listens; b"" if all exited
        chunk = os.read(ready_r, args.workers)
        if not chunk:
            print("noop workers exited before serving", file=sys.stderr, flush=True)
            stop(pids)
            return 1
        ready += chunk
    os.close(ready_r)
    print(f"serving on {args.host}:{port} with {args.workers} worker processes "
          f"(pids {', '.join(map(str, pids))})", file=sys.stderr, flush=True)
    while not received:
        finished, _ = os.waitpid(-1, os.WNOHANG)
        if finished:
            print(f"noop worker {finished} exited early", file=sys.stderr, flush=True)
            break
        time.sleep(0.2)
    stop(pids)
    reserved.close()
    return 0 if received else 1


if __name__ == "__main__":
    sys.exit(main())
