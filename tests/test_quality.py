"""Measured comparisons on held-out data: the hybrid must beat popularity."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hybridrec.server.app import load_state
from hybridrec.server.bundle import load_model
from hybridrec.server.config import TrainingConfig
from hybridrec.server.demo_data import generate
from hybridrec.server.evaluation import evaluate, split_events_per_user
from hybridrec.server.movielens import convert
from hybridrec.server.service import RecommenderService
from hybridrec.server.training import train
from hybridrec.v1 import recommender_pb2 as pb

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


def test_movielens_100k_every_user_gets_10_unseen_items(tmp_path: Path) -> None:
    src = shared_dataset("ml-100k")
    paths = convert(src, tmp_path / "data")
    train(paths["events"], paths["items"], TrainingConfig(), tmp_path / "model")
    model = load_model(tmp_path / "model")
    assert model.num_users == 943 and model.num_items == 1682
    service = RecommenderService(load_state(tmp_path / "model", DEFAULT_CONFIG))
    for user in model.user_ids.tolist():
        result, ctx, _ = service.recommend(pb.RecommendRequest(user_id=user, k=10))
        chosen = result.candidates.items[result.ranked]
        assert chosen.shape == (10,), user
        assert not np.isin(chosen, ctx.history()[0]).any(), user
        assert np.unique(chosen).shape == (10,)
