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
