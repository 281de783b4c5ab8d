"""Recommend latency on the demo model, through real gRPC on loopback.

Builds the demo data and model if absent (as `make demo` does), starts the server in a
separate process, sends requests from this process over a range of users (known, unknown,
with context), and prints p50/p95/p99 of both the server-side handler time (trailing metadata
`hybridrec-server-time-us`) and the client round trip. Writes the figures as JSON too.

    python benchmarks/latency.py [--requests 2000] [--dir .hybridrec/demo] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hybridrec.clients import RecommenderClient
from hybridrec.server.bundle import MANIFEST, load_model
from hybridrec.server.cli import non_negative_int, positive_int
from hybridrec.server.config import BUILTIN_CONFIG_DIR, load_training_config
from hybridrec.server.demo_data import generate
from hybridrec.server.training import train


def ensure_demo_model(root: Path, config: Path) -> Path:
    data, model = root / "data", root / "model"
    if not (data / "events.csv").is_file():
        generate(data)
    if not (model / MANIFEST).is_file():
        train(data / "events.csv", data / "items.csv", load_training_config(config), model)
    return model


def start_server(model: Path, config: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hybridrec.server.cli", "serve", "--model", str(model), "--config", str(config),
           "--port", str(port), "--host", "127.0.0.1"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_serving(client: RecommenderClient, proc: subprocess.Popen, limit: float = 60.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early: {proc.stderr.read()[-2000:]}")
        try:
            if client.health(timeout=1.0) == "SERVING":
                return
        except Exception:
            time.sleep(0.2)
    raise SystemExit("server did not become SERVING in time")


def client_port(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535; not 0 (any free port), as the client connects to the port given."""
    value = int(text)
    if not 0 < value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535 (the client connects to it), got {value}")
    return value


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "p99": float(np.percentile(arr, 99)), "max": float(arr.max()), "mean": float(arr.mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=positive_int, default=2000)
    parser.add_argument("--warmup", type=non_negative_int, default=100)
    parser.add_argument("--k", type=positive_int, default=10)
    parser.add_argument("--dir", type=Path, default=Path(".hybridrec/demo"))
    parser.add_argument("--config", type=Path, default=BUILTIN_CONFIG_DIR / "default.yaml")
    parser.add_argument("--model", type=Path, default=None, help="benchmark this bundle instead of the demo one")
    parser.add_argument("--pipeline", default="")
    parser.add_argument("--port", type=client_port, default=50871)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    model_dir = args.model or ensure_demo_model(args.dir, args.config)
    model = load_model(model_dir)
    rng = np.random.default_rng(0)
    users = model.user_ids[rng.integers(0, model.num_users, size=args.requests + args.warmup)].tolist()
    items = model.item_ids.tolist()
    proc = start_server(model_dir, args.config, args.port)
    server_ms, round_ms = [], []
    try:
        with RecommenderClient(f"127.0.0.1:{args.port}", timeout=5.0) as client:
            wait_serving(client, proc)
            for i, user in enumerate(users):
                context, who = (), user
                if i % 10 == 8:  # an unknown user
                    who = f"new-{i}"
                elif i % 10 == 9:  # an anonymous session with two context items
                    who, context = "", (items[i % len(items)], items[(7 * i) % len(items)])
                start = time.perf_counter()
                result = client.recommend(who, args.k, context_items=context, pipeline=args.pipeline)
                elapsed = (time.perf_counter() - start) * 1000
                if len(result.items) != args.k:
                    raise SystemExit(f"request {i} returned {len(result.items)} items")
                if i >= args.warmup:
                    round_ms.append(elapsed)
                    server_ms.append(result.server_time_us / 1000)
    finally:
        proc.terminate()
        proc.wait(10)
    report = {
        "model": str(model_dir), "users": model.num_users, "items": model.num_items,
        "pipeline": args.pipeline or "default", "k": args.k, "requests": len(server_ms),
        "server_ms": percentiles(server_ms), "round_trip_ms": percentiles(round_ms),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(f"model {model_dir}: {model.num_users} users, {model.num_items} items; {len(server_ms)} Recommend "
          f"requests (k={args.k}, pipeline {report['pipeline']}, 80% known users, 10% unknown, 10% context)")
    print(f"{'':12}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}  (ms)")
    for name in ("server_ms", "round_trip_ms"):
        row = report[name]
        print(f"{name[:-3]:12}{row['p50']:8.2f}{row['p95']:8.2f}{row['p99']:8.2f}{row['max']:8.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
