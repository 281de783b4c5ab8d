"""How much intra-list diversity can a re-ranker buy for 5% of NDCG@10 on MovieLens 100K?

Trains the MovieLens config on the `hybridrec evaluate` protocol split (per-user random 25% test,
seed 42), takes each user's top `--pool` items of the `hybrid` pipeline with their final scores
(through the serving code path), and compares re-rankings of that pool by NDCG@10 and ILD@10
(content distance, as `evaluate` measures them):

- `served`: the config's `hybrid_mmr` pipeline as the server runs it (greedy MMR);
- `mmr lambda=L`: the same greedy MMR at other lambdas;
- `set search beta=B`: the 10-item set that locally maximises sum(discount x relevance, best
  first) + B x ILD, by swapping one item at a time from the top 10 until no swap helps (the list
  is the set in relevance order, which is best for NDCG and does not change ILD);
- `mmr by history`: greedy MMR whose lambda grows with the user's history length (users with few
  ratings diversified more: on this split their lists gain the most ILD per NDCG lost);
- `mmr pool=P`: the same greedy MMR over deeper pools (`--deep-pools 100 200`): do more relevant
  diverse items exist further down?
- `dpp alpha=A`: greedy MAP inference of a determinantal point process with kernel
  L = diag(q) S diag(q), q = exp(A x relevance), S the content cosine similarities (the
  incremental-Cholesky greedy of Chen, Zhang and Zhou, NeurIPS 2018), the first `keep_top`
  picks by relevance as in the served MMR.

Relevance is the final score min-max scaled over the pool, as in the MMR stage.

    .venv/bin/python benchmarks/mmr_frontier.py --data ../shared/data/ml-100k
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors, dtype=np.float64), where=norms > 0)


def greedy_mmr(relevance: np.ndarray, sims: np.ndarray, lam: float, keep_top: int, k: int) -> np.ndarray:
    """Pool positions picked by mean-redundancy MMR (the config's `redundancy: mean`)."""
    picked: list[int] = []
    blocked = np.zeros(relevance.shape[0])
    total = np.zeros(relevance.shape[0])
    for step in range(k):
        if step < keep_top:
            value = relevance + blocked
        else:
            value = lam * relevance - (1 - lam) * (total / step if step else total) + blocked
        best = int(value.argmax())
        picked.append(best)
        blocked[best] = -np.inf
        total += sims[best]
    return np.asarray(picked)


def dpp_greedy(relevance: np.ndarray, sims: np.ndarray, alpha: float, keep_top: int, k: int) -> np.ndarray:
    """Pool positions picked by greedy DPP MAP: each step adds the item with the largest gain in
    log det(L_S), tracked by an incremental Cholesky factor (one row per pick)."""
    n = relevance.shape[0]
    quality = np.exp(alpha * relevance)
    kernel = quality[:, None] * (sims + 1e-6 * np.eye(n)) * quality[None, :]
    factors = np.zeros((k, n))
    gains = np.diag(kernel).copy()  # squared residual norm of each item given the picks
    open_ = np.ones(n, dtype=bool)
    picked: list[int] = []
    for step in range(min(k, n)):
        value = relevance if step < keep_top else gains
        best = int(np.where(open_, value, -np.inf).argmax())
        picked.append(best)
        open_[best] = False
        row = (kernel[best] - factors[:step].T @ factors[:step, best]) / np.sqrt(max(gains[best], 1e-300))
        factors[step] = row
        gains = np.maximum(gains - row ** 2, 0.0)
    return np.asarray(picked)


def set_search(relevance: np.ndarray, sims: np.ndarray, beta: float, k: int, discount: np.ndarray) -> np.ndarray:
    """Local search over k-subsets of the pool for sum(discount x sorted relevance) + beta x ILD."""
    pool = relevance.shape[0]
    chosen = np.arange(k)
    pairs = k * (k - 1)

    def objective(sets: np.ndarray) -> np.ndarray:  # sets: (m, k) pool positions
        ordered = np.sort(sets, axis=1)  # pool order is relevance order
        gain = relevance[ordered] @ discount
        block = sims[sets[:, :, None], sets[:, None, :]]
        ild = 1.0 - (block.sum(axis=(1, 2)) - np.trace(block, axis1=1, axis2=2)) / pairs
        return gain + beta * ild

    current = objective(chosen[None, :])[0]
    while True:
        outside = np.setdiff1d(np.arange(pool), chosen)
        trials = np.repeat(chosen[None, :], k * outside.shape[0], axis=0)
        trials[np.arange(trials.shape[0]), np.tile(np.arange(k), outside.shape[0])] = np.repeat(outside, k)
        values = objective(trials)
        best = int(values.argmax())
        if values[best] <= current + 1e-12:
            return np.sort(chosen)
        chosen, current = trials[best], values[best]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--config", type=Path, default=REPO / "server" / "configs" / "movielens-100k.yaml")
    parser.add_argument("--pool", type=int, default=50)
    parser.add_argument("--lambdas", type=float, nargs="*", default=[0.5, 0.3, 0.2])
    parser.add_argument("--betas", type=float, nargs="*", default=[3.0, 5.0, 8.0])
    parser.add_argument("--deep-pools", type=int, nargs="*", default=[100, 200], help="MMR over deeper pools")
    parser.add_argument("--alphas", type=float, nargs="*", default=[1.0, 2.0], help="DPP quality sharpness")
    args = parser.parse_args()

    from hybridrec.server import evaluation as ev
    from hybridrec.server import metrics, splits
    from hybridrec.server.config import load_training_config
    from hybridrec.v1 import recommender_pb2 as pb

    k = 10
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    config = load_training_config(args.config)
    with tempfile.TemporaryDirectory(prefix="hybridrec-mmr-") as tmp:
        workdir = Path(tmp)
        _, events_csv, items_csv = ev.prepare_dataset(args.data, workdir)
        table = ev.EventTable.read(events_csv)
        test = ev.split_mask(table, "random", 0.25, 42)
        with ev.trained(table, ~test, items_csv, config, args.config, workdir, "main") as service:
            model = service.state.model
            users, relevant = ev.relevant_indices(service, splits.held_out_items(table.users, table.items, test))
            served = ev.recommend_all(service, "hybrid_mmr", users, k)
            stage = ev.mmr_stage(service.state.config.pipelines["hybrid_mmr"])
            keep_top = stage.params.keep_top
            pools, scores = [], []
            depth = max([args.pool, *args.deep_pools])
            service.state.config.max_k = max(service.state.config.max_k, depth)  # offline: deeper than served
            for user in users:
                result, _, _ = service.recommend(pb.RecommendRequest(user_id=user, k=depth, pipeline="hybrid"))
                pools.append(result.candidates.items[result.ranked])
                scores.append(result.candidates.final[result.ranked].astype(np.float64))
            history = np.diff(model.history_indptr)[[model.user_index[u] for u in users]]
            unit = unit_rows(model.item_content)

    def lists(pick, pool: int = args.pool) -> np.ndarray:
        out = np.full((len(users), k), -1, dtype=np.int64)
        for row, (items, score) in enumerate(zip(pools, scores)):
            items, score = items[:pool], score[:pool]
            span = score.max() - score.min()
            relevance = (score - score.min()) / span if span > 0 else np.ones_like(score)
            vectors = unit[items]
            positions = pick(row, relevance, vectors @ vectors.T)
            out[row, : positions.shape[0]] = items[positions]
        return out

    def measure(recs: np.ndarray) -> tuple[float, float]:
        found = metrics.ranking_metrics(recs, relevant, (k,))
        return found[f"ndcg@{k}"], metrics.intra_list_diversity(recs, model.item_content, k)

    rows = [("no re-ranking", measure(lists(lambda row, rel, sims: np.arange(k)))),
            (f"served (hybrid_mmr, lambda {stage.params.lambda_weight}, keep_top {keep_top})", measure(served))]
    for lam in args.lambdas:
        rows.append((f"mmr lambda={lam}", measure(lists(lambda row, rel, sims: greedy_mmr(rel, sims, lam, keep_top, k)))))
    for beta in args.betas:
        print(f"set search beta={beta} ...", file=sys.stderr, flush=True)
        rows.append((f"set search beta={beta}", measure(lists(lambda row, rel, sims: set_search(rel, sims, beta, k, discount)))))
    # lambda from 0.1 (history <= 20 ratings) to 0.5 (>= 160), linear in log history
    by_history = 0.1 + 0.4 * np.clip(np.log(np.maximum(history, 1) / 20) / np.log(8), 0, 1)
    rows.append(("mmr by history (lambda 0.1 -> 0.5)",
                 measure(lists(lambda row, rel, sims: greedy_mmr(rel, sims, float(by_history[row]), keep_top, k)))))
    for pool in args.deep_pools:
        for lam in args.lambdas:
            rows.append((f"mmr lambda={lam} pool={pool}",
                         measure(lists(lambda row, rel, sims: greedy_mmr(rel, sims, lam, keep_top, k), pool))))
    for alpha in args.alphas:
        rows.append((f"dpp alpha={alpha}", measure(lists(lambda row, rel, sims: dpp_greedy(rel, sims, alpha, keep_top, k)))))
    base_ndcg, base_ild = rows[0][1]
    print(f"{'re-ranking':<52} {'ndcg@10':>8} {'change':>8} {'ild@10':>7} {'change':>8}")
    for name, (ndcg, ild) in rows:
        print(f"{name:<52} {ndcg:8.4f} {100 * (ndcg / base_ndcg - 1):+7.1f}% {ild:7.3f} {100 * (ild / base_ild - 1):+7.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
