"""Training at scale: synthetic data -> `hybridrec train` -> bundle load -> ANN recall.

For each size (small 10K users x 5K items x 200K events, medium 200K x 100K x 5M, large
1M x 1M x 20M) this script

1. generates the data with `hybridrec scale-data` unless `.hybridrec/bench/<size>/data/`
   already holds it;
2. runs `hybridrec train` in a subprocess (config `server/configs/large.yaml` by default)
   into `.hybridrec/bench/<size>/model/`, measuring wall time and peak RSS with
   `/usr/bin/time` (or getrusage when it is absent), and keeps the step timings of its log
   (with `server.precomputed` in the config, as in large.yaml, `train` ends by storing those
   answers, and the time includes it);
3. measures the bundle size, and in a fresh subprocess the load time (`load_state`, what
   `hybridrec serve` does before it listens) and the RSS after load;
4. measures, in another fresh subprocess, recall@100 of the bundle's configured FAISS
   indexes against exact `IndexFlatIP` search over the same vectors, on sampled user
   queries (cf index: user factors) and item queries (content index: item vectors), and the
   per-query search latency (one query at a time, one FAISS thread, as the server searches).

It prints a table and writes `benchmarks/results/train_scale.json` (sizes measured earlier
and not re-run are kept). The serving benchmarks read the bundles from the same layout.

    .venv/bin/python benchmarks/train_scale.py --sizes small,medium
    nohup .venv/bin/python benchmarks/train_scale.py --sizes large > large.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SIZES = {
    "small": (10_000, 5_000, 200_000),
    "medium": (200_000, 100_000, 5_000_000),
    "large": (1_000_000, 1_000_000, 20_000_000),
}
TIME = "/usr/bin/time"

LOAD_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    started = time.perf_counter()
    from hybridrec.server.app import load_state
    imported = time.perf_counter()
    state = load_state(sys.argv[1], sys.argv[2])
    loaded = time.perf_counter()
    model = state.model
    probe = [str(model.user_ids[i]) for i in range(0, model.num_users, max(1, model.num_users // 1000))]
    t = time.perf_counter()
    assert all(model.user_index.get(u, -1) >= 0 for u in probe)
    lookup_us = (time.perf_counter() - t) / len(probe) * 1e6
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    print(json.dumps({
        "import_s": round(imported - started, 3),
        "load_s": round(loaded - imported, 3),
        "start_to_ready_s": round(loaded - started, 3),
        "rss_after_load_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "user_lookup_us": round(lookup_us, 2),
    }))
""")

RECALL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import faiss, numpy as np
    from hybridrec.server.bundle import load_model
    from hybridrec.server.indexes import recall_of
    model = load_model(sys.argv[1], verify_checksums=False)
    n_queries, k = int(sys.argv[2]), 100
    rng = np.random.default_rng(0)
    out = {}
    for name, index, vectors, queries in (
        ("cf", model.cf_index, model.item_factors, model.user_factors),
        ("content", model.content_index, model.item_content, model.item_content),
    ):
        rows = rng.choice(queries.shape[0], size=min(n_queries, queries.shape[0]), replace=False)
        q = np.ascontiguousarray(queries[np.sort(rows)], dtype=np.float32)
        q = q[np.any(q != 0, axis=1)]
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        exact = faiss.IndexFlatIP(data.shape[1])
        exact.add(data)
        faiss.omp_set_num_threads(2)
        truth = exact.search(q, k)
        found = index.search(q, k)
        faiss.omp_set_num_threads(1)
        times = []
        for row in q:
            t = time.perf_counter()
            index.search(row[None, :], k)
            times.append(time.perf_counter() - t)
        times = np.array(times) * 1000
        stored = model.manifest.get("indexes", {}).get(name, {})
        out[name] = {
            "index": stored.get("factory", type(index).__name__),
            "search_params": stored.get("search_params", {}),
            "build_s": stored.get("build_seconds"),
            "queries": int(q.shape[0]),
            "recall@100": round(recall_of(truth, found, ties=True), 4),
            "recall@100_ids": round(recall_of(truth, found, ties=False), 4),
            "latency_ms_p50": round(float(np.percentile(times, 50)), 3),
            "latency_ms_p95": round(float(np.percentile(times, 95)), 3),
            "latency_ms_p99": round(float(np.percentile(times, 99)), 3),
            "latency_ms_max": round(float(times.max()), 3),
            "latency_ms_mean": round(float(times.mean()), 3),
        }
    table = model.content_neighbours
    if table is not None:  # the stored neighbour lists against exact search, the item itself left out
        rows = np.sort(rng.choice(table.shape[0], size=min(n_queries, table.shape[0]), replace=False))
        data = np.ascontiguousarray(model.item_content, dtype=np.float32)
        rows = rows[np.any(data[rows] != 0, axis=1)]
        width = table.shape[1]
        exact = faiss.IndexFlatIP(data.shape[1])
        exact.add(data)
        faiss.omp_set_num_threads(2)
        t_scores, t_labels = exact.search(data[rows], width + 1)
        own = t_labels == rows[:, None]
        own[~own.any(axis=1), -1] = True
        truth = (t_scores[~own].reshape(len(rows), width), t_labels[~own].reshape(len(rows), width))
        labels = table[rows].astype(np.int64)
        scores = np.einsum("qkd,qd->qk", data[np.maximum(labels, 0)], data[rows])
        found = (np.where(labels >= 0, scores, -np.inf), labels)
        out["content_neighbours"] = {"per_item": int(width), "items": int(len(rows)),
                                     f"recall@{width}": round(recall_of(truth, found, ties=True), 4),
                                     f"recall@{width}_ids": round(recall_of(truth, found, ties=False), 4)}
    print(json.dumps(out))
