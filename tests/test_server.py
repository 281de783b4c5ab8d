"""Integration: the real gRPC server on 127.0.0.1 port 0, called through the generated client."""
from __future__ import annotations

import json
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hybridrec.clients import RecommenderClient
from hybridrec.server.bundle import load_model
from hybridrec.server.stages import CandidateSource
from hybridrec.v1 import recommender_pb2 as pb
from hybridrec.v1 import recommender_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def model(demo_model):
    return load_model(demo_model)


def users_by_activity(model) -> list[str]:
    counts = np.diff(model.history_indptr)
    return [str(model.user_ids[i]) for i in np.argsort(-counts, kind="stable")]


def test_known_user_gets_k_unseen_items(client: RecommenderClient, model) -> None:
    user = users_by_activity(model)[0]
    result = client.recommend(user, k=10)
    seen = {str(model.item_ids[i]) for i in model.history(model.user_index[user])[0]}
    assert len(result.items) == 10
    assert len(set(result.item_ids)) == 10
    assert not set(result.item_ids) & seen
    assert not result.cold_start and result.pipeline == "hybrid"
    assert result.model_version == model.version
    scores = [i.score for i in result.items]
    assert all(np.isfinite(scores))
    assert result.server_time_us is not None and result.server_time_us > 0


def test_unknown_user_takes_the_cold_start_path(client: RecommenderClient, model) -> None:
    result = client.recommend("never-seen-before", k=5, explain=True)
    assert result.cold_start
    assert len(result.items) == 5
    assert set(result.items[0].source_scores) == {"popularity"}
    assert result.items[0].reason == "popular right now"
    popular = [str(model.item_ids[i]) for i in model.popular_order]
    assert set(result.item_ids) <= set(popular[:50])  # MMR picks from the popular pool
    assert client.recommend("never-seen-before", k=5, pipeline="hybrid_no_mmr").item_ids == popular[:5]


def test_context_items_seed_content_for_anonymous_users(client: RecommenderClient, model) -> None:
    anchor = str(model.item_ids[model.popular_order[3]])
    result = client.recommend("", k=5, context_items=[anchor], explain=True)
    assert result.cold_start
    assert anchor not in result.item_ids
    assert any("content" in r.source_scores for r in result.items)
    title = str(model.item_titles[model.item_index[anchor]])
    reasons = [r.reason for r in result.items]
    assert any(title in reason and "looking at" in reason for reason in reasons), reasons
    # the context moves the results away from plain popularity
    plain = client.recommend("", k=5)
    assert result.item_ids != plain.item_ids


def test_exclusions_are_honoured(client: RecommenderClient, model) -> None:
    user = users_by_activity(model)[5]
    first = client.recommend(user, k=5)
    again = client.recommend(user, k=5, exclude=first.item_ids[:3] + ["no-such-item"])
    assert not set(first.item_ids[:3]) & set(again.item_ids)
    assert len(again.items) == 5


def test_excluding_every_item_answers_no_items_and_degrades_nothing(client: RecommenderClient, model) -> None:
    everything = [str(i) for i in model.item_ids]
    user = users_by_activity(model)[0]
    for p in client.model_info().pipelines:
        for kwargs in ({"exclude": everything}, {"context_items": everything}):
            result = client.recommend(user, k=10, pipeline=p.name, explain=True, **kwargs)
            assert result.items == [] and result.degraded_stages == [], (p.name, kwargs.keys())


def test_explain_gives_scores_per_source_and_stage_and_a_reason(client: RecommenderClient, model) -> None:
    user = users_by_activity(model)[0]
    result = client.recommend(user, k=10, explain=True)
    # the default config blends cf 0.6 / content 0.4, with a popularity prior of
    # 0.4 x exp(-n / 32) for a user with n history items
    n = model.history(model.user_index[user])[0].shape[0]
    prior = 0.4 * np.exp(-n / 32)
    assert 0 < prior < 0.4
    for item in result.items:
        assert item.reason
        assert set(item.source_scores) == {"cf", "content", "popularity"}
        assert "weighted_hybrid" in item.stage_scores and "mmr" in item.stage_scores
        assert item.stage_scores["weighted_hybrid"] == pytest.approx(item.score)
        personal = 0.6 * item.source_scores["cf"] + 0.4 * item.source_scores["content"]
        blended = (1 - prior) * personal + prior * item.source_scores["popularity"]
        assert blended == pytest.approx(item.score, abs=1e-5)
    plain = client.recommend(user, k=10)
    assert all(not i.reason and not i.source_scores for i in plain.items)


