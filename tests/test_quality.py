"""Measured comparisons on held-out data, through the serving code path."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hybridrec.clients import RecommenderClient
from hybridrec.server import metrics, splits
from hybridrec.server.app import create_server, load_state
from hybridrec.server.bundle import load_model
from hybridrec.server.config import TrainingConfig
from hybridrec.server.demo_data import generate
from hybridrec.server.evaluation import EventTable, recommend_all, relevant_indices, trained
from hybridrec.server.movielens import convert
from hybridrec.server.training import train

from .conftest import DEFAULT_CONFIG, shared_dataset


def test_hybrid_beats_popularity_on_held_out_demo_events(tmp_path: Path) -> None:
    data = generate(tmp_path / "data", n_users=1000, n_items=500, n_events=20000, seed=11)
    table = EventTable.read(data["events"])
    test = splits.random_holdout(table.users, table.items, 0.25, 42)
    with trained(table, ~test, data["items"], TrainingConfig(), DEFAULT_CONFIG, tmp_path, "q") as service:
        users, relevant = relevant_indices(service, splits.held_out_items(table.users, table.items, test))
        ndcg = {name: metrics.ranking_metrics(recommend_all(service, name, users, 10), relevant, (10,))["ndcg@10"]
                for name in ("hybrid_no_mmr", "popularity")}
    print(f"NDCG@10 hybrid {ndcg['hybrid_no_mmr']:.4f} vs popularity {ndcg['popularity']:.4f} over {len(users)} users")
    assert len(users) > 300
    assert ndcg["hybrid_no_mmr"] > ndcg["popularity"] * 1.1


def test_movielens_100k_served_every_user_gets_10_unseen_items(tmp_path: Path) -> None:
    src = shared_dataset("ml-100k")
    paths = convert(src, tmp_path / "data")
    train(paths["events"], paths["items"], TrainingConfig(), tmp_path / "model")
    model = load_model(tmp_path / "model")
    assert model.num_users == 943 and model.num_items == 1682
    running = create_server(load_state(tmp_path / "model", DEFAULT_CONFIG), "127.0.0.1:0")
    try:
        with RecommenderClient(f"127.0.0.1:{running.port}", timeout=10) as client:
            for user in model.user_ids.tolist():
                result = client.recommend(user, k=10)
                seen = {str(model.item_ids[i]) for i in model.history(model.user_index[user])[0]}
                assert len(result.items) == 10 and len(set(result.item_ids)) == 10, user
                assert not seen & set(result.item_ids), user
                assert not result.cold_start and not result.degraded_stages
    finally:
        running.stop(grace=None)


def test_the_movielens_config_serves_every_pipeline_over_grpc(tmp_path: Path) -> None:
    """`hybridrec train` and `serve` with the shipped MovieLens config: every pipeline answers 10
    unseen items through the real server, and the genre MMR pipeline's lists cover more genres
    than the hybrid's (its swap search diversifies them)."""
    from hybridrec.server.config import load_training_config

    config_path = Path(__file__).resolve().parents[1] / "server" / "configs" / "movielens-100k.yaml"
    paths = convert(shared_dataset("ml-100k"), tmp_path / "data")
    train(paths["events"], paths["items"], load_training_config(config_path), tmp_path / "model")
    state = load_state(tmp_path / "model", config_path)
    model = state.model
    assert model.item_categories is not None
    running = create_server(state, "127.0.0.1:0")
    lists: dict[str, list[list[int]]] = {name: [] for name in state.config.pipelines}
    try:
        with RecommenderClient(f"127.0.0.1:{running.port}", timeout=10) as client:
            for user in model.user_ids[::9].tolist():  # 105 users
                seen = {str(model.item_ids[i]) for i in model.history(model.user_index[user])[0]}
                for name in state.config.pipelines:
                    result = client.recommend(user, k=10, pipeline=name, explain=True)
                    assert result.pipeline == name and not result.degraded_stages, (user, name)
                    assert len(result.items) == 10 and len(set(result.item_ids)) == 10, (user, name)
                    assert not seen & set(result.item_ids), (user, name)
                    lists[name].append([model.item_index[i] for i in result.item_ids])
    finally:
        running.stop(grace=None)
    genre_ild = {name: metrics.category_diversity(np.array(rows), model.item_categories, 10)
                 for name, rows in lists.items()}
    print({name: round(value, 4) for name, value in genre_ild.items()})
    assert genre_ild["hybrid_mmr_genres"] > genre_ild["hybrid"] * 1.1
