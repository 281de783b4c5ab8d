"""In-process cost of `Recommend` on a bundle, optionally against another commit, paired.

Runs the servicer's `Recommend` (validation, pipeline, response message; no gRPC) over the
request mix of serve_load.py (80% known users, 10% new, 10% anonymous with two context items)
and prints microseconds per call, back to back ("hot") and with the CPU caches flushed between
calls by a 16 MB pass, four times the L2 cache of this machine ("flushed"), which is closer to how calls run inside a busy server.

With `--against REV`, a git worktree of REV runs the same passes in a second process. The two
processes take turns every `--chunk` requests, ABBA, so a host that speeds up or slows down
during the run (a shared VM does, by tens of percent within seconds) weighs on both alike; the
figure to read is the median of the per-pass ratios. Both run on the same CPU (`--cpu`). Both processes check first that they give the same answers to every request, unless
`--allow-different-answers`.

    python benchmarks/pipeline_cost.py --model .hybridrec/bench/large/model \
        --config server/configs/large.yaml --pipeline hybrid --against 0eeb53d --passes 10
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# the package layout of a checkout: hybridrec.<name> lives in <checkout>/<dir>
PACKAGES = {"server": "server", "plugins": "plugins", "clients": "clients", "v1": "protos/hybridrec/v1"}


def package_shim(checkout: Path, into: Path) -> Path:
    """A directory whose `hybridrec` package is made of links into `checkout`; first on
    PYTHONPATH, it takes precedence over the installed (editable) hybridrec."""
    package = into / "hybridrec"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, sub in PACKAGES.items():
        (package / name).symlink_to(checkout / sub, target_is_directory=True)
    return into


def worker(args: argparse.Namespace) -> int:
    """One side: load, answer every request once (digest to stdout), then one pass per stdin line."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import serve_load  # the request mix

    from hybridrec.server.app import load_state
    from hybridrec.server.service import RecommenderService
    from hybridrec.v1 import recommender_pb2 as pb

    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    state = load_state(args.model, args.config, mmap=True)
    if getattr(state, "precomputed", None):  # the pipeline's cost, not a stored answer's
        state = dataclasses.replace(state, precomputed={})
    service = RecommenderService(state)
    requests = [pb.RecommendRequest(user_id=user, k=args.k, context_item_ids=list(context), pipeline=args.pipeline)
                for user, context in serve_load.request_specs(Path(args.model), args.requests)]

    class Context:  # what Recommend reads of a gRPC context
        def time_remaining(self) -> None:
            return None

    context = Context()
    digest = hashlib.sha256()
    for request in requests:  # also the warm-up
        response = service.Recommend(request, context)
        for item in response.items:
            digest.update(f"{item.item_id}:{item.score!r};".encode())
        digest.update(f"|{response.pipeline}|{','.join(response.degraded_stages)}\n".encode())
    junk = np.ones(4 << 20, dtype=np.float32)  # 16 MB: evicts the request's data from L1 and L2
    print(json.dumps({"ready": True, "answers": digest.hexdigest(), "code": str(Path(pb.__file__).resolve())}),
          flush=True)
    for line in sys.stdin:  # "START COUNT": time requests[START:START + COUNT], hot, then flushed
        start, count = (int(v) for v in line.split())
        chunk = requests[start:start + count]
        figures = []
        for flush in (False, True):
            total = 0.0
            for request in chunk:
                if flush:
                    junk.sum()
                started = time.perf_counter()
                service.Recommend(request, context)
                total += time.perf_counter() - started
            figures.append(total)
        print(json.dumps({"hot_s": figures[0], "flushed_s": figures[1]}), flush=True)
    return 0


def start(args: argparse.Namespace, shim: Path | None) -> subprocess.Popen:
    env = dict(os.environ)
    if args.cpu is not None:  # BLAS and OpenMP threads on one CPU would spin against each other
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if shim is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(shim), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, __file__, "--worker", "--model", str(args.model), "--config", str(args.config),
           "--pipeline", args.pipeline, "--requests", str(args.requests), "--k", str(args.k)]
    if args.cpu is not None:
        cmd += ["--cpu", str(args.cpu)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)


def read(proc: subprocess.Popen, label: str) -> dict:
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"pipeline_cost: the {label} process exited ({proc.wait()}); see its error above")
    return json.loads(line)


