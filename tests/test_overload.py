"""`server.overload`: while an asyncio worker's event loop has no idle time, calls for a pipeline
with a fallback run the fallback, and say so in the answer."""
from __future__ import annotations

import asyncio
import re
import selectors
import socket
import threading
import time
from pathlib import Path

import pytest

from hybridrec.clients import RecommenderClient
from hybridrec.server.aio import run_async, serve_async
from hybridrec.server.app import SERVICE_NAME, load_state
from hybridrec.server.errors import ConfigError
from hybridrec.server.overload import OVERLOAD_STAGE, IdleSelector, OverloadGuard, OverloadSection
from hybridrec.server.pipeline import load_serving_config
from hybridrec.server.plugin_manager import Plugins
from hybridrec.server.service import RecommenderService
from hybridrec.v1 import recommender_pb2 as pb

from .conftest import DEFAULT_CONFIG

PIPELINES = """
pipelines:
  full:
    candidates: [{plugin: faiss_cf, name: cf}, popularity]
    filters: [exclude_seen]
    scorer: {plugin: weighted_hybrid, params: {weights: {cf: 1.0}}}
  mid:
    candidates: [{plugin: faiss_content, name: content}, popularity]
    filters: [exclude_seen]
    scorer: {plugin: weighted_hybrid, params: {weights: {content: 1.0}}}
  cheap:
    candidates: [popularity]
    filters: [exclude_seen]
    scorer: {plugin: weighted_hybrid, params: {weights: {popularity: 1.0}}}
"""


def write_config(tmp_path: Path, overload: str) -> Path:
    path = tmp_path / "overload.yaml"
    path.write_text(f"server:\n  default_pipeline: full\n  overload: {overload}\n{PIPELINES}")
    return path


def test_overload_config_is_checked(tmp_path: Path) -> None:
    plugins = Plugins()
    config = load_serving_config(write_config(tmp_path, "{fallbacks: {full: cheap}}"), plugins)
    assert config.overload.fallbacks == {"full": "cheap"}
    assert load_serving_config(DEFAULT_CONFIG, plugins).overload.fallbacks == {}  # off unless configured
    cases = {
        "{fallbacks: {ful: cheap}}": r"server\.overload\.fallbacks: 'ful' is not a pipeline; valid: full, mid, cheap",
        "{fallbacks: {full: chep}}": r"server\.overload\.fallbacks\.full: 'chep' is not a pipeline; valid: full, mid, cheap",
        "{fallbacks: {full: full}}": r"server\.overload\.fallbacks\.full: a pipeline cannot be its own fallback",
        "{fallbacks: {full: cheap}, enter_idle: 0.3, leave_idle: 0.2}": r"needs 0 <= enter_idle < leave_idle <= 1",
        "{fallbacks: {full: cheap}, sample_ms: 0}": r"server\.overload\.sample_ms: must be > 0",
        "{fallbacks: {full: cheap}, smoothing: 1.5}": r"server\.overload\.smoothing: must be in \(0, 1\]",
        "{fallback: {full: cheap}}": r"server\.overload: unknown key 'fallback'; valid keys: enter_idle, escalate_ms",
        "{fallbacks: {full: cheap, cheap: full}}": r"server\.overload\.fallbacks\.full: the fallbacks go round in a "
                                                   r"circle: full -> cheap -> full",
        "{fallbacks: {full: cheap}, escalate_ms: -1}": r"server\.overload\.escalate_ms: must be > 0",
    }
    for text, expected in cases.items():
        path = write_config(tmp_path, text)
        with pytest.raises(ConfigError, match=expected) as exc:
            load_serving_config(path, plugins)
        assert str(exc.value).startswith(str(path))


def test_idle_selector_counts_the_time_select_waits() -> None:
    left, right = socket.socketpair()
    selector = IdleSelector()
    try:
        selector.register(left, selectors.EVENT_READ)
        assert selector.select(0.05) == []  # nothing to read: it waited
        waited = selector.idle_seconds
        assert 0.04 <= waited < 1.0
        right.send(b"x")
        assert len(selector.select(1.0)) == 1  # ready at once: almost no wait
        assert selector.idle_seconds - waited < 0.04
    finally:
        selector.close()
        left.close()
        right.close()


def test_guard_switches_on_when_busy_and_off_with_hysteresis() -> None:
    section = OverloadSection(fallbacks={"full": "cheap"}, enter_idle=0.05, leave_idle=0.15, sample_ms=20,
                              smoothing=0.3)
    guard = OverloadGuard(section, IdleSelector())
    assert not guard.active and guard.idle_share == 1.0 and guard.depth == 1
    for _ in range(5):  # a loop idle 10% of the time: busy, but not saturated
        assert not guard.update(0.10, 0.02, 0.0)
    for _ in range(40):  # saturated: the average falls below 5% and the guard switches on, once
        guard.update(0.0, 0.02, 0.0)
    assert guard.level == 1 and guard.episodes == 1 and guard.idle_share < 0.05  # a one-step ladder
    for _ in range(40):  # 10% idle again: above enter_idle but not above leave_idle, so it stays on
        guard.update(0.10, 0.02, 0.0)
    assert guard.active and 0.05 < guard.idle_share < 0.15
    for _ in range(40):
        guard.update(0.5, 0.02, 0.0)
    assert not guard.active and guard.idle_share > 0.15
    # one late reading that covers a whole busy second counts for all of it
    guard.update(0.0, 1.0, 0.0)
    assert guard.active and guard.episodes == 2 and guard.idle_share < 1e-6


