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
- `mmr swap lambda=L`: the MMR stage's `search: swap`: greedy MMR's picks at L (the served
  `keep_top`), then the set search from them, weighing relevance and ILD by L and 1 - L;
- `mmr by history`: greedy MMR whose lambda grows with the user's history length (users with few
  ratings diversified more: on this split their lists gain the most ILD per NDCG lost);
- `mmr pool=P`: the same greedy MMR over deeper pools (`--deep-pools 100 200`): do more relevant
  diverse items exist further down?
- `dpp alpha=A`: greedy MAP inference of a determinantal point process with kernel
  L = diag(q) S diag(q), q = exp(A x relevance), S the content cosine similarities (the
  incremental-Cholesky greedy of Chen, Zhang and Zhou, NeurIPS 2018), the first `keep_top`
  picks by relevance as in the served MMR;
- `xquad over history items`: xQuAD (Santos et al., 2010) whose aspects are the user's own rated
  items: P(item | aspect h) is h's item-item weight to the item (its share of the item-item
  score), an aspect's weight its share of the history, so the list covers the parts of the
  history the top items leave out;
- `set search on P(hit | rank)`: the set search above with each pool position's relevance
  replaced by the hit rate of that rank read off the test split itself. It reads test labels,
  so it is an upper bound for any relevance calibrated by rank, not a usable re-ranker.
- `mmr lambda=L + gamma x history similarity`: greedy MMR whose relevance adds gamma x the
  pool's z-scored content similarity to the user's history (mean of each item's 10 nearest
  history items): within a user that similarity predicts hits beyond rank (printed below), so it
  asks whether MMR can spend its diversity on items that are far from the top but near the history;
- for scale, `mmr lambda=0`: the most diverse list greedy MMR finds in the pool (relevance
  ignored after the first `keep_top`), and `10 random catalogue items`;
- for scale, `the user's own test items` (reads test): ten of each user's held-out items, at
  random or the most varied ten (diversity-only swap search among them). Both are perfectly
  accurate lists; how varied are they? Users with fewer than ten test items list them all;
