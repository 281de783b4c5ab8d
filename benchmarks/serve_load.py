"""Serving load benchmark: `hybridrec serve [--workers N]` under closed- and open-loop gRPC load.

For each model (the demo model by default; `--model DIR --config FILE`; or the scale bundles
`.hybridrec/bench/<size>/model` with `--sizes`) and each worker count, this starts
`hybridrec serve` in its own process(es), then drives it from a SEPARATE load-generator process:
by default benchmarks/loadgen.c (built here with the C compiler: gRPC over HTTP/2 on `--channels`
connections, one epoll loop, about 0.05 ms of CPU per call), or with `--generator python`
grpc.aio processes (`--clients`, one event loop each, requests built in advance; about 0.45 ms of
CPU per call, which on a 2-core machine is taken from the server):

- closed loop: C requests in flight (`--concurrency 1 4 16 64`) for `--duration` seconds each;
- open loop: a fixed arrival rate (`--rate 1000 --rate-duration 30`); latency counts from the
  scheduled send time, so a server that falls behind is not hidden (no coordinated omission).

Request mix as benchmarks/latency.py: Recommend k=10 on the default pipeline; 80% known users,
10% unknown users, 10% anonymous sessions with two context items.

Reported per level: achieved requests/s, client round trip p50/p95/p99/max (ms), errors, the
server's own handler time (trailing metadata `hybridrec-server-time-us`), how many requests each
worker pid served (`hybridrec-worker-pid`), CPU used (cores) by the server processes, by the
load generator and by the whole machine (the rest is other work on the machine), and the server
processes' memory after the load (VmRSS, and Pss, which splits shared pages fairly). With
`server.precomputed` in the config, each run's JSON has the calls the stored answers served
(`stored_answer_calls`, from the workers' last log lines, warm-up calls included).
Prints a table and writes JSON (default benchmarks/results/serve_load.json).

With `--noop`, each server is followed by benchmarks/noop_server.py with as many workers, under
the same levels: the same proto and transport, no pipeline. Its CPU per call is what gRPC Python
costs on this host at that moment, so a report taken in a slow phase of a shared host can be told
apart from a slower hybridrec.

    python benchmarks/serve_load.py                                   # demo model, workers 1 and 2
    python benchmarks/serve_load.py --sizes medium large --rate 1000   # the scale bundles
    python benchmarks/serve_load.py --model DIR --config FILE --workers 2 --concurrency 1 16
    python benchmarks/serve_load.py --sizes large --workers 3 --rate 1000 --noop
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

SERVER_TIME_KEY = "hybridrec-server-time-us"
WORKER_PID_KEY = "hybridrec-worker-pid"
NOOP_SERVER = Path(__file__).resolve().parent / "noop_server.py"
SERVING_WORKERS = re.compile(r"serving on (\S+):(\d+) with (\d+) worker processes \(pids ([\d, ]+)\)")
SERVING_SINGLE = re.compile(r"serving model .* on (\S+):(\d+)\s*$", re.M)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- load generator (own process)

def _load_process(conn, target: str, specs: list[tuple[str, tuple[str, ...]]], k: int, pipeline: str,
                  channels: int, timeout: float) -> None:
    """A load-generator process: receives commands on `conn`, runs them, sends results back."""
    asyncio.run(_load_main(conn, target, specs, k, pipeline, channels, timeout))


async def _load_main(conn, target, specs, k, pipeline, channels, timeout) -> None:
    import grpc
    from hybridrec.v1 import recommender_pb2 as pb
    from hybridrec.v1 import recommender_pb2_grpc as pb_grpc

    requests = [pb.RecommendRequest(user_id=user, k=k, context_item_ids=list(context), pipeline=pipeline)
                for user, context in specs]
    # Each channel its own subchannel pool, hence its own TCP connection: with SO_REUSEPORT the
    # kernel gives each new connection to one worker, so several connections reach all of them.
    chans = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    stubs = [pb_grpc.RecommenderStub(c) for c in chans]
    for stub in stubs:  # connect all of them now
        await stub.Recommend(requests[0], timeout=30)
    conn.send(("ready",))
    loop = asyncio.get_running_loop()
    counter = 0
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command[0] == "quit":
            break
        mode, start_at, warmup, duration, level = command[1:]
        lat: list[float] = []
        server_us: list[int] = []
        pids: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        state = {"late": 0, "degraded": 0}
        t0 = loop.time() + max(0.0, start_at - time.time())
        measure_from, end = t0 + warmup, t0 + warmup + duration

        async def one(stub, request, sent: float) -> None:
            # counted when sent (or scheduled) inside the measured window, whenever it completes
            counted = measure_from <= sent < end
            try:
                call = stub.Recommend(request, timeout=timeout)
                response = await call
                metadata = await call.trailing_metadata()
                done = loop.time()
                if counted:
                    if len(response.items) != k:
                        errors["short_answer"] += 1
                        return
                    lat.append((done - sent) * 1000.0)
                    state["degraded"] += bool(response.degraded_stages)
                    for key, value in metadata:
                        if key == SERVER_TIME_KEY:
                            server_us.append(int(value))
                        elif key == WORKER_PID_KEY:
                            pids[value] += 1
            except grpc.aio.AioRpcError as exc:
                if counted:
                    errors[exc.code().name] += 1

        await asyncio.sleep(max(0.0, t0 - loop.time()))
        cpu0 = None

        async def mark() -> None:
            nonlocal cpu0
            await asyncio.sleep(max(0.0, measure_from - loop.time()))
            cpu0 = os.times()

        marker = asyncio.ensure_future(mark())
        if mode == "closed":
            async def worker(slot: int) -> None:
                nonlocal counter
                while loop.time() < end:
                    counter += 1  # requests rotate over the connections, so even c=1 reaches every worker
                    await one(stubs[counter % len(stubs)], requests[counter % len(requests)], loop.time())

            await asyncio.gather(*(worker(slot) for slot in range(level)))
        else:  # open loop at `level` requests/s
            interval = 1.0 / level
            tasks: set[asyncio.Task] = set()
            i = 0
            max_in_flight = 2000
            while True:
                scheduled = t0 + i * interval
                if scheduled >= end:
                    break
                delay = scheduled - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                i += 1
                if len(tasks) >= max_in_flight:
                    if measure_from <= scheduled < end:
                        state["late"] += 1
                    continue
                counter += 1
                task = asyncio.ensure_future(one(stubs[i % len(stubs)], requests[counter % len(requests)], scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks)
        await marker
        cpu1 = os.times()
        if state["late"]:
            errors["not_sent_too_many_in_flight"] += state["late"]
        spent = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system) if cpu0 else 0.0
        cpu = spent / max(loop.time() - measure_from, 1e-6)  # cores, over the window and any drain
        conn.send(("done", np.asarray(lat, dtype=np.float32), np.asarray(server_us, dtype=np.int64),
                   dict(pids), dict(errors), cpu, state["degraded"]))
    for chan in chans:
        await chan.close()


# ---------------------------------------------------------------- server process and /proc readings

class ServerProcess:
    """`hybridrec serve` in a subprocess; its stderr is collected; knows its serving pids."""

    def __init__(self, model: Path, config: Path, workers: int, threads: int, extra: list[str],
                 noop: bool = False) -> None:
        if noop:  # the transport alone, as `hybridrec serve --io asyncio --workers N` runs it
            cmd = [sys.executable, str(NOOP_SERVER), "--host", "127.0.0.1", "--port", "0", "--workers", str(workers)]
        else:
            cmd = [sys.executable, "-m", "hybridrec.server.cli", "serve", "--model", str(model), "--config",
                   str(config), "--host", "127.0.0.1", "--port", "0", "--threads", str(threads), *extra]
            if workers != 1:  # a single process is the plain `serve` (any hybridrec version runs it)
                cmd += ["--workers", str(workers)]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()
        self.port = 0
        self.pids: list[int] = []

    def wait_serving(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            text = "".join(self.lines)
            match = SERVING_WORKERS.search(text)
            if match:
                self.port = int(match.group(2))
                self.pids = [int(p) for p in match.group(4).split(",")]
                return
            match = SERVING_SINGLE.search(text)
            if match:
                self.port, self.pids = int(match.group(2)), [self.proc.pid]
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"server not serving after {limit:.0f} s:\n{''.join(self.lines)[-3000:]}")

    def all_pids(self) -> list[int]:
        return sorted({self.proc.pid, *self.pids})

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


OVERLOAD_SUMMARY = re.compile(r"overload: \d+ episodes; calls served by fallbacks: (.*)$")


def fallback_calls(lines: list[str]) -> dict[str, int]:
    """Calls each `server.overload` fallback pipeline served, summed over the workers' last log
    lines (over the server's whole run, every level)."""
    served: Counter[str] = Counter()
    for line in lines:
        match = OVERLOAD_SUMMARY.search(line.rstrip())
        if match and match.group(1) != "none":
            for part in match.group(1).split(", "):
                name, count = part.rsplit(" ", 1)
                served[name] += int(count)
    return dict(served)


PRECOMPUTED_SUMMARY = re.compile(r"server\.precomputed: (\d+) Recommend calls answered from stored answers$")


def stored_answer_calls(lines: list[str]) -> int | None:
    """Recommend calls answered from `server.precomputed` tables, summed over the workers' last
    log lines (over the server's whole run, every level); None when no worker used a table."""
    counts = [int(m.group(1)) for m in (PRECOMPUTED_SUMMARY.search(line.rstrip()) for line in lines) if m]
    return sum(counts) if counts else None


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def machine_busy_seconds() -> tuple[float, float, float]:
    """(busy, total, steal) CPU seconds since boot, over all cores. Steal is time the
    hypervisor gave this VM's CPUs to others while they had work: a sign of a busy host."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    steal = values[7] if len(values) > 7 else 0
    return (sum(values) - idle - steal) / CLK_TCK, sum(values) / CLK_TCK, steal / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:", "RssShmem:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1])
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        pass
    return out


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------- driver

def request_specs(model_dir: Path, n: int, seed: int = 0) -> list[tuple[str, tuple[str, ...]]]:
    """The request mix, from the bundle's id arrays only (memory-mapped: a 1M-item bundle is
    not loaded into this process)."""
    users = np.load(model_dir / "user_ids.npy", mmap_mode="r")
    items = np.load(model_dir / "item_ids.npy", mmap_mode="r")
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(n):
        kind = i % 10
        if kind == 8:
            specs.append((f"new-{i}", ()))
        elif kind == 9:
            a, b = rng.integers(0, len(items), size=2)
            specs.append(("", (str(items[a]), str(items[b]))))
        else:
            specs.append((str(users[rng.integers(0, len(users))]), ()))
    return specs


def percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "p99": float(np.percentile(values, 99)), "max": float(values.max())}


def measure_window(server: ServerProcess, begin: float, duration: float) -> dict:
    """Sleeps until wall-clock `begin`, then measures server and machine CPU over `duration` s."""
    time.sleep(max(0.0, begin - time.time()))
    pids = server.all_pids()
    s0 = sum(proc_cpu_seconds(p) for p in pids)
    m0 = machine_busy_seconds()
    t0 = time.monotonic()
    time.sleep(duration)
    s1 = sum(proc_cpu_seconds(p) for p in pids)
    m1 = machine_busy_seconds()
    return {"seconds": time.monotonic() - t0, "server": s1 - s0, "machine": m1[0] - m0[0],
            "machine_total": m1[1] - m0[1], "steal": m1[2] - m0[2]}


def level_result(mode: str, level: float, duration: float, lat_all: np.ndarray, server_us: np.ndarray,
                 served: Counter, errors: Counter, client_cpu: float, window: dict, degraded: int) -> dict:
    """One level's figures: latencies of the answered calls, errors by kind, CPU by whom, and how
    many answers listed a degraded stage (e.g. served by an overload fallback pipeline)."""
    srv_all = server_us.astype(np.float64) / 1000.0
    seconds = window["seconds"]
    per_request = (round(window["server"] / seconds * 1000.0 / (len(lat_all) / duration), 3) if len(lat_all)
                   else float("nan"))  # no answered call: no CPU per call to speak of
    return {
        "mode": mode, "level": level, "duration_s": duration, "requests": int(len(lat_all)),
        "throughput_rps": round(len(lat_all) / duration, 1),
        "latency_ms": percentiles(lat_all), "server_ms": percentiles(srv_all),
        "errors": int(sum(errors.values())), "error_kinds": dict(errors),
        "degraded": degraded, "degraded_share": round(degraded / max(len(lat_all), 1), 4),
        "served_by_pid": dict(served),
        "cpu_cores": {"server": round(window["server"] / seconds, 2), "load_generator": round(client_cpu, 2),
                      "machine": round(window["machine"] / seconds, 2),
                      "machine_total": round(window["machine_total"] / seconds, 2),
                      "steal": round(window["steal"] / seconds, 3)},
        "server_cpu_ms_per_request": per_request,
        "loadavg": loadavg(),
    }


class LoadGenerators:
    """`n` load-generator processes (spawned: fresh interpreters, no inherited gRPC state)."""

    def __init__(self, n: int, target: str, specs, k: int, pipeline: str, channels: int, timeout: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_load_process, args=(child, target, specs, k, pipeline, channels, timeout),
                               daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            if not conn.poll(120):
                raise SystemExit("load generator did not start")
            conn.recv()

    def run(self, mode: str, level: float, warmup: float, duration: float, server: ServerProcess) -> dict:
        n = len(self.conns)
        if mode == "closed":  # spread the in-flight requests over the processes
            shares = [level // n + (1 if i < level % n else 0) for i in range(n)]
        else:
            shares = [level / n] * n
        start_at = time.time() + 0.3
        active = [(c, s) for c, s in zip(self.conns, shares) if s > 0]
        for conn, share in active:
            conn.send(("run", mode, start_at, warmup, duration, share))
        window = measure_window(server, start_at + warmup, duration)
        lat, srv, served, errors, client_cpu, degraded = [], [], Counter(), Counter(), 0.0, 0
        for conn, _ in active:
            _, l, s, p, e, cpu, d = conn.recv()
            lat.append(l)
            srv.append(s)
            served.update(p)
            errors.update(e)
            client_cpu += cpu
            degraded += d
        return level_result(mode, level, duration, np.concatenate(lat), np.concatenate(srv), served, errors,
                            client_cpu, window, degraded)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("quit",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


LOADGEN_SOURCE = REPO / "benchmarks" / "loadgen.c"
# one record per counted call, as benchmarks/loadgen.c writes them
LOADGEN_RECORD = np.dtype([("ms", "<f4"), ("at_s", "<f4"), ("server_us", "<i4"), ("pid", "<i4"), ("items", "<i4"),
                           ("status", "<i4"), ("degraded", "<i4")])
LOADGEN_FAILURES = {-1: "no_grpc_status", -2: "stream_reset", -3: "connection_lost", -4: "no_answer_by_deadline",
                    -5: "not_sent_too_many_in_flight"}


def by_second(calls: np.ndarray) -> dict:
    """Latency by second of the measured window (by send time): is a bad p99 one stall or a
    queue that kept growing? Seconds whose p99 is over 50 ms are listed with it, and the share of
    each second's answers that listed a degraded stage."""
    second = np.floor(calls["at_s"]).astype(np.int64)
    p99, worst, degraded = [], [], []
    for s in np.unique(second):
        in_second = second == s
        ms = calls["ms"][in_second]
        p99.append(round(float(np.percentile(ms, 99)), 2))
        worst.append(round(float(ms.max()), 1))
        degraded.append(round(float((calls["degraded"][in_second] > 0).mean()), 3))
    slow = [i for i, v in enumerate(p99) if v > 50.0]
    return {"p99_ms": p99, "max_ms": worst, "seconds_over_50ms": slow, "degraded_share": degraded}


