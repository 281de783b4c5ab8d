"""Offline evaluation through the serving code path: split, recommend in-process, score.

The recommender evaluated is the very `Pipeline` the server runs, built from the same YAML
and called through `RecommenderService.recommend`.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybridrec.v1 import recommender_pb2 as pb

from .service import RecommenderService


def split_events_per_user(events_path: str | Path, train_path: str | Path, test_ratio: float = 0.25,
                          seed: int = 42) -> dict[str, set[str]]:
    """Per-user random holdout of (user, item) pairs: every event of a held-out pair goes to
    the test set, the rest is written to `train_path`. Users with one pair keep it in train.

    Returns the held-out items per user.
    """
    with Path(events_path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        rows = list(reader)
    pairs: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        items = pairs[row["user_id"]]
        if row["item_id"] not in items:
            items.append(row["item_id"])
    rng = np.random.default_rng(seed)
    held: dict[str, set[str]] = {}
    for user, items in pairs.items():
        n_test = int(round(len(items) * test_ratio))
        if len(items) < 2 or n_test == 0:
            continue
        chosen = rng.choice(len(items), size=n_test, replace=False)
        held[user] = {items[i] for i in chosen}
    with Path(train_path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(r for r in rows if r["item_id"] not in held.get(r["user_id"], ()))
    return held


def ndcg_at_k(recommended: list[str], relevant: set[str], k: int) -> float:
    """Binary-relevance NDCG@k."""
    gains = [1.0 / np.log2(i + 2) for i, item in enumerate(recommended[:k]) if item in relevant]
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(relevant))))
    return float(sum(gains) / ideal) if ideal > 0 else 0.0


def precision_at_k(recommended: list[str], relevant: set[str], k: int) -> float:
    return sum(1 for item in recommended[:k] if item in relevant) / k


def recall_at_k(recommended: list[str], relevant: set[str], k: int) -> float:
    return sum(1 for item in recommended[:k] if item in relevant) / len(relevant) if relevant else 0.0


@dataclass
class Scores:
    """Mean metrics of one pipeline over the evaluated users."""

    pipeline: str
    users: int
    ndcg: float
    precision: float
    recall: float


def evaluate(service: RecommenderService, pipeline: str, held_out: dict[str, set[str]], k: int = 10) -> Scores:
    """Mean NDCG/precision/recall@k of `pipeline` over every user with held-out items."""
    ndcg, prec, rec = [], [], []
    model = service.state.model
    for user, relevant in held_out.items():
        result, ctx, _ = service.recommend(pb.RecommendRequest(user_id=user, k=k, pipeline=pipeline))
        recommended = [str(model.item_ids[result.candidates.items[p]]) for p in result.ranked]
        ndcg.append(ndcg_at_k(recommended, relevant, k))
        prec.append(precision_at_k(recommended, relevant, k))
        rec.append(recall_at_k(recommended, relevant, k))
    return Scores(pipeline, len(held_out), float(np.mean(ndcg)), float(np.mean(prec)), float(np.mean(rec)))