""")


HNSW_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import faiss, numpy as np
    from hybridrec.server.bundle import load_model
    from hybridrec.server.indexes import build_index, recall_of
    model = load_model(sys.argv[1], verify_checksums=False)
    n_queries, k = int(sys.argv[2]), 100
    m, ef_construction, which = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5].split(",")
    rng = np.random.default_rng(0)
    out = {}
    for name, vectors, queries in (("cf", model.item_factors, model.user_factors),
                                   ("content", model.item_content, model.item_content)):
        if name not in which:
            continue
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        rows = rng.choice(queries.shape[0], size=min(n_queries, queries.shape[0]), replace=False)
        q = np.ascontiguousarray(queries[np.sort(rows)], dtype=np.float32)
        q = q[np.any(q != 0, axis=1)]
        exact = faiss.IndexFlatIP(data.shape[1])
        exact.add(data)
        truth = exact.search(q, k)
        index, info = build_index(data, f"HNSW{m}", name, {"efConstruction": ef_construction, "efSearch": 16})
        ladder = []
        for ef in (64, 128, 256, 512):
            faiss.omp_set_num_threads(2)
            hnsw = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
            hnsw.hnsw.efSearch = ef
            found = index.search(q, k)
            faiss.omp_set_num_threads(1)
            times = []
            for row in q[:300]:
                t = time.perf_counter()
                index.search(row[None, :], k)
                times.append(time.perf_counter() - t)
            ladder.append({"efSearch": ef, "recall@100": round(recall_of(truth, found), 4),
                           "latency_ms_p50": round(float(np.percentile(np.array(times) * 1000, 50)), 3)})
        out[name] = {"index": f"HNSW{m}", "efConstruction": ef_construction, "build_s": info["build_seconds"],
                     "mips_transform": info["mips_transform"], "ladder": ladder}
    print(json.dumps(out))
""")


def run_timed(cmd: list[str], log_path: Path) -> dict:
    """Run `cmd`, its output to `log_path`; wall seconds and peak RSS (MB) of the child.

    Also its CPU seconds and the load average around it: on a shared machine, wall time over
    CPU time shows how much of the run was spent waiting for a core.
    """
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    cpu = None
    if Path(TIME).exists():
        stats = log_path.with_suffix(".time")
        with log_path.open("w") as log:
            code = subprocess.call([TIME, "-f", "%e %M %U %S", "-o", str(stats), *cmd], stdout=log,
                                   stderr=subprocess.STDOUT)
        wall = time.perf_counter() - started
        fields = stats.read_text().split()[-4:]
        peak = int(fields[1]) / 1024
        cpu = round(float(fields[2]) + float(fields[3]), 1)
    else:  # getrusage: the largest child so far, so run each size in its own invocation
        import resource

        with log_path.open("w") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if code != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {code}:\n" + "\n".join(tail))
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak, 1), "cpu_s": cpu,
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def step_times(log_text: str) -> dict[str, float]:
    steps = {}
    for match in re.finditer(r"\[train (\d+)/\d+\] (.+?) done in ([\d.]+) s", log_text):
        steps[f"{match.group(1)} {match.group(2)[:60]}"] = float(match.group(3))
    for match in re.finditer(r"\[precompute\] (\S+) k=(\d+): \d+ rows in ([\d.]+) s", log_text):  # server.precomputed
        steps[f"precomputed {match.group(1)} k={match.group(2)}"] = float(match.group(3))
    return steps