- `mmr lambda per ... (reads test)`: greedy MMR with a lambda chosen for each group of users
  from a grid (1.0 to 0.0), the groups' lambdas together giving the most ILD@10 for at most 5%
  less NDCG@10 (a Lagrangian over the groups' per-user NDCG and ILD, read off the test split).
  The groups are deciles of history length; 64 cells of history length x the top 10's ILD x
  how steeply the pool's scores fall; deciles of the history's own ILD (how varied the user's
  rated items are); 64 cells of that x history length; and each user alone. The last reads every user's test
  items, so it bounds any rule that sets lambda per user, however it is predicted.

It also prints the hit rate of pool items by rank and by their mean content similarity to the
top 4 (how redundant they are), pooled over users and within users: pooled, the less redundant
items are hits more often at the same rank, but within a user they are not (the pooled gap comes
from which users have diverse pools). Then a within-user least-squares fit of hit on log rank,
redundancy and history similarity at pool ranks 11-40 (each user's mean removed).

Last, it asks whether a more accurate model would trade better: the pool's relevance is lifted by
`--peeks` eps for every test item (reading the test split), which raises NDCG@10 a lot, and greedy
MMR on that relevance is compared with the same lifted list without MMR.

`--pipeline` re-ranks another pipeline's pools (`item_item`, `cf`): is the frontier a property of
the hybrid, or of any model of these ratings?

`--space category` measures every similarity and ILD over the items' category sets (MovieLens
genres) instead of content vectors, as `evaluate`'s category_ild@10 and MMR's `similarity:
category` do; `--served hybrid_mmr_genres` then shows the config's genre-diversified pipeline.

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
K = 10  # the lists compared: top 10, NDCG@10 and ILD@10


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
    """Local search over k-subsets of the pool for sum(discount x sorted relevance) + beta x ILD,
    from the top k: the MMR stage's `search: swap` at the lambda that weighs the two terms so."""
    from hybridrec.plugins.rerankers import swap_search

    return swap_search(relevance, sims, np.arange(k), 0, discount.sum() / (discount.sum() + beta))


def xquad_history(relevance: np.ndarray, aspects: tuple[np.ndarray, np.ndarray], lam: float, keep_top: int,
                  k: int) -> np.ndarray:
    """xQuAD with the user's history items as aspects: each step adds the item maximising
    (1 - lam) x relevance + lam x sum_h w_h P(item | h) prod_{picked} (1 - P(picked | h))."""
    coverage, weights = aspects
    uncovered = np.ones(weights.shape[0])
    is_open = np.ones(relevance.shape[0], dtype=bool)
    picked: list[int] = []
    for step in range(min(k, relevance.shape[0])):
        value = relevance if step < keep_top else (1 - lam) * relevance + lam * ((weights * uncovered) @ coverage)
        best = int(np.where(is_open, value, -np.inf).argmax())
        picked.append(best)
        is_open[best] = False
        uncovered *= 1.0 - coverage[:, best]
    return np.asarray(picked)


def per_user(recs: np.ndarray, relevant: list[np.ndarray], unit: np.ndarray, discount: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's NDCG@k (binary relevance, ideal over min(k, relevant)) and ILD@k of `recs`."""
    k = discount.shape[0]
    ndcg, ild = np.zeros(recs.shape[0]), np.zeros(recs.shape[0])
    for row, (items, truth) in enumerate(zip(recs, relevant)):
        ndcg[row] = np.isin(items, truth) @ discount / discount[: min(k, truth.shape[0])].sum()
        vectors = unit[items]
        ild[row] = 1.0 - ((vectors @ vectors.T).sum() - np.einsum("ij,ij->", vectors, vectors)) / (k * (k - 1))
    return ndcg, ild


def allocate(ndcg: np.ndarray, ild: np.ndarray, groups: np.ndarray, budget: float) -> tuple[float, float]:
    """Mean NDCG and ILD when each group takes its own grid row (setting), the rows chosen to
    maximise mean ILD with mean NDCG >= budget x the first row's: for each multiplier mu every
    group takes the row maximising ILD + mu x NDCG, and the best feasible mu wins."""
    users = np.arange(ndcg.shape[1])
    labels, inverse = np.unique(groups, return_inverse=True)
    ndcg_sums = np.stack([np.bincount(inverse, weights=row, minlength=labels.shape[0]) for row in ndcg])
    ild_sums = np.stack([np.bincount(inverse, weights=row, minlength=labels.shape[0]) for row in ild])
    floor = budget * ndcg[0].mean()
    best = (float(ndcg[0].mean()), float(ild[0].mean()))
    for mu in np.concatenate([np.linspace(0.0, 5.0, 201), np.linspace(5.0, 100.0, 96)]):
        choice = (ild_sums + mu * ndcg_sums).argmax(axis=0)[inverse]
        found = (float(ndcg[choice, users].mean()), float(ild[choice, users].mean()))
        if found[0] >= floor and found[1] > best[1]:
            best = found
    return best


def quantile_bins(values: np.ndarray, bins: int) -> np.ndarray:
    return np.digitize(values, np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def rank_hit_rate(pools: list[np.ndarray], relevant: list[np.ndarray], pool: int) -> np.ndarray:
    """The share of users whose item at each pool rank is a test item (reads the test split)."""
    hits = np.zeros(pool)
    for items, truth in zip(pools, relevant):
        hits[: min(pool, items.shape[0])] += np.isin(items[:pool], truth)
    return hits / max(len(pools), 1)


def print_hit_rates(pools: list[np.ndarray], relevant: list[np.ndarray], unit: np.ndarray, pool: int,
                    space: str = "content") -> None:
    """Hit rate of pool ranks 5-50 by rank band and by mean similarity (in `space`) to the top 4."""
    bands = [(4, 10), (10, 20), (20, 30), (30, 40), (40, pool)]
    edges = (0.25, 0.5)
    counts = np.zeros((len(bands), len(edges) + 1, 2))
    within: list[list[float]] = [[] for _ in bands]  # per user: hit rate below 0.25 minus at or above
    for items, truth in zip(pools, relevant):
        items = items[:pool]
        vectors = unit[items]
        redundancy = (vectors @ vectors[:4].T).mean(axis=1)
        hit = np.isin(items, truth)
        group = np.searchsorted(edges, redundancy, side="right")
        for b, (lo, hi) in enumerate(bands):
            np.add.at(counts[b, :, 0], group[lo:hi], hit[lo:hi])
            np.add.at(counts[b, :, 1], group[lo:hi], 1)
            low = group[lo:hi] == 0
            if low.any() and not low.all():
                within[b].append(hit[lo:hi][low].mean() - hit[lo:hi][~low].mean())
    print(f"hit rate by pool rank and by mean {space} similarity to the top 4 (items in brackets), pooled over")
    print("users; then the same difference within users who have both kinds of item at those ranks")
    print(f"{'ranks':<8} {'< 0.25':>16} {'0.25-0.5':>16} {'>= 0.5':>16}   {'within users: < 0.25 minus >= 0.25':>36}")
    for b, (lo, hi) in enumerate(bands):
        cells = [f"{c[0] / c[1]:.3f} ({int(c[1])})" if c[1] else "-" for c in counts[b]]
        diffs = np.asarray(within[b])
        inner = (f"{diffs.mean():+.3f} +- {diffs.std() / np.sqrt(diffs.shape[0]):.3f} ({diffs.shape[0]} users)"
                 if diffs.shape[0] > 1 else "-")
        print(f"{lo + 1}-{hi:<6} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16}   {inner:>36}")


def history_similarity(items: np.ndarray, history: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """Each item's mean content similarity to its 10 most similar history items."""
    sims = unit[items] @ unit[history].T
    return np.sort(sims, axis=1)[:, -min(10, sims.shape[1]):].mean(axis=1)


def print_within_user_fit(pools: list[np.ndarray], relevant: list[np.ndarray], near: list[np.ndarray],
                          unit: np.ndarray) -> None:
    """Least squares of hit on (log rank, redundancy to the top 4, history similarity) at pool
    ranks 11-40, each variable less its user's mean: what predicts a hit within a user's pool."""
    rows, hits, owners = [], [], []
    for user, (items, truth, close) in enumerate(zip(pools, relevant, near)):
        ranks = np.arange(10, min(40, items.shape[0]))
        if ranks.shape[0] < 2:
            continue
        vectors = unit[items]
        redundancy = (vectors[ranks] @ vectors[:4].T).mean(axis=1)
        rows.append(np.column_stack([np.log(ranks + 1.0), redundancy, close[ranks]]))
        hits.append(np.isin(items[ranks], truth).astype(np.float64))
        owners.append(np.full(ranks.shape[0], user))
    x, y, g = np.vstack(rows), np.concatenate(hits), np.concatenate(owners)
    counts = np.bincount(g)
    x = x - (np.stack([np.bincount(g, weights=col) for col in x.T], axis=1) / counts[:, None])[g]
    y = y - (np.bincount(g, weights=y) / counts)[g]
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ coef
    se = np.sqrt(np.diag(residual @ residual / (y.shape[0] - x.shape[1]) * np.linalg.inv(x.T @ x)))
    print("within-user fit of hit at pool ranks 11-40 (coefficient +- standard error; sd of the variable):")
    for name, c, e, sd in zip(("log rank", "similarity to the top 4", "similarity to the history"), coef, se, x.std(axis=0)):
        print(f"  {name:<28} {c:+.4f} +- {e:.4f}   (sd {sd:.3f})")


def unit_interval(text: str) -> float:
    """argparse type: a weight between 0 and 1 (an MMR or xQuAD lambda)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def main() -> int:
    from hybridrec.server.cli import int_at_least, non_negative_float

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--config", type=Path, default=REPO / "server" / "configs" / "movielens-100k.yaml")
    # pools: at least the K items listed; --pool one more, as the set search swaps in items from beyond the top K
    parser.add_argument("--pipeline", default="hybrid", help="the pipeline whose pools are re-ranked")
    parser.add_argument("--space", choices=("content", "category"), default="content",
                        help="where similarity and ILD are measured: content vectors (as `evaluate`'s ild@10) "
                             "or the items' category sets (its category_ild@10)")
    parser.add_argument("--served", default="hybrid_mmr", help="the config's MMR pipeline shown as served")
    parser.add_argument("--pool", type=int_at_least(K + 1), default=50)
    parser.add_argument("--lambdas", type=unit_interval, nargs="*", default=[0.5, 0.3, 0.25, 0.2])
    parser.add_argument("--swap-lambdas", type=unit_interval, nargs="*", default=[0.6, 0.55, 0.5, 0.45],
                        help="lambdas of the MMR stage's `search: swap`")
    parser.add_argument("--betas", type=non_negative_float, nargs="*", default=[3.0, 5.0, 8.0])
    parser.add_argument("--deep-pools", type=int_at_least(K), nargs="*", default=[100, 200], help="MMR over deeper pools")
    parser.add_argument("--alphas", type=non_negative_float, nargs="*", default=[1.0, 2.0], help="DPP quality sharpness")
    parser.add_argument("--xquad-lambdas", type=unit_interval, nargs="*", default=[0.5, 0.9],
                        help="weight of the history-coverage term in xQuAD")
    parser.add_argument("--history-gammas", type=non_negative_float, nargs="*", default=[0.1],
                        help="weight of history similarity added to MMR's relevance")
    parser.add_argument("--peeks", type=non_negative_float, nargs="*", default=[0.1, 0.3],
                        help="relevance lift of test items, for the more-accurate-model comparison")
    parser.add_argument("--rank-betas", type=non_negative_float, nargs="*", default=[1.2, 2.0],
                        help="diversity weight of the set search on P(hit | rank)")
    args = parser.parse_args()

    from hybridrec.plugins.rerankers import swap_search
    from hybridrec.server import evaluation as ev
    from hybridrec.server import metrics, splits
    from hybridrec.server.config import load_training_config
    from hybridrec.v1 import recommender_pb2 as pb

    k = K
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    config = load_training_config(args.config)
    try:
        ev.check_pipelines(args.config, [args.pipeline, args.served])
    except Exception as exc:  # an unknown pipeline: the one-line reason, exit 2
        parser.error(str(exc))
    with tempfile.TemporaryDirectory(prefix="hybridrec-mmr-") as tmp:
        workdir = Path(tmp)
        _, events_csv, items_csv = ev.prepare_dataset(args.data, workdir)
        table = ev.EventTable.read(events_csv)
        test = ev.split_mask(table, "random", 0.25, 42)
        with ev.trained(table, ~test, items_csv, config, args.config, workdir, "main") as service:
            model = service.state.model
            users, relevant = ev.relevant_indices(service, splits.held_out_items(table.users, table.items, test))
            served = ev.recommend_all(service, args.served, users, k)
            stage = ev.mmr_stage(service.state.config.pipelines[args.served])
            keep_top = stage.params.keep_top
            pools, scores = [], []
            depth = max([args.pool, *args.deep_pools])
            service.state.config.max_k = max(service.state.config.max_k, depth)  # offline: deeper than served
            for user in users:
                result, _, _ = service.recommend(pb.RecommendRequest(user_id=user, k=depth, pipeline=args.pipeline))
                pools.append(result.candidates.items[result.ranked])
                scores.append(result.candidates.final[result.ranked].astype(np.float64))
            rows_of_users = [model.user_index[u] for u in users]
            history = np.diff(model.history_indptr)[rows_of_users]
            histories = [tuple(np.asarray(a) for a in model.history(row)[:2]) for row in rows_of_users]
            item_item = model.item_item.tocsr()
            if args.space == "category" and model.item_categories is None:
                parser.error(f"--space category: the items of {args.data} have no categories")
            # every similarity and ILD below is measured in this space
            unit = (metrics.category_unit_rows(model.item_categories) if args.space == "category"
                    else unit_rows(model.item_content))
            categories = model.item_categories

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

    def aspect_matrix(row: int) -> tuple[np.ndarray, np.ndarray]:
        """P(pool item | history item) and each history item's weight, for xQuAD."""
        items, weights = histories[row]
        weights = weights.astype(np.float64)
        block = np.maximum(item_item[items][:, pools[row][: args.pool]].toarray(), 0.0) * weights[:, None]
        return block / np.maximum(block.max(axis=1, keepdims=True), 1e-12), weights / max(weights.sum(), 1e-12)

    def measure(recs: np.ndarray) -> tuple[float, float]:
        found = metrics.ranking_metrics(recs, relevant, (k,))
        if args.space == "category":
            return found[f"ndcg@{k}"], metrics.category_diversity(recs, categories, k)
        return found[f"ndcg@{k}"], metrics.intra_list_diversity(recs, unit, k)

    rows = [(f"no re-ranking ({args.pipeline})", measure(lists(lambda row, rel, sims: np.arange(k)))),
            (f"served ({args.served}, lambda {stage.params.lambda_weight}, keep_top {keep_top})", measure(served))]
    for lam in args.lambdas:
        rows.append((f"mmr lambda={lam}", measure(lists(lambda row, rel, sims: greedy_mmr(rel, sims, lam, keep_top, k)))))
    for beta in args.betas:
        print(f"set search beta={beta} ...", file=sys.stderr, flush=True)
        rows.append((f"set search beta={beta}", measure(lists(lambda row, rel, sims: set_search(rel, sims, beta, k, discount)))))
    fixed = min(keep_top, k)
    for lam in args.swap_lambdas:
        rows.append((f"mmr swap lambda={lam}", measure(lists(lambda row, rel, sims: swap_search(
            rel, sims, greedy_mmr(rel, sims, lam, keep_top, k), fixed, lam)))))
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
    for lam in args.xquad_lambdas:
        rows.append((f"xquad over history items lambda={lam}",
                     measure(lists(lambda row, rel, sims: xquad_history(rel, aspect_matrix(row), lam, keep_top, k)))))
    near = [history_similarity(items, h[0], unit) for items, h in zip(pools, histories)]
    for gamma in args.history_gammas:
        def with_history(row: int, rel: np.ndarray, sims: np.ndarray, lam: float) -> np.ndarray:
            close = near[row][: rel.shape[0]]
            boosted = rel + gamma * (close - close.mean()) / max(float(close.std()), 1e-12)
            boosted = (boosted - boosted.min()) / max(float(np.ptp(boosted)), 1e-12)
            return greedy_mmr(boosted, sims, lam, keep_top, k)
        for lam in args.lambdas:
            rows.append((f"mmr lambda={lam} + {gamma} x history similarity",
                         measure(lists(lambda row, rel, sims: with_history(row, rel, sims, lam)))))
    # for scale: the most diverse lists the pool allows, and lists of random catalogue items
    for keep in sorted({keep_top, 0}, reverse=True):
        rows.append((f"mmr lambda=0 (diversity only), keep_top {keep}",
                     measure(lists(lambda row, rel, sims: greedy_mmr(rel, sims, 0.0, keep, k)))))
    rng = np.random.default_rng(0)
    rows.append(("10 random catalogue items",
                 measure(np.stack([rng.choice(unit.shape[0], k, replace=False) for _ in users]))))

    def own_test_items(most_varied: bool) -> np.ndarray:
        out = np.full((len(users), k), -1, dtype=np.int64)
        for row, truth in enumerate(relevant):
            truth = np.asarray(truth)
            if truth.shape[0] > k:
                vectors = unit[truth]
                sims = vectors @ vectors.T
                picked = (swap_search(np.zeros(truth.shape[0]), sims, np.argsort(sims.sum(axis=1))[:k], 0, 0.0)
                          if most_varied else rng.choice(truth.shape[0], k, replace=False))
                truth = truth[picked]
            out[row, : truth.shape[0]] = truth
        return out

    rows.append(("10 of the user's own test items at random (reads test)", measure(own_test_items(False))))
    rows.append(("the most varied 10 of the user's own test items (reads test)", measure(own_test_items(True))))
    hit_rate = rank_hit_rate(pools, relevant, args.pool)
    for beta in args.rank_betas:
        print(f"set search on P(hit | rank) beta={beta} ...", file=sys.stderr, flush=True)
        rows.append((f"set search on P(hit | rank) beta={beta} (reads test)",
                     measure(lists(lambda row, rel, sims: set_search(hit_rate[: rel.shape[0]], sims, beta, k, discount)))))
    grid = np.linspace(1.0, 0.0, 21)
    curves = [per_user(lists(lambda row, rel, sims: greedy_mmr(rel, sims, lam, keep_top if lam < 1 else 0, k)),
                       relevant, unit, discount) for lam in grid]
    ndcg_grid, ild_grid = np.stack([c[0] for c in curves]), np.stack([c[1] for c in curves])
    gap = np.asarray([(s[0] - s[min(k, s.shape[0]) - 1]) / max(s[0] - s[:args.pool].min(), 1e-12) for s in scores])
    cells = quantile_bins(history, 4) * 16 + quantile_bins(ild_grid[0], 4) * 4 + quantile_bins(gap, 4)
    # how varied the user's own history is (mean content distance between their rated items)
    history_ild = np.asarray([1.0 - ((unit[h[0]] @ unit[h[0]].T).sum() - h[0].shape[0])
                              / max(h[0].shape[0] * (h[0].shape[0] - 1), 1) for h in histories])
    for name, groups in (("history decile", quantile_bins(history, 10)),
                         ("cell of 64 (history, ILD, score fall)", cells),
                         ("history ILD decile", quantile_bins(history_ild, 10)),
                         ("cell of 64 (history ILD, length)",
                          quantile_bins(history_ild, 8) * 8 + quantile_bins(history, 8)),
                         ("user, an oracle", np.arange(len(users)))):
        rows.append((f"mmr lambda per {name} (reads test)", allocate(ndcg_grid, ild_grid, groups, 0.95)))
    base_ndcg, base_ild = rows[0][1]
    print_hit_rates(pools, relevant, unit, args.pool, args.space)
    print_within_user_fit(pools, relevant, near, unit)
    # would a more accurate model trade better? relevance lifted by eps for every test item in the
    # pool (reads test): base and MMR both use it, so each eps is compared with its own no-MMR list
    print("a more accurate model (relevance + eps for each test item, reads test); MMR against its own no-MMR list:")
    for eps in args.peeks:
        lifted = []
        for items, score, truth in zip(pools, scores, relevant):
            items, score = items[: args.pool], score[: args.pool]
            relevance = (score - score.min()) / max(float(np.ptp(score)), 1e-12) + eps * np.isin(items, truth)
            order = np.argsort(-relevance, kind="stable")  # min-max scaled again, as the MMR stage does
            lifted.append((items[order], (relevance[order] - relevance.min()) / max(float(np.ptp(relevance)), 1e-12)))
        found = []
        for lam in [1.0, *args.lambdas]:
            recs = np.stack([items[greedy_mmr(rel, unit[items] @ unit[items].T, lam, keep_top if lam < 1 else 0, k)]
                             for items, rel in lifted])
            found.append(measure(recs))
        cells = "  ".join(f"lambda {lam}: {100 * (n / found[0][0] - 1):+.1f}% / {100 * (i / found[0][1] - 1):+.1f}%"
                          for lam, (n, i) in zip(args.lambdas, found[1:]))
        print(f"  eps {eps}: ndcg@10 {found[0][0]:.4f} ild@10 {found[0][1]:.3f}; {cells}")
    print(f"{'re-ranking':<66} {'ndcg@10':>8} {'change':>8} {'ild@10':>7} {'change':>8}")
    for name, (ndcg, ild) in rows:
        print(f"{name:<66} {ndcg:8.4f} {100 * (ndcg / base_ndcg - 1):+7.1f}% {ild:7.3f} {100 * (ild / base_ild - 1):+7.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
