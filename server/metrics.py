"""Offline evaluation metrics for top-k recommendation lists.

Lists are held as one padded matrix ``recs`` of shape (n_users, K_max): item indices in
rank order, ``-1`` where a list is shorter than K_max. The held-out (relevant) items of
each user are a list of 1-D integer arrays, parallel to the rows of ``recs``. Lists are
assumed to hold distinct items, as every pipeline's output does.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

PAD = -1

# Rows of the (users x k x dims) block gathered at once by intra_list_diversity:
# bounded so that 100,000 users with large embeddings never need gigabytes at once.
_ILD_BLOCK_ELEMENTS = 4_000_000


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _as_matrix(recs: np.ndarray) -> np.ndarray:
    recs = np.asarray(recs, dtype=np.int64)
    if recs.ndim != 2:
        raise ValueError(f"recs must be a 2-D (users x K) array, got shape {recs.shape}")
    return recs


def _top(recs: np.ndarray, k: int) -> np.ndarray:
    _check_k(k)
    return _as_matrix(recs)[:, :k]


def per_user_hits(recs: np.ndarray, relevant: list[np.ndarray]) -> np.ndarray:
    """Boolean matrix shaped like ``recs``: is the item at each rank relevant to that user.

    Padding (-1) is never a hit.
    """
    return _hits_and_counts(_as_matrix(recs), relevant)[0]


def _hits_and_counts(recs: np.ndarray, relevant: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The hit matrix and the number of distinct relevant items of each user."""
    n_users = recs.shape[0]
    if len(relevant) != n_users:
        raise ValueError(f"relevant has {len(relevant)} entries but recs has {n_users} rows")
    lengths = np.fromiter((np.size(r) for r in relevant), dtype=np.int64, count=n_users)
    items = (np.concatenate([np.asarray(r, dtype=np.int64).ravel() for r in relevant])
             if lengths.sum() else np.zeros(0, dtype=np.int64))
    # Encode every (row, item) as one integer so all users are looked up in one searchsorted.
    stride = max(int(items.max()) if items.size else 0, int(recs.max()) if recs.size else 0) + 1
    rows = np.arange(n_users, dtype=np.int64)
    rel_keys = np.unique(np.repeat(rows, lengths) * stride + items)
    counts = np.bincount(rel_keys // stride, minlength=n_users).astype(np.float64)
    if rel_keys.size == 0:
        return np.zeros(recs.shape, dtype=bool), counts
    rec_keys = rows[:, None] * stride + recs
    pos = np.minimum(np.searchsorted(rel_keys, rec_keys), rel_keys.size - 1)
    return (rel_keys[pos] == rec_keys) & (recs != PAD), counts


def _column_at(cumulative: np.ndarray, k: int) -> np.ndarray:
    """Column k-1 of a per-rank cumulative matrix; ranks past the list width add nothing."""
    width = cumulative.shape[1]
    if width == 0:
        return np.zeros(cumulative.shape[0])
    return cumulative[:, min(k, width) - 1]


def ranking_metrics(recs: np.ndarray, relevant: list[np.ndarray],
                    ks: Sequence[int] = (5, 10, 20)) -> dict[str, float]:
    """Mean over users of precision, recall, NDCG, MAP, hit rate and MRR at each k.

    Relevance is binary. Keys are ``"<metric>@<k>"``, e.g. ``"ndcg@10"``.
    """
    for k in ks:
        _check_k(k)
    recs = _as_matrix(recs)
    hits, n_rel = _hits_and_counts(recs, relevant)
    safe_rel = np.maximum(n_rel, 1.0)
    ranks = np.arange(1, recs.shape[1] + 1, dtype=np.float64)
    hit_f = hits.astype(np.float64)

    # Every metric at every k is a column of one of these cumulative sums over ranks.
    cum_hits = np.cumsum(hit_f, axis=1)
    cum_dcg = np.cumsum(hit_f / np.log2(ranks + 1.0), axis=1)
    cum_ap = np.cumsum(hit_f * cum_hits / ranks, axis=1)
    any_hit = hits.any(axis=1)
    first_rank = np.where(any_hit, hits.argmax(axis=1) + 1, 0)

    out: dict[str, float] = {}
    for k in ks:
        n_hits = _column_at(cum_hits, k)
        ideal = _ideal_dcg(np.minimum(n_rel, k).astype(np.int64), k)
        in_top = any_hit & (first_rank <= k)
        out[f"precision@{k}"] = _mean(n_hits / k)
        out[f"recall@{k}"] = _mean(n_hits / safe_rel)
        out[f"ndcg@{k}"] = _mean(_column_at(cum_dcg, k) / np.where(ideal > 0, ideal, 1.0))
        out[f"map@{k}"] = _mean(_column_at(cum_ap, k) / np.maximum(np.minimum(n_rel, k), 1.0))
        out[f"hitrate@{k}"] = _mean(n_hits > 0)
        out[f"mrr@{k}"] = _mean(np.where(in_top, 1.0 / np.maximum(first_rank, 1), 0.0))
    return out


def _ideal_dcg(n_ideal: np.ndarray, k: int) -> np.ndarray:
    """IDCG for each user given how many relevant items fit in the top k."""
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64)))])
    return table[n_ideal]


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if np.size(values) else 0.0


