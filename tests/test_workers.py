"""`hybridrec serve --workers 2` as a real subprocess: one port, two serving processes, SIGTERM."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from hybridrec.clients import RecommenderClient
from hybridrec.server.bundle import load_model
from hybridrec.v1 import recommender_pb2 as pb
from hybridrec.v1 import recommender_pb2_grpc as pb_grpc

from .conftest import DEFAULT_CONFIG

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers: Linux")

SERVING = re.compile(r"serving on 127\.0\.0\.1:(\d+) with 2 worker processes \(pids (\d+), (\d+)\)")


class Server:
    """`hybridrec serve` in a subprocess; its stderr is collected by a thread."""

    def __init__(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "hybridrec.server.cli", "serve", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: re.Pattern, limit: float = 60.0) -> re.Match:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            match = pattern.search(self.stderr)
            if match:
                return match
            if self.proc.poll() is not None:
                self.reader.join(5)
                pytest.fail(f"server exited with {self.proc.returncode}: {self.stderr[-3000:]}")
            time.sleep(0.05)
        pytest.fail(f"no {pattern.pattern!r} in time: {self.stderr[-3000:]}")

    def kill(self, pids: set[str] = frozenset()) -> None:
        """Clean-up after a failure: the supervisor and any worker left behind."""
        for pid in pids:
            if alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def call(port: int, request: pb.RecommendRequest) -> tuple[pb.RecommendResponse, dict[str, str]]:
    # a channel of its own (a local subchannel pool): a new connection, which the kernel gives
    # to one of the listening workers
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        response, rpc = pb_grpc.RecommenderStub(channel).Recommend.with_call(request, timeout=10)
    return response, dict(rpc.trailing_metadata())


@pytest.mark.parametrize("io", ["threads", "asyncio"])
def test_two_workers_share_the_port_and_stop_on_sigterm(demo_model: Path, io: str) -> None:
    model = load_model(demo_model)
    server = Server("--model", str(demo_model), "--config", str(DEFAULT_CONFIG), "--host", "127.0.0.1",
                    "--port", "0", "--workers", "2", "--threads", "2", "--io", io)
    pids: set[str] = set()
    try:
        match = server.wait_for(SERVING)
        port = int(match.group(1))
        pids.update((match.group(2), match.group(3)))
        for pid in pids:  # children of the supervisor
            assert f"PPid:\t{server.proc.pid}\n" in Path(f"/proc/{pid}/status").read_text()

        # a port another server holds is refused (SO_REUSEPORT would silently share it)
        clash = subprocess.run([sys.executable, "-m", "hybridrec.server.cli", "serve", "--model", str(demo_model),
                                "--port", str(port), "--workers", "2"], capture_output=True, text=True, timeout=60)
        assert clash.returncode == 1 and "cannot listen on 127.0.0.1:" in clash.stderr

        served: Counter[str] = Counter()
        answers: dict[str, set[tuple[str, ...]]] = {}
        users = [str(u) for u in model.user_ids[:10]] + ["never-seen", ""]
        for i in range(60):
            user = users[i % len(users)]
            response, metadata = call(port, pb.RecommendRequest(user_id=user, k=5))
            assert len(response.items) == 5 and response.model_version == model.version
            assert response.cold_start == (user not in model.user_index)
            assert int(metadata["hybridrec-server-time-us"]) > 0
            served[metadata["hybridrec-worker-pid"]] += 1
            answers.setdefault(user, set()).add(tuple(item.item_id for item in response.items))
            if set(served) == pids and i >= 3 * len(users):
                break
        assert set(served) == pids, served  # both workers answered
        assert all(len(a) == 1 for a in answers.values())  # and the same way

        # bad input: a status naming the field, with the same trailing metadata
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as failed:
                pb_grpc.RecommenderStub(channel).Recommend(pb.RecommendRequest(user_id=users[0], k=0), timeout=10)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT and failed.value.details().startswith("k must be")
        assert dict(failed.value.trailing_metadata())["hybridrec-worker-pid"] in pids

        # the Python client with several connections reaches both workers too (4 connections all
        # land on one worker 1 time in 8, hence a few clients)
        reached: set[str] = set()
        for _ in range(10):
            with RecommenderClient(f"127.0.0.1:{port}", timeout=10, connections=4) as client:
                results = [client.recommend(users[0], k=5) for _ in range(8)]
            reached |= {str(r.worker_pid) for r in results}
            assert {tuple(r.item_ids) for r in results} == answers[users[0]]
            if reached == pids:
                break
        assert reached == pids

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0, server.stderr[-3000:]
        server.reader.join(5)
        assert not any(alive(int(pid)) for pid in pids)
        assert server.stderr.count("draining and stopping") == 2
        assert "received signal 15" in server.stderr
    finally:
        server.kill(pids)


def test_workers_failing_to_start_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "hybridrec.server.cli", "serve", "--model", str(tmp_path / "none"),
                             "--port", "0", "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hybridrec serve: error: worker ") and "does not exist" in last, result.stderr


def test_single_asyncio_process_serves_and_drains(demo_model: Path) -> None:
    model = load_model(demo_model)
    server = Server("--model", str(demo_model), "--config", str(DEFAULT_CONFIG), "--host", "127.0.0.1",
                    "--port", "0", "--io", "asyncio")
    try:
        port = int(server.wait_for(re.compile(r"serving model .* on 127\.0\.0\.1:(\d+)")).group(1))
        user = str(model.user_ids[0])
        response, metadata = call(port, pb.RecommendRequest(user_id=user, k=4, explain=True))
        assert len(response.items) == 4 and all(item.explanation.reason for item in response.items)
        assert metadata["hybridrec-worker-pid"] == str(server.proc.pid)
        with RecommenderClient(f"127.0.0.1:{port}", timeout=10) as client:
            assert len(client.similar_items(response.items[0].item_id, k=3)) == 3
            assert client.model_info().model_version == model.version
            assert client.health() == "SERVING"
            with pytest.raises(grpc.RpcError) as failed:
                client.recommend(user, k=3, pipeline="nope")
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert failed.value.details().startswith("pipeline: unknown pipeline 'nope'")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0, server.stderr[-3000:]
        server.reader.join(5)
        assert "draining and stopping" in server.stderr and "stopped" in server.stderr
    finally:
        server.kill()
