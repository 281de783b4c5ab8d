"""Measured comparisons on held-out data: the hybrid must beat popularity."""
from __future__ import annotations

from pathlib import Path

import pytest

from hybridrec.clients import RecommenderClient
from hybridrec.server.app import create_server, load_state
from hybridrec.server.bundle import load_model
from hybridrec.server.config import TrainingConfig
from hybridrec.server.demo_data import generate
from hybridrec.server.evaluation import evaluate, split_events_per_user
from hybridrec.server.movielens import convert
from hybridrec.server.service import RecommenderService
from hybridrec.server.training import train

from .conftest import DEFAULT_CONFIG, shared_dataset


def test_hybrid_beats_popularity_on_held_out_demo_events(tmp_path: Path) -> None:
    data = generate(tmp_path / "data", n_users=1000, n_items=500, n_events=20000, seed=11)
    held = split_events_per_user(data["events"], tmp_path / "train.csv", test_ratio=0.25, seed=42)
    train(tmp_path / "train.csv", data["items"], TrainingConfig(), tmp_path / "model")
    service = RecommenderService(load_state(tmp_path / "model", DEFAULT_CONFIG))
    hybrid = evaluate(service, "hybrid_no_mmr", held, k=10)
    popular = evaluate(service, "popularity", held, k=10)
    print(f"NDCG@10 hybrid {hybrid.ndcg:.4f} vs popularity {popular.ndcg:.4f} over {hybrid.users} users")
    assert hybrid.users > 300
    assert hybrid.ndcg > popular.ndcg * 1.1


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