def test_guard_walks_down_the_ladder_while_saturated_and_back_up() -> None:
    section = OverloadSection(fallbacks={"full": "mid", "mid": "cheap"}, sample_ms=20, smoothing=0.3,
                              escalate_ms=100)
    guard = OverloadGuard(section, IdleSelector())
    assert guard.depth == 2
    assert guard.update(0.0, 0.2, 0.0) == 1  # saturated: first step
    for _ in range(4):  # 80 ms more without idle time coming back: not yet
        assert guard.update(0.1, 0.02, 0.0) == 1
    assert guard.update(0.1, 0.02, 0.0) == 2  # 100 ms on the first step without recovering: the next one
    for _ in range(20):  # the bottom of the ladder: no further
        assert guard.update(0.0, 0.02, 0.0) == 2
    levels = [guard.update(0.6, 0.02, 0.0) for _ in range(5)]  # idle again: one step up per reading above 15%
    assert levels == [1, 0, 0, 0, 0] and guard.episodes == 1
    # a step that restores idle time (above leave_idle) is left before it escalates
    guard.update(0.0, 0.2, 0.0)
    assert guard.level == 1 and guard.episodes == 2
    assert [guard.update(0.9, 0.02, 0.0) for _ in range(10)][-1] == 0
    assert section.resolve("full", 1) == "mid" and section.resolve("full", 2) == "cheap"
    assert section.resolve("mid", 2) == "cheap" and section.resolve("cheap", 2) is None
    assert section.resolve("full", 0) is None


def test_the_servicer_serves_the_step_of_the_ladder_it_is_on(demo_model: Path, tmp_path: Path) -> None:
    state = load_state(demo_model, write_config(tmp_path, "{fallbacks: {full: mid, mid: cheap}}"))
    service = RecommenderService(state)
    service.guard = guard = OverloadGuard(state.config.overload, IdleSelector())
    user = str(state.model.user_ids[0])
    for level, asked, expected in [(0, "", "full"), (1, "", "mid"), (2, "", "cheap"), (3, "", "cheap"),
                                   (1, "mid", "cheap"), (2, "cheap", "cheap")]:
        guard.level = level
        result, _, served = service.recommend(pb.RecommendRequest(user_id=user, k=3, pipeline=asked))
        assert served == expected and len(result.ranked) == 3
        assert (result.degraded[:1] == [OVERLOAD_STAGE]) == ((asked or "full") != expected)
    assert guard.fallback_calls == {"mid": 1, "cheap": 3}
    assert guard.summary() == "overload: 0 episodes; calls served by fallbacks: cheap 3, mid 1"


def test_a_saturated_event_loop_serves_the_fallback_over_grpc(demo_model: Path, tmp_path: Path) -> None:
    # a slow average (smoothing 0.1 per 50 ms) and a high leave_idle keep fallbacks on for about
    # a second after the loop was blocked, so the calls below meet them whatever the timing. A calm
    # loop is not idle all the time (gRPC's own work on it measured 0.965-0.976 on a slow 2-core VM,
    # where leave_idle 0.98 then never came), so leave_idle stays well below 1
    config = write_config(tmp_path, "{fallbacks: {full: cheap}, enter_idle: 0.5, leave_idle: 0.9, smoothing: 0.1, "
                                    "sample_ms: 50}")
    state = load_state(demo_model, config)
    stop = threading.Event()
    ready: dict[str, object] = {}
    started = threading.Event()

    def on_ready(port: int, service: object) -> None:
        ready.update(port=port, service=service, loop=asyncio.get_running_loop())
        started.set()

    thread = threading.Thread(target=run_async, args=(serve_async(state, "127.0.0.1:0", SERVICE_NAME, stop, 1.0,
                                                                  on_ready=on_ready),), daemon=True)
    thread.start()
    assert started.wait(30), "server did not start"
    service, loop = ready["service"], ready["loop"]
    user = str(state.model.user_ids[0])
    try:
        with RecommenderClient(f"127.0.0.1:{ready['port']}", timeout=10) as client:
            calm = client.recommend(user, k=5)
            assert calm.pipeline == "full" and OVERLOAD_STAGE not in calm.degraded_stages
            assert not service.guard.active
            loop.call_soon_threadsafe(time.sleep, 0.4)  # blocked 0.4 s (as by a handler waiting on I/O): busy, not idle
            time.sleep(0.5)
            busy = client.recommend(user, k=5)
            assert service.guard.episodes == 1
            assert busy.pipeline == "cheap" and busy.degraded_stages[0] == OVERLOAD_STAGE
            asked = client.recommend(user, k=5, pipeline="cheap")  # no fallback of its own: served as asked
            assert asked.pipeline == "cheap" and OVERLOAD_STAGE not in asked.degraded_stages
            assert busy.item_ids == asked.item_ids and len(busy.items) == 5
            deadline = time.monotonic() + 20
            while service.guard.active and time.monotonic() < deadline:
                time.sleep(0.05)
            again = client.recommend(user, k=5)
            assert again.pipeline == "full" and again.item_ids == calm.item_ids
            assert service.guard.fallback_calls == {"cheap": 1}
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_threads_server_warns_that_overload_needs_asyncio(demo_model: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from hybridrec.server.app import create_server

    state = load_state(demo_model, write_config(tmp_path, "{fallbacks: {full: cheap}}"))
    running = create_server(state, "127.0.0.1:0", max_workers=2)
    try:
        assert any(re.search(r"server\.overload works with --io asyncio", r.getMessage()) for r in caplog.records)
    finally:
        running.stop(grace=None)