def test_every_pipeline_can_be_named(client: RecommenderClient, model) -> None:
    user = users_by_activity(model)[2]
    info = client.model_info()
    for p in info.pipelines:
        result = client.recommend(user, k=7, pipeline=p.name)
        assert result.pipeline == p.name and len(result.items) == 7


def test_similar_items(client: RecommenderClient, model) -> None:
    item = str(model.item_ids[0])
    similar = client.similar_items(item, k=5)
    assert len(similar) == 5 and item not in [s.item_id for s in similar]
    scores = [s.score for s in similar]
    assert scores == sorted(scores, reverse=True)
    emb = model.item_content
    exact = emb @ emb[0]
    exact[0] = -np.inf
    assert similar[0].item_id == str(model.item_ids[int(np.argmax(exact))])


def test_similar_items_unknown_item_is_not_found(client: RecommenderClient) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        client.similar_items("no-such-item", k=3)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert "item_id" in exc.value.details() and "no-such-item" in exc.value.details()


@pytest.mark.parametrize("k", [0, -1, 101])
def test_bad_k_is_invalid_argument(client: RecommenderClient, k: int) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        client.recommend("u-00001", k=k)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "k must be between 1 and 100" in exc.value.details()


def test_unknown_pipeline_is_invalid_argument(client: RecommenderClient) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        client.recommend("u-00001", k=3, pipeline="nope")
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pipeline: unknown pipeline 'nope'; available: hybrid" in exc.value.details()


def test_a_long_unknown_name_is_named_in_a_short_message(client: RecommenderClient) -> None:
    """The message echoes the value cut short: a status message is sent back in a trailer, and
    one past 8 to 16 KB reached the client as RESOURCE_EXHAUSTED, naming no field."""
    with pytest.raises(grpc.RpcError) as exc:
        client.recommend("u-00001", k=3, pipeline="p" * 20000)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = exc.value.details()
    assert details.startswith("pipeline: unknown pipeline 'ppp") and "(20000 characters)" in details
    with pytest.raises(grpc.RpcError) as exc:
        client.similar_items("\U0001F600" * 3000, k=3)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert exc.value.details().startswith("item_id: unknown item") and len(exc.value.details()) < 300


def test_too_many_context_ids_is_invalid_argument(client: RecommenderClient) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        client.recommend("", k=3, context_items=[f"x{i}" for i in range(1001)])
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context_item_ids" in exc.value.details()


def test_health_and_model_info(client: RecommenderClient, model) -> None:
    assert client.health() == "SERVING"
    assert client.health("hybridrec.v1.Recommender") == "SERVING"
    info = client.model_info()
    assert info.num_users == model.num_users and info.num_items == model.num_items
    assert info.default_pipeline == "hybrid" and info.max_k == 100
    hybrid = next(p for p in info.pipelines if p.name == "hybrid")
    assert hybrid.is_default
    assert [s.kind for s in hybrid.stages] == ["candidates"] * 3 + ["filter"] * 2 + ["scorer", "reranker"]
    assert json.loads(hybrid.stages[-1].params_json)["lambda_weight"] == 0.7