def python_json(script: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"measurement failed:\n{result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_size(size: str, root: Path, config: Path, seed: int, queries: int, retrain: bool,
               hnsw: tuple[int, int] | None = None, hnsw_indexes: tuple[str, ...] = ("cf", "content")) -> dict:
    users, items, events = SIZES[size]
    base = root / size
    data, model = base / "data", base / "model"
    result: dict = {"size": size, "users": users, "items": items, "events": events, "config": str(config)}
    base.mkdir(parents=True, exist_ok=True)
    if not ((data / "events.csv").is_file() and (data / "items.csv").is_file()):
        print(f"[{size}] generating data in {data}", flush=True)
        gen = run_timed([str(BIN / "hybridrec"), "scale-data", "--out", str(data), "--users", str(users),
                         "--items", str(items), "--events", str(events), "--seed", str(seed)], base / "scale-data.log")
        result["generate"] = gen
    result["data_mb"] = round(sum(p.stat().st_size for p in data.glob("*.csv")) / 2**20, 1)
    if retrain or not (model / "manifest.json").is_file():
        print(f"[{size}] training into {model}", flush=True)
        train = run_timed([str(BIN / "hybridrec"), "train", "--events", str(data / "events.csv"), "--items",
                           str(data / "items.csv"), "--config", str(config), "--out", str(model)], base / "train.log")
        train["steps_s"] = step_times((base / "train.log").read_text())
        result["train"] = train
    else:
        print(f"[{size}] reusing the bundle in {model} (--retrain to train again)", flush=True)
    manifest = json.loads((model / "manifest.json").read_text())
    result["counts"] = manifest["counts"]
    result["item_item"] = manifest.get("item_item")
    result["bundle_mb"] = round(sum(p.stat().st_size for p in model.iterdir()) / 2**20, 1)
    print(f"[{size}] loading the bundle in a fresh process", flush=True)
    result["load"] = python_json(LOAD_SCRIPT, str(model), str(config))
    print(f"[{size}] ANN recall@100 and latency over {queries} queries", flush=True)
    result["ann"] = python_json(RECALL_SCRIPT, str(model), str(queries))
    if hnsw:
        m, efc = hnsw
        print(f"[{size}] HNSW{m} (efConstruction {efc}) over the bundle's vectors, for comparison", flush=True)
        result["hnsw_comparison"] = python_json(HNSW_SCRIPT, str(model), str(queries), str(m), str(efc),
                                                ",".join(hnsw_indexes))
    return result


def table(results: dict) -> str:
    header = ["size", "users", "items", "events", "train s", "train peak GB", "bundle MB", "load s",
              "RSS after load MB", "cf index", "cf recall@100", "cf ms/query", "content index",
              "content recall@100", "content ms/query"]
    rows = []
    for size in SIZES:
        r = results.get(size)
        if not r:
            continue
        train = r.get("train", {})
        cf, content = r["ann"]["cf"], r["ann"]["content"]

        def name(x: dict) -> str:
            params = ",".join(f"{k}={v}" for k, v in x["search_params"].items())
            return x["index"] + (f" ({params})" if params else "")

        rows.append([size, f"{r['counts']['users']:,}", f"{r['counts']['items']:,}", f"{r['counts']['events']:,}",
                     str(train.get("wall_s", "-")), f"{train['peak_rss_mb'] / 1024:.2f}" if train else "-",
                     str(r["bundle_mb"]), str(r["load"]["start_to_ready_s"]), str(r["load"]["rss_after_load_mb"]),
                     name(cf), str(cf["recall@100"]), str(cf["latency_ms_p50"]), name(content),
                     str(content["recall@100"]), str(content["latency_ms_p50"])])
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def hnsw_params(text: str) -> tuple[int, int]:
    """argparse type for --hnsw: "M,EFC", M >= 2 (FAISS's level multiplier is 1 / ln M) and efConstruction >= 1."""
    try:
        m, efc = (int(part) for part in text.split(","))
    except ValueError:  # not an integer, or not two of them
        raise argparse.ArgumentTypeError(f"must be two integers M,EFC (e.g. 32,40), got {text!r}") from None
    if m < 2 or efc < 1:
        raise argparse.ArgumentTypeError(f"M must be >= 2 and EFC >= 1, got {text!r}")
    return m, efc


def main() -> int:
    from hybridrec.server.cli import positive_int

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,medium", help="comma-separated: small, medium, large")
    parser.add_argument("--root", type=Path, default=REPO / ".hybridrec" / "bench")
    parser.add_argument("--config", type=Path, default=REPO / "server" / "configs" / "large.yaml")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--queries", type=positive_int, default=1000)
    parser.add_argument("--no-retrain", action="store_true", help="reuse an existing bundle instead of training")
    parser.add_argument("--hnsw", type=hnsw_params, default=None, metavar="M,EFC",
                        help="also build HNSW<M> with this efConstruction over each bundle's vectors "
                             "and measure its build time, recall and latency per efSearch (e.g. 32,40)")
    parser.add_argument("--hnsw-indexes", default="cf,content", help="which bundle vectors --hnsw indexes")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_scale.json")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size {unknown[0]!r}; choose from {', '.join(SIZES)}")
    if not shutil.which(str(BIN / "hybridrec")):
        parser.error(f"{BIN / 'hybridrec'} not found: run from the project's venv")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results = results.get("sizes", results) if isinstance(results, dict) else {}
    for size in sizes:
        previous = results.get(size, {})
        results[size] = bench_size(size, args.root, args.config, args.seed, args.queries, not args.no_retrain, args.hnsw,
                                   tuple(args.hnsw_indexes.split(",")))
        if args.no_retrain and "train" in previous and "train" not in results[size]:
            results[size]["train"] = previous["train"]  # the bundle is the one that run trained
        results[size]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "sizes": results}, indent=2) + "\n")
        print(table({size: results[size]}), flush=True)
    print()
    print(table(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