def main() -> int:
    if "--worker" in sys.argv[1:]:  # its arguments come from the parent, which checked them; and its hybridrec
        positive_int = int  # may be another revision's (--against), older than these argparse types
    else:
        from hybridrec.server.cli import positive_int

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / ".hybridrec/bench/large/model")
    parser.add_argument("--config", type=Path, default=REPO / "server/configs/large.yaml")
    parser.add_argument("--pipeline", default="", help="pipeline to request (default: the config's default)")
    parser.add_argument("--requests", type=positive_int, default=2000)
    parser.add_argument("--k", type=positive_int, default=10)
    parser.add_argument("--passes", type=positive_int, default=6, help="timed passes over the requests per side")
    parser.add_argument("--chunk", type=positive_int, default=100,
                        help="requests per turn: the sides alternate every CHUNK requests within a pass")
    parser.add_argument("--against", default=None, help="a git revision to compare with, run from a worktree")
    cpus = sorted(os.sched_getaffinity(0))
    parser.add_argument("--cpu", type=int, choices=cpus, default=cpus[-1],
                        help="the one CPU both sides run on (default: the last this process may use), so they "
                             "never differ by the core they got")
    parser.add_argument("--allow-different-answers", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not (args.model / "manifest.json").is_file():
        raise SystemExit(f"pipeline_cost: {args.model} is not a bundle (no manifest.json); build one with "
                         "`make bench-scale` or `hybridrec train`")
    with tempfile.TemporaryDirectory(prefix="pipeline_cost-") as tmp:
        sides = {"this checkout": start(args, None)}
        worktree = None
        if args.against:
            worktree = Path(tmp) / "worktree"
            made = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.against],
                                  capture_output=True, text=True)
            if made.returncode != 0:
                raise SystemExit(f"pipeline_cost: cannot check out {args.against!r}: {made.stderr.strip()}")
            sides[args.against] = start(args, package_shim(worktree, Path(tmp) / "shim"))
        try:
            ready = {label: read(proc, label) for label, proc in sides.items()}
            digests = {r["answers"] for r in ready.values()}
            if len(digests) > 1 and not args.allow_different_answers:
                raise SystemExit("pipeline_cost: the two sides give different answers to the same requests; "
                                 "pass --allow-different-answers to time them anyway")
            passes: dict[str, list[dict]] = {label: [] for label in sides}
            labels = list(sides)
            turn = 0
            for _ in range(args.passes):
                totals = {label: {"hot_us": 0.0, "flushed_us": 0.0} for label in sides}
                for start_at in range(0, args.requests, args.chunk):
                    for label in labels if turn % 2 == 0 else labels[::-1]:  # ABBA, chunk by chunk
                        sides[label].stdin.write(f"{start_at} {args.chunk}\n")
                        sides[label].stdin.flush()
                        times = read(sides[label], label)
                        totals[label]["hot_us"] += times["hot_s"] * 1e6 / args.requests
                        totals[label]["flushed_us"] += times["flushed_s"] * 1e6 / args.requests
                    turn += 1
                for label in sides:
                    passes[label].append(totals[label])
        finally:
            for proc in sides.values():
                if proc.stdin:
                    proc.stdin.close()
                proc.wait(60)
            if worktree is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                               capture_output=True)
    report = {"model": str(args.model), "config": str(args.config), "pipeline": args.pipeline or "default",
              "requests": args.requests, "chunk": args.chunk, "cpu": args.cpu, "against": args.against, "passes": passes, "same_answers": len(digests) == 1, "summary": {}}
    print(f"{args.requests} requests x {args.passes} passes, bundle {args.model}, config {args.config.name}, "
          f"pipeline {args.pipeline or 'default'}; answers {'the same' if len(digests) == 1 else 'DIFFERENT'}")
    for kind in ("hot_us", "flushed_us"):
        row = {label: float(np.median([p[kind] for p in runs])) for label, runs in passes.items()}
        line = f"{kind[:-3]:>8}: " + ", ".join(f"{label} median {v:.0f} us/call" for label, v in row.items())
        if args.against:
            ratios = np.array([a[kind] / b[kind] for a, b in zip(passes["this checkout"], passes[args.against])])
            row["ratio_median"] = float(np.median(ratios))
            line += (f"; this / {args.against} per pass: median {np.median(ratios):.3f} "
                     f"(range {ratios.min():.3f}-{ratios.max():.3f})")
        report["summary"][kind] = row
        print(line)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
