"""The native load generator of benchmarks/serve_load.py (benchmarks/loadgen.c), against the real
server: what it reports for each call is what the server answered."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hybridrec.v1 import recommender_pb2 as pb

from .conftest import DEFAULT_CONFIG

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def serve_load():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import serve_load
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return serve_load


@pytest.fixture(scope="module")
def loadgen(serve_load, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler (cc) to build benchmarks/loadgen.c")
    return serve_load.build_loadgen(tmp_path_factory.mktemp("bin"))


def write_requests(path: Path, requests: list[pb.RecommendRequest]) -> None:
    with path.open("wb") as f:
        for request in requests:
            body = request.SerializeToString()
            f.write(len(body).to_bytes(4, "little") + body)


def run_loadgen(binary: Path, port: int, requests: Path, out: Path, *args: str) -> tuple[dict, np.ndarray]:
    done = subprocess.run([str(binary), "--port", str(port), "--requests", str(requests), "--out", str(out),
                           "--connections", "3", "--warmup", "0.2", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), np.fromfile(out, dtype=sys.modules["serve_load"].LOADGEN_RECORD)


def test_open_loop_reads_status_items_and_server_metadata(loadgen: Path, running_server, demo_model: Path,
                                                          tmp_path: Path, serve_load) -> None:
    users = np.load(demo_model / "user_ids.npy")
    requests = [pb.RecommendRequest(user_id=str(users[i]), k=5) for i in range(3)]
    requests.append(pb.RecommendRequest(user_id=str(users[3]), k=5, pipeline="no-such-pipeline"))
    requests.append(pb.RecommendRequest(user_id=str(users[4]), k=3))
    write_requests(tmp_path / "requests.bin", requests)
    summary, calls = run_loadgen(loadgen, running_server.port, tmp_path / "requests.bin", tmp_path / "calls.bin",
                                 "--mode", "open", "--level", "100", "--duration", "1")
    # 100/s for 1 s measured, after 0.2 s of warm-up: calls 20..119 of the schedule
    assert calls.shape[0] == 100 and summary["counted"] == 100 and summary["sent"] == 120
    kind = (np.arange(20, 120) % len(requests))  # the generator takes the requests in turn
    bad, short = kind == 3, kind == 4
    assert (calls["status"][bad] == 3).all()  # INVALID_ARGUMENT, read from the trailers
    assert (calls["status"][~bad] == 0).all()
    assert (calls["items"][~bad & ~short] == 5).all() and (calls["items"][short] == 3).all()
    assert (calls["items"][bad] == 0).all()
    assert (calls["pid"] == os.getpid()).all()  # the in-process server's pid, from its trailing metadata
    assert (calls["server_us"][~bad] > 0).all()
    assert (calls["degraded"] == 0).all()
    assert (calls["ms"] > 0).all() and (calls["ms"] < 5000).all()
    # send times: the schedule, 10 ms apart, from the start of the measured second
    assert np.allclose(calls["at_s"], np.arange(100) * 0.01, atol=1e-3)


def test_closed_loop_keeps_calls_in_flight_and_counts_results(loadgen: Path, running_server, demo_model: Path,
                                                              tmp_path: Path, serve_load) -> None:
    users = np.load(demo_model / "user_ids.npy")
    write_requests(tmp_path / "requests.bin", [pb.RecommendRequest(user_id=str(u), k=4) for u in users[:20]])
    summary, calls = run_loadgen(loadgen, running_server.port, tmp_path / "requests.bin", tmp_path / "calls.bin",
                                 "--mode", "closed", "--level", "4", "--duration", "0.5")
    assert calls.shape[0] == summary["counted"] > 10
    assert summary["sent"] > summary["counted"]  # the warm-up's calls are not counted
    assert (calls["status"] == 0).all() and (calls["items"] == 4).all()
    assert summary["window_seconds"] >= 0.5 and summary["cpu_seconds"] >= 0.0


def test_degraded_answers_are_counted(loadgen: Path, running_server, demo_model: Path, tmp_path: Path,
                                       serve_load, monkeypatch: pytest.MonkeyPatch) -> None:
    users = np.load(demo_model / "user_ids.npy")
    write_requests(tmp_path / "requests.bin", [pb.RecommendRequest(user_id=str(u), k=4) for u in users[:10]])
    pipeline = running_server.service.state.config.pipelines["hybrid"]
    for source in ("content", "popularity"):  # two failing sources: two degraded stages per answer
        stage = next(s for s in pipeline.sources if s.name == source)

        def explode(ctx):
            raise RuntimeError("boom")

        monkeypatch.setattr(stage, "generate", explode)
    _, calls = run_loadgen(loadgen, running_server.port, tmp_path / "requests.bin", tmp_path / "calls.bin",
                           "--mode", "closed", "--level", "2", "--duration", "0.3")
    assert calls.shape[0] > 0 and (calls["status"] == 0).all() and (calls["items"] == 4).all()
    assert (calls["degraded"] == 2).all()
    result = serve_load.by_second(calls)
    assert result["degraded_share"] == [1.0]


def test_a_server_that_is_not_there_is_a_clear_failure(loadgen: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_requests(tmp_path / "requests.bin", [pb.RecommendRequest(user_id="u", k=1)])
    done = subprocess.run([str(loadgen), "--port", str(port), "--requests", str(tmp_path / "requests.bin"), "--out",
                           str(tmp_path / "calls.bin"), "--mode", "open", "--level", "10"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("loadgen: connect:") and len(done.stderr.strip().splitlines()) == 1


def test_fallback_calls_are_summed_from_the_workers_last_log_lines(serve_load) -> None:
    from hybridrec.server.overload import IdleSelector, OverloadGuard, OverloadSection

    guards = [OverloadGuard(OverloadSection(fallbacks={"hybrid": "cf_prior", "cf_prior": "popularity"}), IdleSelector())
              for _ in range(3)]
    guards[0].fallback_calls.update({"cf_prior": 10, "popularity": 2})
    guards[1].fallback_calls.update({"cf_prior": 5})  # the third served none
    lines = [f"2026-11-28 02:00:00,000 INFO hybridrec: {g.summary()}\n" for g in guards] + ["stopped\n"]
    assert serve_load.fallback_calls(lines) == {"cf_prior": 15, "popularity": 2}
    assert serve_load.fallback_calls(["stopped\n"]) == {}


def test_noop_server_serves_the_proto_from_its_workers_and_stops_them(serve_load) -> None:
    from hybridrec.clients.client import RecommenderClient

    server = serve_load.ServerProcess(Path("."), Path("."), 2, 1, [], noop=True)
    try:
        server.wait_serving(60)
        workers = [p for p in server.all_pids() if p != server.proc.pid]
        assert len(workers) == 2 and server.port > 0
        with RecommenderClient(f"127.0.0.1:{server.port}", connections=4) as client:
            answers = [client.recommend(user_id=f"u{i}", k=k) for i, k in enumerate((3, 7, 1, 12))]
        assert [len(a.items) for a in answers] == [3, 7, 1, 12]
        assert all(a.pipeline == "noop" and a.worker_pid in workers for a in answers)
    finally:
        code = server.stop()
    assert code == 0
    for pid in workers:  # the supervisor stopped and reaped its workers
        assert not Path(f"/proc/{pid}").exists()


def test_pipeline_cost_pairs_this_checkout_with_a_revision(demo_model: Path, tmp_path: Path) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: --against needs a worktree of a revision")
    out = tmp_path / "cost.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/pipeline_cost.py"), "--model", str(demo_model),
                           "--config", str(DEFAULT_CONFIG), "--requests", "40", "--passes", "3", "--against", "HEAD",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    # HEAD's code answers the 40 requests as this checkout does (the tests run on a clean clone)
    assert report["same_answers"] is True
    assert set(report["passes"]) == {"this checkout", "HEAD"}
    for runs in report["passes"].values():
        assert len(runs) == 3 and all(r["hot_us"] > 0 and r["flushed_us"] > 0 for r in runs)
    assert report["summary"]["hot_us"]["ratio_median"] > 0
    assert "per pass: median" in done.stdout
    # the worktree is removed afterwards
    listed = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    assert "pipeline_cost-" not in listed


def test_pipeline_cost_refuses_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/pipeline_cost.py"), "--model", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [f"pipeline_cost: {tmp_path} is not a bundle (no manifest.json); "
                                                "build one with `make bench-scale` or `hybridrec train`"]


def test_a_level_with_no_answer_has_no_cpu_per_request_and_is_named(serve_load) -> None:
    window = {"seconds": 2.0, "server": 1.0, "machine": 2.0, "machine_total": 4.0, "steal": 0.0}
    answered = serve_load.level_result("closed", 4, 2.0, np.full(100, 3.0, np.float32), np.full(100, 900, np.int64),
                                       Counter({"123": 100}), Counter(), 0.1, window, 0)
    assert answered["server_cpu_ms_per_request"] == 10.0  # 0.5 cores over 50 requests/s
    failed = serve_load.level_result("open", 500.0, 2.0, np.zeros(0, np.float32), np.zeros(0, np.int64), Counter(),
                                     Counter({"DEADLINE_EXCEEDED": 990, "no_answer_by_deadline": 10}), 0.1, window, 0)
    assert failed["requests"] == 0 and math.isnan(failed["server_cpu_ms_per_request"])  # not CPU / ~0 requests
    assert "nan" in serve_load.fmt_row("demo", 2, failed)
    runs = [{"model": "demo", "workers": 2, "levels": [dict(answered, generator="native"),
                                                       dict(failed, generator="python")]}]
    assert serve_load.unanswered_levels(runs) == [
        "demo workers=2 rate=500/s (python: 990 DEADLINE_EXCEEDED, 10 no_answer_by_deadline)"]


@pytest.mark.parametrize(("script", "args", "argument"), [
    ("serve_load.py", ["--demo", "--concurrency", "1", "--duration", "0"], "--duration"),
    ("serve_load.py", ["--k", "0"], "--k"),
    ("serve_load.py", ["--timeout", "0"], "--timeout"),
    ("serve_load.py", ["--generator", "python", "--clients", "0"], "--clients"),
    ("serve_load.py", ["--channels", "0"], "--channels"),
    ("serve_load.py", ["--rate", "1000", "-5"], "--rate"),
    ("serve_load.py", ["--workers", "-1"], "--workers"),
    ("serve_load.py", ["--warmup", "nan"], "--warmup"),
    ("pipeline_cost.py", ["--passes", "0"], "--passes"),
    ("pipeline_cost.py", ["--cpu", str(max(os.sched_getaffinity(0)) + 1)], "--cpu"),
    ("latency.py", ["--port", "70000"], "--port"),
    ("latency.py", ["--port", "0"], "--port"),
    ("noop_server.py", ["--workers", "0"], "--workers"),
    ("train_scale.py", ["--hnsw", "1,40"], "--hnsw"),
    ("mmr_frontier.py", ["--lambdas", "0.5", "1.5"], "--lambdas"),
    ("mmr_frontier.py", ["--pool", "10"], "--pool"),
    ("mmr_frontier.py", ["--peeks", "-0.1"], "--peeks"),
    ("mmr_frontier.py", ["--history-gammas", "nan"], "--history-gammas"),
])
def test_benchmarks_refuse_out_of_range_arguments(script: str, args: list[str], argument: str) -> None:
    # refused by the parser: before any data, model, server or load generator
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith(f"{script}: error: argument {argument}: ")


def test_mmr_frontier_names_the_pipelines_when_one_is_unknown() -> None:
    # checked against the config before any data is read or model trained
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "mmr_frontier.py"), "--pipeline", "nope",
                           "--data", "/nonexistent"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert "pipeline 'nope' is not in this config" in last and "hybrid_mmr" in last
