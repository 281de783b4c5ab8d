"""Offline metrics against values worked out by hand (the arithmetic is in the comments)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hybridrec.server import metrics
from hybridrec.server.metrics import (catalog_coverage, intra_list_diversity, novelty, per_user_hits,
                                      popularity_bias, random_recall_at_k, ranking_metrics)


def lg(rank: int) -> float:
    """The DCG discount of a 1-based rank."""
    return 1.0 / math.log2(rank + 1)


def recs_of(*rows: list[int]) -> np.ndarray:
    return np.array(rows, dtype=np.int64)


def rel(*items: int) -> np.ndarray:
    return np.array(items, dtype=np.int64)


def test_one_user_worked_example() -> None:
    # recs [3, 1, 7, 2, 9], relevant {1, 2, 5}: hits at ranks 2 and 4.
    found = ranking_metrics(recs_of([3, 1, 7, 2, 9]), [rel(1, 2, 5)], ks=(5,))
    # precision@5 = 2 hits / 5; recall@5 = 2 hits / 3 relevant
    assert found["precision@5"] == pytest.approx(2 / 5)
    assert found["recall@5"] == pytest.approx(2 / 3)
    # DCG = 1/log2(3) + 1/log2(5); IDCG = 1/log2(2) + 1/log2(3) + 1/log2(4) (3 relevant fit in 5)
    assert found["ndcg@5"] == pytest.approx((lg(2) + lg(4)) / (lg(1) + lg(2) + lg(3)))
    # AP@5 = (precision@2 + precision@4) / min(5, 3) = (1/2 + 2/4) / 3
    assert found["map@5"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    # first hit at rank 2
    assert found["hitrate@5"] == 1.0
    assert found["mrr@5"] == pytest.approx(1 / 2)


def test_cut_off_below_the_first_hit() -> None:
    # Same lists at k = 1 and k = 3: rank 1 (item 3) is a miss; rank 2 is the only hit in the top 3.
    found = ranking_metrics(recs_of([3, 1, 7, 2, 9]), [rel(1, 2, 5)], ks=(1, 3))
    for name in ("precision", "recall", "ndcg", "map", "hitrate", "mrr"):
        assert found[f"{name}@1"] == 0.0
    # precision@3 = 1/3; recall@3 = 1/3; AP@3 = (1/2) / min(3, 3)
    assert found["precision@3"] == pytest.approx(1 / 3)
    assert found["recall@3"] == pytest.approx(1 / 3)
    assert found["map@3"] == pytest.approx((1 / 2) / 3)
    # DCG@3 = 1/log2(3); IDCG@3 = 1 + 1/log2(3) + 1/log2(4)
    assert found["ndcg@3"] == pytest.approx(lg(2) / (lg(1) + lg(2) + lg(3)))
    assert found["mrr@3"] == pytest.approx(1 / 2)


def test_perfect_list_scores_one() -> None:
    found = ranking_metrics(recs_of([4, 8, 0]), [rel(8, 4)], ks=(2,))
    # both relevant items in the first two ranks: every metric is 1
    assert found == pytest.approx({"precision@2": 1.0, "recall@2": 1.0, "ndcg@2": 1.0, "map@2": 1.0,
                                   "hitrate@2": 1.0, "mrr@2": 1.0})


def test_fewer_relevant_than_k_normalise_by_relevant_count() -> None:
    # one relevant item at rank 1 of 5: precision@5 = 1/5, but recall, NDCG and MAP are 1
    # (IDCG has min(5, 1) = 1 term; AP divides by min(5, 1) = 1).
    found = ranking_metrics(recs_of([6, 1, 2, 3, 4]), [rel(6)], ks=(5,))
    assert found["precision@5"] == pytest.approx(1 / 5)
    assert found["recall@5"] == found["ndcg@5"] == found["map@5"] == pytest.approx(1.0)


def test_more_relevant_than_k_caps_the_ideal() -> None:
    # 4 relevant, k = 2, hit at rank 2 only: IDCG@2 = 1 + 1/log2(3); AP@2 = (1/2) / min(2, 4)
    found = ranking_metrics(recs_of([9, 1, 2]), [rel(1, 2, 3, 4)], ks=(2,))
    assert found["ndcg@2"] == pytest.approx(lg(2) / (lg(1) + lg(2)))
    assert found["map@2"] == pytest.approx(0.5 / 2)
    assert found["recall@2"] == pytest.approx(1 / 4)


def test_means_over_users() -> None:
    recs = recs_of([1, 2, 3], [4, 5, 6], [7, 8, 9])
    relevant = [rel(1), rel(6), rel(100)]
    found = ranking_metrics(recs, relevant, ks=(3,))
    # user 0: hit at rank 1; user 1: hit at rank 3; user 2: no hit
    assert found["precision@3"] == pytest.approx((1 / 3 + 1 / 3 + 0) / 3)
    assert found["recall@3"] == pytest.approx((1 + 1 + 0) / 3)
    assert found["hitrate@3"] == pytest.approx(2 / 3)
    assert found["mrr@3"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    # NDCG: user 0 = 1; user 1 = (1/log2(4)) / 1 = 1/2; user 2 = 0
    assert found["ndcg@3"] == pytest.approx((1 + 0.5 + 0) / 3)
    # AP: user 0 = 1; user 1 = precision@3 / 1 = 1/3; user 2 = 0
    assert found["map@3"] == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_padding_is_a_miss_and_keeps_the_denominator() -> None:
    # a 2-item list padded to 5; relevant item 0 at rank 2; -1 never matches anything
    found = ranking_metrics(recs_of([5, 0, -1, -1, -1]), [rel(0, 3)], ks=(5,))
    assert found["precision@5"] == pytest.approx(1 / 5)
    assert found["recall@5"] == pytest.approx(1 / 2)
    assert found["mrr@5"] == pytest.approx(1 / 2)
    # IDCG@5 = 1 + 1/log2(3) (2 relevant)
    assert found["ndcg@5"] == pytest.approx(lg(2) / (lg(1) + lg(2)))


def test_k_larger_than_the_list() -> None:
    # K_max = 3 but k = 10: ranks past the list are misses; precision still divides by 10
    found = ranking_metrics(recs_of([2, 7, 4]), [rel(7, 4)], ks=(3, 10))
    assert found["precision@10"] == pytest.approx(2 / 10)
    assert found["recall@10"] == found["recall@3"] == pytest.approx(1.0)
    # DCG = 1/log2(3) + 1/log2(4); IDCG@10 with 2 relevant = 1 + 1/log2(3)
    assert found["ndcg@10"] == pytest.approx((lg(2) + lg(3)) / (lg(1) + lg(2)))
    # AP = (1/2 + 2/3) / min(10, 2)
    assert found["map@10"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_duplicate_relevant_items_count_once() -> None:
    found = ranking_metrics(recs_of([1, 2]), [rel(1, 1, 3)], ks=(2,))
    assert found["recall@2"] == pytest.approx(1 / 2)


def test_default_ks_give_every_key() -> None:
    found = ranking_metrics(recs_of([0, 1]), [rel(1)])
    names = ("precision", "recall", "ndcg", "map", "hitrate", "mrr")
    assert set(found) == {f"{n}@{k}" for n in names for k in (5, 10, 20)}
    assert all(isinstance(v, float) for v in found.values())


def test_per_user_hits_matrix() -> None:
    hits = per_user_hits(recs_of([3, 1, -1], [0, 2, 5]), [rel(1, 3), rel(5, 9)])
    assert hits.dtype == bool
    assert hits.tolist() == [[True, True, False], [False, False, True]]


def test_per_user_hits_with_items_past_the_catalogue() -> None:
    # evaluation maps unknown held-out items to indices beyond the catalogue: never hit
    hits = per_user_hits(recs_of([0, 1], [1, -1]), [rel(1000), rel(1, 1001)])
    assert hits.tolist() == [[False, False], [True, False]]


def test_mismatched_lengths_and_bad_k_raise() -> None:
    with pytest.raises(ValueError, match="relevant"):
        ranking_metrics(recs_of([1, 2]), [rel(1), rel(2)])
    with pytest.raises(ValueError, match="k"):
        ranking_metrics(recs_of([1, 2]), [rel(1)], ks=(0,))


def test_vectorised_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    n_users, width, n_items = 200, 15, 60
    recs = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)])
    recs[rng.random((n_users, width)) < 0.1] = -1
    relevant = [rng.choice(n_items, size=rng.integers(1, 12), replace=False) for _ in range(n_users)]
    found = ranking_metrics(recs, relevant, ks=(5, 10, 20))
    for k in (5, 10, 20):
        expected = {name: [] for name in ("precision", "recall", "ndcg", "map", "hitrate", "mrr")}
        for row, items in zip(recs, relevant):
            wanted = set(items.tolist())
            hit_ranks = [r for r, item in enumerate(row[:k].tolist(), 1) if item in wanted]
            ideal = sum(lg(r) for r in range(1, min(k, len(wanted)) + 1))
            expected["precision"].append(len(hit_ranks) / k)
            expected["recall"].append(len(hit_ranks) / len(wanted))
            expected["ndcg"].append(sum(lg(r) for r in hit_ranks) / ideal)
            expected["map"].append(sum((i + 1) / r for i, r in enumerate(hit_ranks)) / min(k, len(wanted)))
            expected["hitrate"].append(float(bool(hit_ranks)))
            expected["mrr"].append(1 / hit_ranks[0] if hit_ranks else 0.0)
        for name, values in expected.items():
            assert found[f"{name}@{k}"] == pytest.approx(np.mean(values)), f"{name}@{k}"


def test_catalog_coverage() -> None:
    recs = recs_of([0, 1, 2], [1, 3, -1])
    # top 2: {0, 1} and {1, 3} -> 3 distinct of 10
    assert catalog_coverage(recs, n_items=10, k=2) == pytest.approx(3 / 10)
    # top 3: {0, 1, 2, 3} (padding ignored) -> 4 of 10
    assert catalog_coverage(recs, n_items=10, k=3) == pytest.approx(4 / 10)
    with pytest.raises(ValueError, match="n_items"):
        catalog_coverage(recs, n_items=0, k=2)


def test_intra_list_diversity_orthogonal_and_identical() -> None:
    embeddings = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [5.0, 0.0, 0.0]])
    # orthogonal items: every pair has cos 0 -> distance 1 (scale does not matter: vectors are normalised)
    assert intra_list_diversity(recs_of([0, 1, 2]), embeddings, k=3) == pytest.approx(1.0)
    # items 0 and 3 point the same way: cos 1 -> distance 0
    assert intra_list_diversity(recs_of([0, 3]), embeddings, k=2) == pytest.approx(0.0)


def test_intra_list_diversity_mixed_lists_and_skips() -> None:
    embeddings = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    # list A = [0, 1, 2]: pairs (0,1) cos 1/sqrt2, (0,2) cos 0, (1,2) cos 1/sqrt2
    #   -> mean distance = (2 * (1 - 1/sqrt2) + 1) / 3
    # list B = [2, -1, -1]: a single item, not counted
    # list C = [3, 0, -1]: item 3 is a zero vector -> distance 1
    list_a = (2 * (1 - 1 / math.sqrt(2)) + 1) / 3
    recs = recs_of([0, 1, 2], [2, -1, -1], [3, 0, -1])
    assert intra_list_diversity(recs, embeddings, k=3) == pytest.approx((list_a + 1.0) / 2)
    # only single-item lists: nothing to average
    assert intra_list_diversity(recs_of([0, -1]), embeddings, k=2) == 0.0


def test_intra_list_diversity_blocks_agree_with_a_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # a tiny block size forces many blocks of 2 lists each
    monkeypatch.setattr(metrics, "_ILD_BLOCK_ELEMENTS", 100)
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(50, 8))
    recs = np.stack([rng.permutation(50)[:6] for _ in range(300)])
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    expected = np.mean([np.mean([1 - unit[a] @ unit[b] for i, a in enumerate(row) for b in row[i + 1:]])
                        for row in recs])
    assert intra_list_diversity(recs, embeddings, k=6) == pytest.approx(expected)


def test_category_diversity_hand_computed() -> None:
    # item 0 {a, b}, item 1 {a}, item 2 {c}, item 3 no category
    categories = np.array([[0, 1], [0, -1], [2, -1], [-1, -1]])
    # list [0, 1, 2]: cos(0,1) = 1 / sqrt(2 x 1), the other pairs share nothing
    # list [0, 3]: an item without categories is at distance 1; list [1] alone is not counted
    first = 1 - (1 / math.sqrt(2)) / 3
    recs = recs_of([0, 1, 2], [0, 3, -1], [1, -1, -1])
    assert metrics.category_diversity(recs, categories, k=3) == pytest.approx((first + 1.0) / 2)
    assert metrics.category_diversity(recs, categories, k=1) == 0.0  # no list of two
    # the same items twice over: every pair identical
    assert metrics.category_diversity(recs_of([1, 1]), categories, k=2) == pytest.approx(0.0)


def test_category_diversity_is_ild_over_indicator_vectors() -> None:
    rng = np.random.default_rng(4)
    categories = np.full((60, 3), -1)
    for row in range(60):
        held = rng.choice(7, size=rng.integers(0, 4), replace=False)
        categories[row, : held.shape[0]] = held
    indicators = np.zeros((60, 7))
    for row, codes in enumerate(categories):
        indicators[row, codes[codes >= 0]] = 1.0
    recs = np.stack([rng.permutation(60)[:8] for _ in range(40)])
    recs[::5, 6:] = -1  # some shorter lists
    assert metrics.category_diversity(recs, categories, k=8) == pytest.approx(
        intra_list_diversity(recs, indicators, k=8))
    unit = metrics.category_unit_rows(categories[:10])
    expected = indicators[:10] / np.maximum(np.linalg.norm(indicators[:10], axis=1, keepdims=True), 1e-12)
    assert np.allclose(unit @ unit.T, expected @ expected.T)


def test_novelty() -> None:
    item_counts = np.array([8, 4, 1, 0])
    n_users = 8
    # p = [1, 1/2, 1/8, 0 -> clipped to 1/8]; self-information = [0, 1, 3, 3]
    # lists (top 2): [0, 1] and [2, 3] -> mean of 0, 1, 3, 3
    assert novelty(recs_of([0, 1, 2], [2, 3, 0]), item_counts, n_users, k=2) == pytest.approx(7 / 4)
    # padding is not an item: [1, -1] -> just item 1
    assert novelty(recs_of([1, -1]), item_counts, n_users, k=2) == pytest.approx(1.0)
    assert novelty(recs_of([-1, -1]), item_counts, n_users, k=2) == 0.0


def test_popularity_bias() -> None:
    item_counts = np.array([10, 6, 2, 2])  # catalogue mean = 20 / 4 = 5
    # lists (top 2): [0, 1] mean 8; [2, 3] mean 2; [1, -1] mean 6 -> ARP = 16/3; / 5
    recs = recs_of([0, 1, 3], [2, 3, 0], [1, -1, -1])
    assert popularity_bias(recs, item_counts, k=2) == pytest.approx((16 / 3) / 5)
    # recommending only the most popular item is twice as popular as the average item
    assert popularity_bias(recs_of([0]), item_counts, k=1) == pytest.approx(2.0)
    assert popularity_bias(recs_of([-1]), item_counts, k=1) == 0.0


def test_random_recall_at_k() -> None:
    assert random_recall_at_k(100, 10) == pytest.approx(0.1)
    # k at least the candidate count: everything is recommended
    assert random_recall_at_k(5, 10) == 1.0
    assert random_recall_at_k(0, 10) == 0.0