def catalog_coverage(recs: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalogue (``n_items``) that appears in at least one top-k list."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    top = _top(recs, k)
    return np.unique(top[top != PAD]).size / n_items


def intra_list_diversity(recs: np.ndarray, embeddings: np.ndarray, k: int) -> float:
    """Mean over lists of >= 2 items of the mean pairwise cosine distance of their top k.

    Embeddings are item row vectors; a zero vector is at distance 1 from everything.
    Returns 0.0 when no list has two items.
    """
    top = _top(recs, k)
    unit = _unit_rows(np.asarray(embeddings, dtype=np.float64))
    block = max(1, _ILD_BLOCK_ELEMENTS // max(1, top.shape[1] * unit.shape[1]))
    totals = [_ild_sum(top[start:start + block], unit) for start in range(0, top.shape[0], block)]
    distance_sum = sum(t[0] for t in totals)
    n_lists = sum(t[1] for t in totals)
    return distance_sum / n_lists if n_lists else 0.0


def category_diversity(recs: np.ndarray, item_categories: np.ndarray, k: int) -> float:
    """Intra-list diversity over category sets: the mean over lists of >= 2 items of the mean
    pairwise distance 1 - |A & B| / sqrt(|A| |B|), the cosine distance of category indicator
    vectors. ``item_categories`` holds each item's category codes, -1 padded; an item without
    categories is at distance 1 from everything. Returns 0.0 when no list has two items.
    """
    top = _top(recs, k)
    codes = np.asarray(item_categories)[np.where(top != PAD, top, 0)]  # (lists, k, widest)
    present = (codes >= 0) & (top != PAD)[:, :, None]
    sizes = present.sum(axis=2)
    # Per list and category c, s_c = sum over its items holding c of 1 / sqrt(|A_i|); the sum
    # of cosines over ordered pairs i != j is sum_c s_c^2 minus one per item with categories.
    weights = np.where(present, 1.0 / np.sqrt(np.maximum(sizes, 1))[:, :, None], 0.0)
    lists = np.broadcast_to(np.arange(top.shape[0])[:, None, None], codes.shape)
    n_codes = int(codes.max()) + 1 if codes.size else 0
    summed = sp.csr_matrix((weights[present], (lists[present], codes[present])),
                           shape=(top.shape[0], max(n_codes, 1)))  # duplicates are summed
    pair_cos = np.asarray(summed.multiply(summed).sum(axis=1)).ravel() - (sizes > 0).sum(axis=1)
    n = (top != PAD).sum(axis=1).astype(np.float64)
    counted = n >= 2
    if not counted.any():
        return 0.0
    return float(np.mean(1.0 - pair_cos[counted] / (n[counted] * (n[counted] - 1.0))))


def category_unit_rows(codes: np.ndarray) -> np.ndarray:
    """Unit-length category indicator vectors of a few items (rows of -1 padded codes), over the
    categories those items hold: their dot products are the items' category cosines."""
    present = codes >= 0
    held, local = np.unique(codes[present], return_inverse=True)
    out = np.zeros((codes.shape[0], max(held.shape[0], 1)))
    out[np.nonzero(present)[0], local] = 1.0
    return _unit_rows(out)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _ild_sum(top: np.ndarray, unit: np.ndarray) -> tuple[float, int]:
    """(sum of per-list mean distances, number of lists counted) for one block of lists."""
    valid = top != PAD
    vectors = unit[np.where(valid, top, 0)] * valid[:, :, None]
    n = valid.sum(axis=1).astype(np.float64)
    # Sum of cosines over ordered pairs i != j: |sum of vectors|^2 - sum of |vector|^2.
    summed = vectors.sum(axis=1)
    pair_cos = np.einsum("ud,ud->u", summed, summed) - np.einsum("ukd,ukd->u", vectors, vectors)
    counted = n >= 2
    pairs = n[counted] * (n[counted] - 1.0)
    return float(np.sum(1.0 - pair_cos[counted] / pairs)), int(counted.sum())


def novelty(recs: np.ndarray, item_counts: np.ndarray, n_users: int, k: int) -> float:
    """Mean self-information -log2(p_i) of every recommended top-k item.

    ``p_i = item_counts[i] / n_users``, clipped to at least ``1 / n_users`` so items no
    training user saw are finite. Returns 0.0 when nothing was recommended.
    """
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    top = _top(recs, k)
    chosen = top[top != PAD]
    if chosen.size == 0:
        return 0.0
    p = np.maximum(np.asarray(item_counts, dtype=np.float64)[chosen] / n_users, 1.0 / n_users)
    return float(np.mean(-np.log2(p)))


def popularity_bias(recs: np.ndarray, item_counts: np.ndarray, k: int) -> float:
    """Average recommendation popularity relative to the catalogue's mean popularity.

    Mean over non-empty lists of the mean ``item_counts`` of their top-k items, divided by
    the mean of ``item_counts``: 1.0 is as popular as an average item, above 1.0 leans to
    popular items. Returns 0.0 when there is nothing to compare.
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    top = _top(recs, k)
    valid = top != PAD
    n = valid.sum(axis=1)
    catalogue_mean = float(counts.mean()) if counts.size else 0.0
    if not n.any() or catalogue_mean == 0.0:
        return 0.0
    list_sums = np.where(valid, counts[np.where(valid, top, 0)], 0.0).sum(axis=1)
    return float(np.mean(list_sums[n > 0] / n[n > 0]) / catalogue_mean)


def random_recall_at_k(n_candidates: int, k: int) -> float:
    """Expected recall@k of a uniformly random top k out of ``n_candidates`` items.

    Returns 0.0 when there are no candidates.
    """
    _check_k(k)
    if n_candidates < 1:
        return 0.0
    return min(k, n_candidates) / n_candidates