def build_loadgen(out_dir: Path) -> Path:
    """Compiles benchmarks/loadgen.c (once; again when the source is newer) with the C compiler."""
    binary = out_dir / "loadgen"
    if binary.is_file() and binary.stat().st_mtime >= LOADGEN_SOURCE.stat().st_mtime:
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CC", "cc")
    try:
        subprocess.run([compiler, "-O2", "-o", str(binary), str(LOADGEN_SOURCE)], check=True,
                       capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise SystemExit(f"cannot build the native load generator with {compiler} ({detail.strip()[:300]}); "
                         "install a C compiler or pass --generator python")
    return binary


class NativeGenerator:
    """benchmarks/loadgen.c in its own process: same request mix, levels and figures as
    LoadGenerators, at a few microseconds of CPU per call instead of about half a millisecond."""

    def __init__(self, binary: Path, port: int, specs, k: int, pipeline: str, channels: int, timeout: float,
                 workdir: Path) -> None:
        from hybridrec.v1 import recommender_pb2 as pb

        self.binary, self.port, self.k, self.channels, self.timeout = binary, port, k, channels, timeout
        workdir.mkdir(parents=True, exist_ok=True)
        self.requests, self.out = workdir / "requests.bin", workdir / "calls.bin"
        with self.requests.open("wb") as f:
            for user, context in specs:
                body = pb.RecommendRequest(user_id=user, k=k, context_item_ids=list(context),
                                           pipeline=pipeline).SerializeToString()
                f.write(len(body).to_bytes(4, "little") + body)

    def run(self, mode: str, level: float, warmup: float, duration: float, server: ServerProcess) -> dict:
        import grpc

        start_at = time.time() + 0.5  # after the connections are up
        cmd = [str(self.binary), "--port", str(self.port), "--requests", str(self.requests), "--out", str(self.out),
               "--mode", mode, "--level", f"{level:g}", "--connections", str(self.channels), "--warmup", str(warmup),
               "--duration", str(duration), "--start-at", f"{start_at:.6f}", "--timeout", str(self.timeout)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        window = measure_window(server, start_at + warmup, duration)
        stdout, stderr = proc.communicate(timeout=duration + warmup + self.timeout + 60)
        if proc.returncode != 0:
            raise SystemExit(f"load generator failed ({proc.returncode}): {stderr.strip()}")
        summary = json.loads(stdout)
        calls = np.fromfile(self.out, dtype=LOADGEN_RECORD)
        ok = (calls["status"] == 0) & (calls["items"] == self.k)
        names = {code.value[0]: code.name for code in grpc.StatusCode}
        errors: Counter[str] = Counter()
        for status, count in zip(*np.unique(calls["status"][~ok], return_counts=True)):
            name = "short_answer" if status == 0 else LOADGEN_FAILURES.get(int(status), names.get(int(status)))
            errors[name or f"status_{status}"] += int(count)
        served = Counter({str(pid): int(n) for pid, n in zip(*np.unique(calls["pid"][ok], return_counts=True))})
        client_cpu = summary["cpu_seconds"] / max(summary["window_seconds"], 1e-6)
        result = level_result(mode, level, duration, calls["ms"][ok], calls["server_us"][ok].astype(np.int64), served,
                              errors, client_cpu, window, int((calls["degraded"][ok] > 0).sum()))
        result["by_second"] = by_second(calls[ok])
        return result

    def close(self) -> None:
        pass


def level_name(r: dict) -> str:
    return f"c={r['level']}" if r["mode"] == "closed" else f"rate={r['level']:g}/s"


def unanswered_levels(runs: list[dict]) -> list[str]:
    """The measured levels with no successful request (every call failed), each named with its errors."""
    return [f"{run['model']} workers={run['workers']} {level_name(r)} ({r['generator']}: "
            + (", ".join(f"{n} {kind}" for kind, n in sorted(r["error_kinds"].items())) or "no call counted") + ")"
            for run in runs for r in run["levels"] if r["requests"] == 0]


def fmt_row(label: str, workers: int, r: dict) -> list[str]:
    lat, srv, cpu = r["latency_ms"], r["server_ms"], r["cpu_cores"]
    level = level_name(r)
    spread = "/".join(str(v) for v in sorted(r["served_by_pid"].values(), reverse=True))
    return [label, str(workers), level, f"{r['throughput_rps']:.0f}", f"{lat['p50']:.2f}", f"{lat['p95']:.2f}",
            f"{lat['p99']:.2f}", f"{lat['max']:.1f}", str(r["errors"]), f"{100 * r['degraded_share']:.1f}%",
            f"{srv['p50']:.2f}", f"{srv['p99']:.2f}",
            spread, f"{cpu['server']:.2f}", f"{r['server_cpu_ms_per_request']:.2f}", f"{cpu['load_generator']:.2f}",
            f"{cpu['machine']:.2f}", f"{cpu.get('steal', 0.0):.2f}"]


HEADER = ["model", "workers", "load", "req/s", "p50", "p95", "p99", "max", "errors", "degraded", "srv p50", "srv p99",
          "per pid", "cpu srv", "ms/req", "cpu gen", "cpu all", "steal"]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(HEADER, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def models_to_run(args: argparse.Namespace) -> list[tuple[str, Path, Path]]:
    from hybridrec.server.bundle import MANIFEST
    from hybridrec.server.config import BUILTIN_CONFIG_DIR

    default_config = BUILTIN_CONFIG_DIR / "default.yaml"
    models = []
    if args.model:
        models.append((args.model.name, args.model, args.config or default_config))
    for size in args.sizes or []:
        model = args.bench_dir / size / "model"
        if not (model / MANIFEST).is_file():
            print(f"skipping size {size}: no bundle at {model} (benchmarks/train_scale.py builds it)", file=sys.stderr)
            continue
        models.append((size, model, args.scale_config or args.config or BUILTIN_CONFIG_DIR / "large.yaml"))
    if args.demo or not (args.model or args.sizes):
        from latency import ensure_demo_model

        config = args.config or default_config
        models.insert(0, ("demo", ensure_demo_model(args.demo_dir, config), config))
    return models


def main() -> int:
    # here, not at the top: pipeline_cost.py imports this module (the request mix) under another
    # revision's hybridrec (--against), which may predate these
    from hybridrec.server.app import resolve_workers
    from hybridrec.server.cli import non_negative_float, non_negative_int, positive_float, positive_int

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", type=Path, help="a bundle directory to serve")
    parser.add_argument("--config", type=Path, help="its config (default: server/configs/default.yaml)")
    parser.add_argument("--sizes", nargs="*", help="scale bundles: BENCH_DIR/<size>/model, e.g. medium large")
    parser.add_argument("--bench-dir", type=Path, default=Path(".hybridrec/bench"))
    parser.add_argument("--scale-config", type=Path, help="config of the --sizes bundles (default: server/configs/large.yaml)")
    parser.add_argument("--demo", action="store_true", help="include the demo model with --model/--sizes")
    parser.add_argument("--demo-dir", type=Path, default=Path(".hybridrec/demo"))
    parser.add_argument("--workers", type=non_negative_int, nargs="+", default=[1, 2],
                        help="server worker counts to compare (0: one per CPU, as `hybridrec serve --workers 0`)")
    parser.add_argument("--threads", type=positive_int, default=8, help="handler threads per server process")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `hybridrec serve` argument (repeat)")
    parser.add_argument("--concurrency", type=positive_int, nargs="*", default=[1, 4, 16, 64], help="closed-loop levels")
    parser.add_argument("--duration", type=positive_float, default=10.0, help="seconds measured per closed-loop level")
    parser.add_argument("--warmup", type=non_negative_float, default=2.0, help="seconds of load before measuring each level")
    parser.add_argument("--rate", type=positive_float, nargs="*", default=[], help="open-loop target rates (requests/s)")
    parser.add_argument("--rate-duration", type=positive_float, default=30.0, help="seconds measured per open-loop rate")
    parser.add_argument("--generator", choices=["native", "python"], nargs="+", default=["native"],
                        help="load generator(s), each running every level in the order given: native (benchmarks/loadgen.c, built with the C compiler; a few us of "
                             "CPU per call) or python (grpc.aio; about 0.5 ms of CPU per call, taken from the "
                             "server's cores on a small machine)")
    parser.add_argument("--clients", type=positive_int, default=1, help="load-generator processes (--generator python)")
    parser.add_argument("--channels", type=positive_int, default=16, help="gRPC channels (connections) per load process")
    parser.add_argument("--k", type=positive_int, default=10)
    parser.add_argument("--pipeline", default="", help="pipeline to request (default: the config's default)")
    parser.add_argument("--timeout", type=positive_float, default=5.0, help="per-request deadline (s)")
    parser.add_argument("--start-timeout", type=positive_float, default=900.0, help="seconds for the server to start")
    parser.add_argument("--noop", action="store_true",
                        help="after each server, the same levels against benchmarks/noop_server.py with as many "
                             "workers: gRPC Python without a pipeline, the floor of a call's cost on this host")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args()
    args.workers = [resolve_workers(workers) for workers in args.workers]  # 0: one per CPU, counted as serve counts

    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_before": loadavg()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": [],
    }
    rows: list[list[str]] = []
    loadgen = build_loadgen(args.bench_dir / "bin") if "native" in args.generator else None
    for label, model_dir, config in models_to_run(args):
        manifest = json.loads((model_dir / "manifest.json").read_text())
        counts = manifest.get("counts", {})
        specs = request_specs(model_dir, 4000)
        print(f"== {label}: {model_dir} ({counts.get('users')} users, {counts.get('items')} items), config {config}, "
              f"pipeline {args.pipeline or 'default'}; load average {loadavg()}", flush=True)
        servers = [(workers, False) for workers in args.workers]
        if args.noop:  # each real server, then the no-op one with its worker count: interleaved
            servers = [(workers, noop) for workers in args.workers for noop in (False, True)]
        for workers, noop in servers:
            server = ServerProcess(model_dir, config, workers, args.threads, args.server_arg, noop=noop)
            row_label = f"{label}:noop" if noop else label
            started = time.monotonic()
            server.wait_serving(args.start_timeout)
            start_s = time.monotonic() - started
            memory_idle = {str(p): memory_kb(p) for p in server.all_pids()}
            run = {"model": row_label, "model_dir": str(model_dir), "config": "" if noop else str(config),
                   "noop": noop, "users": counts.get("users"),
                   "items": counts.get("items"), "workers": workers, "threads": args.threads,
                   "generators": args.generator,
                   "pipeline": args.pipeline or "default",
                   "server_cmd": " ".join(server.cmd[1:]), "start_seconds": round(start_s, 1), "levels": []}
            gens: dict[str, Any] = {}
            try:
                if "native" in args.generator:
                    gens["native"] = NativeGenerator(loadgen, server.port, specs, args.k, args.pipeline, args.channels,
                                                     args.timeout, args.bench_dir / "loadgen-run")
                if "python" in args.generator:
                    gens["python"] = LoadGenerators(args.clients, f"127.0.0.1:{server.port}", specs, args.k,
                                                    args.pipeline, args.channels, args.timeout)
                plan = [("closed", c, args.duration) for c in args.concurrency]
                plan += [("open", r, args.rate_duration) for r in args.rate]
                for name in args.generator:  # in the order given: `native python python native` alternates
                    for mode, level, duration in plan:
                        result = gens[name].run(mode, level, args.warmup, duration, server)
                        result["generator"] = name
                        run["levels"].append(result)
                        row = f"{row_label}:{args.pipeline}" if args.pipeline and not noop else row_label
                        rows.append(fmt_row(f"{row} ({name})" if len(set(args.generator)) > 1 else row, workers,
                                            result))
                        print(table([rows[-1]]).splitlines()[-1] if len(rows) > 1 else table(rows), flush=True)
            finally:
                for gen in gens.values():
                    gen.close()
                run["memory_kb_idle"] = memory_idle
                run["memory_kb_after_load"] = {str(p): memory_kb(p) for p in server.all_pids()}
                code = server.stop()
                server.reader.join(5)
                run["stop_exit_code"] = code
                run["stderr_tail"] = "".join(server.lines[-5:])
                run["overload_fallback_calls"] = fallback_calls(server.lines)
                run["stored_answer_calls"] = stored_answer_calls(server.lines)
            after = run["memory_kb_after_load"]
            workers_only = [m for p, m in after.items() if int(p) != server.proc.pid or workers == 1]
            run["rss_mb_workers"] = round(sum(m.get("VmRSS", 0) for m in workers_only) / 1024, 1)
            run["pss_mb_workers"] = round(sum(m.get("Pss", 0) for m in workers_only) / 1024, 1)
            print(f"   {row_label} workers={workers}: started in {start_s:.1f} s; after load VmRSS "
                  + ", ".join(f"pid {p} {m.get('VmRSS', 0) / 1024:.0f} MB (Pss {m.get('Pss', 0) / 1024:.0f})"
                              for p, m in after.items())
                  + f"; server exit code {code}"
                  + (f"; {run['stored_answer_calls']} calls answered from precomputed answers"
                     if run["stored_answer_calls"] is not None else ""), flush=True)
            report["runs"].append(run)
    report["machine"]["loadavg_after"] = loadavg()
    print()
    print(table(rows))
    print("latency ms (client round trip; open loop: from the scheduled send time); degraded = share of the "
          "answers that listed a degraded stage (e.g. served by a `server.overload` fallback); srv = handler time in the "
          "server; per pid = requests each server process answered; cpu = cores used by the server processes "
          f"(ms/req: server CPU per request), the load generator, and the whole machine (of {os.cpu_count()}; "
          "beyond the first two, other work); steal = cores the hypervisor gave to other VMs while this one had work")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    failed = unanswered_levels(report["runs"])
    if failed:  # a level whose every call failed measured nothing: not a result to compare
        print(f"serve_load: no successful request at {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