def test_a_stage_that_cannot_describe_itself_does_not_fail_model_info(running_server, client: RecommenderClient,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    mmr = running_server.service.state.config.pipelines["hybrid"].rerankers[0]
    monkeypatch.setattr(mmr, "describe", lambda: {"lambda": object()})  # not JSON
    hybrid = next(p for p in client.model_info().pipelines if p.name == "hybrid")
    assert json.loads(hybrid.stages[-1].params_json) == {"error": "describe() failed; see the server log"}
    assert json.loads(hybrid.stages[0].params_json)["n"] > 0  # the other stages as before


def test_reflection_lists_the_services(running_server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running_server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"hybridrec.v1.Recommender", "grpc.health.v1.Health"} <= names


def test_a_stage_exception_never_kills_the_server(running_server, client: RecommenderClient, model,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = running_server.service.state.config.pipelines["hybrid"]
    content = next(s for s in pipeline.sources if s.name == "content")

    def explode(ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(content, "generate", explode)
    user = users_by_activity(model)[0]
    result = client.recommend(user, k=5)
    assert result.degraded_stages == ["content"] and len(result.items) == 5
    monkeypatch.setattr(pipeline.filters[0], "excluded", explode)  # filters run on every request
    with pytest.raises(grpc.RpcError) as exc:
        client.recommend(user, k=5)
    assert exc.value.code() == grpc.StatusCode.INTERNAL
    assert "boom" not in exc.value.details()  # internals stay in the server log
    monkeypatch.undo()
    assert len(client.recommend(user, k=5).items) == 5
    assert client.health() == "SERVING"


def test_a_failing_reason_degrades_the_explanations_not_the_answer(running_server, client: RecommenderClient, model,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = running_server.service.state.config.pipelines["hybrid"]
    user = users_by_activity(model)[0]
    before = client.recommend(user, k=5, explain=True)
    explained_by = {s.name for s in pipeline.sources}
    assert any(item.reason for item in before.items)

    def explode(ctx, item, anchor):
        raise RuntimeError("boom")

    for source in pipeline.sources:
        monkeypatch.setattr(source, "reason", explode)
    after = client.recommend(user, k=5, explain=True)
    assert [i.item_id for i in after.items] == [i.item_id for i in before.items]  # the same answer
    assert all(not item.reason and item.source_scores for item in after.items)
    degraded = set(after.degraded_stages)
    assert degraded and degraded <= {f"{name}.reason" for name in explained_by}
    assert not client.recommend(user, k=5).degraded_stages  # without explain, reason() is never asked


def test_concurrent_requests(client: RecommenderClient, model) -> None:
    users = users_by_activity(model)[:40]
    with futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda u: client.recommend(u, k=10), users))
    assert all(len(r.items) == 10 for r in results)


class FlakyRecommender(pb_grpc.RecommenderServicer):
    """Fails with UNAVAILABLE a set number of times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0
        self.lock = threading.Lock()

    def GetModelInfo(self, request, context):
        with self.lock:
            self.calls += 1
            if self.calls <= self.failures:
                context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return pb.ModelInfo(model_version="v-flaky")


@pytest.mark.parametrize("failures,retries,ok", [(2, 3, True), (3, 1, False)])
def test_client_retries_unavailable(failures: int, retries: int, ok: bool) -> None:
    servicer = FlakyRecommender(failures)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_RecommenderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with RecommenderClient(f"127.0.0.1:{port}", timeout=5, retries=retries) as client:
            if ok:
                assert client.model_info().model_version == "v-flaky"
                assert servicer.calls == failures + 1
            else:
                with pytest.raises(grpc.RpcError) as exc:
                    client.model_info()
                assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_graceful_stop_reports_not_serving(demo_model) -> None:
    from hybridrec.server.app import create_server, load_state

    from .conftest import DEFAULT_CONFIG

    running = create_server(load_state(demo_model, DEFAULT_CONFIG))
    with RecommenderClient(f"127.0.0.1:{running.port}", retries=0) as client:
        assert client.health() == "SERVING"
        running.health.enter_graceful_shutdown()
        assert client.health() == "NOT_SERVING"
    running.server.stop(None)


def test_a_call_that_ended_while_queued_is_not_run(demo_model) -> None:
    """Overloaded: a request whose deadline passed while it waited for a handler thread is
    dropped, not computed for nobody (gRPC's sync server does this before calling the handler;
    the test keeps it so)."""
    from hybridrec.server.app import create_server, load_state

    from .conftest import DEFAULT_CONFIG

    running = create_server(load_state(demo_model, DEFAULT_CONFIG), max_workers=1)
    service = running.service
    calls = []
    original = service.recommend
    gate = threading.Event()

    def slow_first(request, deadline=None):
        calls.append(request.user_id)
        if request.user_id == "first":
            gate.wait(5)
        return original(request, deadline)

    service.recommend = slow_first
    try:
        with RecommenderClient(f"127.0.0.1:{running.port}", retries=0) as client:
            with futures.ThreadPoolExecutor(2) as pool:
                first = pool.submit(client.recommend, "first", 3, timeout=10)
                while not calls:
                    threading.Event().wait(0.01)
                with pytest.raises(grpc.RpcError) as exc:  # queued behind "first" on the one thread
                    client.recommend("second", 3, timeout=0.3)
                assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                # the server's deadline runs from when it received the call, a little after the
                # client's: on a loaded machine it may not have passed yet when the client gives up
                threading.Event().wait(0.5)
                gate.set()
                assert len(first.result().items) == 3
            assert len(client.recommend("third", 3).items) == 3
        assert calls == ["first", "third"]  # "second" never ran
    finally:
        gate.set()
        running.server.stop(None)


def test_stored_user_candidates_serve_what_the_search_finds(demo_data, tmp_path) -> None:
    """A bundle with `collaborative.user_candidates` answers known users from the stored rows;
    through the real server the answers equal those of a pipeline that searches the index."""
    from hybridrec.server.app import create_server, load_state
    from hybridrec.server.training import train

    from .conftest import small_training_config

    config = small_training_config()
    config.collaborative.user_candidates = 30
    train(demo_data["events"], demo_data["items"], config, tmp_path / "model")
    stages = """
    candidates:
      - {plugin: faiss_cf, name: cf, params: {n: 20, lookup: LOOKUP}}
      - {plugin: faiss_content, name: content, params: {n: 20, seeds: 3}}
      - {plugin: popularity, params: {n: 10}}
    filters: [exclude_seen, exclude_requested]
    scorer: {plugin: weighted_hybrid, params: {weights: {cf: 0.6, content: 0.4}}}
    rerankers: [{plugin: mmr, params: {lambda_weight: 0.7, pool: 20}}]
"""
    path = tmp_path / "serve.yaml"
    path.write_text("pipelines:\n  stored:" + stages.replace("LOOKUP", "auto")
                    + "  searched:" + stages.replace("LOOKUP", "index"))
    state = load_state(tmp_path / "model", path)
    assert state.model.cf_user_items.shape == (state.model.num_users, 30)
    running = create_server(state, "127.0.0.1:0", max_workers=2)
    try:
        with RecommenderClient(f"127.0.0.1:{running.port}", timeout=10) as client:
            users = users_by_activity(state.model)
            items = [str(i) for i in state.model.item_ids[:3]]
            for user in users[:20] + users[-20:]:
                for kwargs in ({}, {"exclude": items[:1]}, {"context_items": items[1:]}):
                    stored = client.recommend(user, k=10, pipeline="stored", explain=True, **kwargs)
                    searched = client.recommend(user, k=10, pipeline="searched", explain=True, **kwargs)
                    assert [i.item_id for i in stored.items] == [i.item_id for i in searched.items]
                    assert [i.score for i in stored.items] == pytest.approx([i.score for i in searched.items], abs=1e-5)
                    for a, b in zip(stored.items, searched.items):  # every source's score, cf's included
                        assert a.source_scores.keys() == b.source_scores.keys()
                        assert a.source_scores == pytest.approx(b.source_scores, abs=1e-5)
    finally:
        running.stop(grace=None)


def test_swap_search_mmr_serves_its_set_best_first(demo_model, tmp_path) -> None:
    """`search: swap` through the real server: k items, each page of 10 in the scorer's order, each
    item with its MMR stage score, and lists that differ from the same pipeline without the stage."""
    from hybridrec.server.app import create_server, load_state

    base = """
    candidates: [faiss_cf, faiss_content, popularity]
    filters: [exclude_seen, exclude_requested]
    scorer: {plugin: weighted_hybrid, params: {weights: {faiss_cf: 0.6, faiss_content: 0.4}}}
"""
    path = tmp_path / "serve.yaml"
    path.write_text("pipelines:\n  plain:" + base + "  swap:" + base
                    + "    rerankers: [{plugin: mmr, params: {lambda_weight: 0.4, redundancy: mean, keep_top: 2,"
                      " search: swap}}]\n")
    state = load_state(demo_model, path)
    running = create_server(state, "127.0.0.1:0", max_workers=2)
    try:
        with RecommenderClient(f"127.0.0.1:{running.port}", timeout=10) as client:
            changed = 0
            for user in users_by_activity(state.model)[:30]:
                lists = {}
                for k in (10, 20):
                    plain = client.recommend(user, k=k, pipeline="plain")
                    swap = client.recommend(user, k=k, pipeline="swap", explain=True)
                    assert len(swap.items) == k and len({i.item_id for i in swap.items}) == k
                    for page in range(0, k, 10):  # each page of 10 in the scorer's order
                        scores = [i.score for i in swap.items[page:page + 10]]
                        assert scores == sorted(scores, reverse=True)
                    assert all("mmr" in i.stage_scores for i in swap.items)
                    assert [i.item_id for i in swap.items[:2]] == [i.item_id for i in plain.items[:2]]  # keep_top
                    changed += [i.item_id for i in swap.items] != [i.item_id for i in plain.items]
                    lists[k] = [i.item_id for i in swap.items]
                assert lists[20][:10] == lists[10]  # the first page of a longer list is the shorter list
            assert changed > 0
    finally:
        running.stop(grace=None)


def test_new_items_are_found_by_cf_through_their_content_and_say_so(client: RecommenderClient, model) -> None:
    new = {str(model.item_ids[i]) for i in np.flatnonzero(model.popularity == 0)}
    assert new and model.manifest["cf_from_content"] == len(new)  # the demo's items that got no events
    found = {}
    for user in users_by_activity(model)[:20]:
        for item in client.recommend(user, k=100, pipeline="cf", explain=True).items:
            if item.item_id in new:
                found[item.item_id] = item.reason
    assert found, "no new item in 20 users' CF lists of 100"
    assert set(found.values()) == {"new here, and its description matches the tastes of people like you"}
