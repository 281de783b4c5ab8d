"""Built-in re-ranker: maximal marginal relevance over content-embedding similarity."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybridrec.server.hookspecs import hookimpl
from hybridrec.server.metrics import category_unit_rows
from hybridrec.server.stages import Candidates, RequestContext, Reranker


SIMILARITIES = ("content", "cf", "category")
SEARCHES = ("greedy", "swap")
MAX_SWAP_ROUNDS = 50  # a bound on swap rounds; each strictly raises the objective, and few are needed


class MMR(Reranker):
    """Greedy MMR: pick argmax of lambda * relevance - (1 - lambda) * max similarity to picks.

    Relevance is the scorer's final score min-max scaled over the pool; similarity is the
    cosine of content embeddings, of SVD item factors (`similarity: cf`) or of the items'
    category sets (`similarity: category`: shared categories over the geometric mean of the two
    sets' sizes; an item without categories is similar to nothing). The redundancy
    of a candidate is its largest similarity to the picks (`redundancy: max`, the classic
    MMR) or its mean similarity to them (`mean`, which trades relevance for intra-list
    diversity, itself a mean, more evenly).

    `search: swap` then improves the greedy picks a page (`page` items) at a time, each page as a
    set: it swaps a page's item for an unlisted one while that raises lambda x (the page's
    relevance in relevance order, weighted by the DCG discount of each rank, over the sum of those
    discounts) + (1 - lambda) x the page's intra-list diversity (one minus the mean pairwise
    similarity), and lists the page in relevance order; the next page comes from the pool left.
    So the first page of a longer list is the shorter list. The lambda weighs a whole page, not
    each pick, so it means something else than greedy MMR's. The `keep_top` picks stay. An item's
    stage score is then lambda x its relevance - (1 - lambda) x its mean similarity to the rest of
    its page.
    """

    plugin_name = "mmr"

    @dataclass
    class Params:
        lambda_weight: float = 0.7  # MMR lambda: 1.0 keeps the scorer's order, lower diversifies
        pool: int = 50  # how many top candidates MMR chooses from
        similarity: str = "content"
        redundancy: str = "max"  # max or mean similarity to the items already picked
        keep_top: int = 0  # the first picks follow relevance alone; MMR fills the ranks after them
        order: str = "pick"  # pick: the list in MMR's pick order; relevance: the picked set by relevance
        search: str = "greedy"  # greedy: MMR's picks; swap: then swaps that raise each page's objective
        page: int = 10  # swap search: the items optimised together (a longer list is pages in turn)

    def validate(self) -> None:
        if not 0.0 <= self.params.lambda_weight <= 1.0:
            raise ValueError("lambda_weight must be between 0 and 1")
        if self.params.pool < 1:
            raise ValueError("pool must be >= 1")
        if self.params.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of: {', '.join(SIMILARITIES)}")
        if self.params.redundancy not in ("max", "mean"):
            raise ValueError("redundancy must be one of: max, mean")
        if self.params.keep_top < 0:
            raise ValueError("keep_top must be >= 0")
        if self.params.order not in ("pick", "relevance"):
            raise ValueError("order must be one of: pick, relevance")
        if self.params.search not in SEARCHES:
            raise ValueError(f"search must be one of: {', '.join(SEARCHES)}")
        if self.params.page < 2:
            raise ValueError("page must be >= 2")

    def window(self, k: int) -> int:
        return max(k, self.params.pool)

    def rerank(self, ctx: RequestContext, candidates: Candidates, ranked: np.ndarray) -> np.ndarray:
        pool = ranked[: self.window(ctx.k)]
        if pool.shape[0] <= 1:
            return ranked
        relevance = candidates.final[pool].astype(np.float64)
        low = relevance.min()
        span = relevance.max() - low
        relevance = (relevance - low) / span if span > 0 else np.ones_like(relevance)
        emb = _unit_vectors(ctx, candidates.items[pool], self.params.similarity)
        sims = emb @ emb.T
        lam = self.params.lambda_weight
        mean = self.params.redundancy == "mean"
        keep_top = self.params.keep_top
        chosen: list[int] = []
        picked_values: list[float] = []
        # picked items are set to -inf in both arrays, so argmax never returns them again
        open_relevance = relevance.copy() if keep_top else None  # for the keep_top picks
        scaled = lam * relevance
        value = np.empty(pool.shape[0])
        if mean:  # the sum of similarities to the picks, divided by their number when used
            redundancy = np.zeros(pool.shape[0])
        else:  # (1 - lambda) x the largest similarity to a pick: the max of the scaled rows
            penalty = sims * (1.0 - lam)
            redundancy = None
        for step in range(min(ctx.k, pool.shape[0])):
            if step < keep_top:  # relevance alone
                best = int(open_relevance.argmax())
                best_value = open_relevance.item(best)
            elif redundancy is None:  # step 0 has nothing picked yet to be redundant with
                best = int(scaled.argmax())
                best_value = scaled.item(best)
            else:
                if mean:
                    np.multiply(redundancy, (1.0 - lam) / step if step else 1.0 - lam, out=value)
                    np.subtract(scaled, value, out=value)
                else:
                    np.subtract(scaled, redundancy, out=value)
                best = int(value.argmax())
                best_value = value.item(best)
            chosen.append(best)
            picked_values.append(best_value)
            if keep_top:
                open_relevance[best] = -np.inf
            scaled[best] = -np.inf
            if mean:
                redundancy += sims[best]
            elif redundancy is None:
                redundancy = penalty[best].copy()
            else:
                np.maximum(redundancy, penalty[best], out=redundancy)
        picked = np.asarray(chosen, dtype=np.int64)
        if self.params.search == "swap" and picked.shape[0] > max(keep_top, 1):
            picked, picked_values = swap_pages(relevance, sims, picked, keep_top, lam, self.params.page)
        mmr_scores = np.empty(len(candidates), dtype=np.float32)
        mmr_scores.fill(np.nan)
        mmr_scores[pool[picked]] = picked_values
        available = np.ones(pool.shape[0], dtype=bool)
        available[picked] = False
        candidates.stage_scores[self.name] = mmr_scores
        rest = np.concatenate([pool[available], ranked[pool.shape[0]:]])
        if self.params.order == "relevance" and self.params.search == "greedy":  # same set, so the same diversity; better ranks first
            picked = np.sort(picked)  # pool positions are already in relevance order
        return np.concatenate([pool[picked], rest])


def swap_pages(relevance: np.ndarray, sims: np.ndarray, greedy: np.ndarray, keep_top: int, lam: float,
               page: int) -> tuple[np.ndarray, list[float]]:
    """The greedy picks improved by `swap_search` a page at a time: each page starts from the
    greedy picks not yet listed and swaps with the pool left. Returns the pool positions, each
    page in relevance order, and each item's stage score: lam x relevance - (1 - lam) x its mean
    similarity to the rest of its page."""
    n = relevance.shape[0]
    listed = np.zeros(n, dtype=bool)
    out: list[np.ndarray] = []
    values: list[float] = []
    start = 0
    while start < greedy.shape[0]:
        size = min(page, greedy.shape[0] - start)
        left = np.flatnonzero(~listed)
        seeds = greedy[~listed[greedy]][:size]  # greedy's order: the keep_top picks come first
        fixed = min(max(keep_top - start, 0), size)
        if size > 1:
            local = swap_search(relevance[left], sims[np.ix_(left, left)], np.searchsorted(left, seeds), fixed, lam)
            chosen = left[local]
        else:
            chosen = seeds
        block = sims[np.ix_(chosen, chosen)]
        others = (block.sum(axis=1) - np.diagonal(block)) / max(size - 1, 1)
        values.extend((lam * relevance[chosen] - (1.0 - lam) * others).tolist())
        out.append(chosen)
        listed[chosen] = True
        start += size
    return np.concatenate(out), values


def swap_search(relevance: np.ndarray, sims: np.ndarray, picked: np.ndarray, fixed: int, lam: float) -> np.ndarray:
    """Local search over sets of len(picked) pool positions, from `picked` (whose first `fixed`
    stay): each round makes the one swap of a picked position for an unpicked one that raises
    lam x DCG-weighted relevance (in pool order, over the sum of the discounts) + (1 - lam) x ILD
    most, until no swap raises it. Pool positions are in relevance order, as is the result."""
    n, k = relevance.shape[0], picked.shape[0]
    if k < 2 or n <= k:
        return np.sort(picked)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    gain_weight = lam / discount.sum()
    pairs = k * (k - 1)
    diagonal = np.diagonal(sims)
    members = np.sort(picked)
    inside = np.zeros(n, dtype=bool)
    inside[members] = True
    movable_mask = inside.copy()
    movable_mask[picked[:fixed]] = False  # the kept picks never leave

    def objective(gain: np.ndarray, pair_sum: np.ndarray) -> np.ndarray:
        return gain_weight * gain + (1.0 - lam) * (1.0 - pair_sum / pairs)

    to_set = sims[:, members].sum(axis=1)  # each pool item's summed similarity to the set
    pair_sum = float(to_set[members].sum() - diagonal[members].sum())
    current = objective(relevance[members] @ discount, np.asarray(pair_sum))
    for _ in range(MAX_SWAP_ROUNDS):
        out = np.flatnonzero(~inside)
        movable = members[movable_mask[members]]
        if movable.shape[0] == 0:
            break
        # dropping i and adding j: pair sum - 2 (to_set[i] - sim(i, i)) + 2 (to_set[j] - sim(i, j))
        new_pairs = (pair_sum - 2.0 * (to_set[movable] - diagonal[movable])[:, None]
                     + 2.0 * (to_set[out][None, :] - sims[np.ix_(movable, out)]))
        # the gain of each trial set in pool order: the members left after dropping i keep their
        # order, and j goes in at rank r, pushing the ones after it a rank down
        dropped = np.searchsorted(members, movable)
        keep = np.ones((movable.shape[0], k), dtype=bool)
        keep[np.arange(movable.shape[0]), dropped] = False
        rest = np.broadcast_to(relevance[members], (movable.shape[0], k))[keep].reshape(-1, k - 1)
        at_rank = np.zeros((movable.shape[0], k))  # sum of rest before rank r, at their own ranks
        np.cumsum(rest * discount[:-1], axis=1, out=at_rank[:, 1:])
        pushed = np.zeros((movable.shape[0], k))  # ... and a rank further down
        np.cumsum(rest * discount[1:], axis=1, out=pushed[:, 1:])
        rank = np.searchsorted(members, out)[None, :] - (movable[:, None] < out[None, :])
        gain = (np.take_along_axis(at_rank, rank, axis=1) + relevance[out][None, :] * discount[rank]
                + pushed[:, -1:] - np.take_along_axis(pushed, rank, axis=1))
        values = objective(gain, new_pairs)
        best = np.unravel_index(int(values.argmax()), values.shape)
        if values[best] <= current + 1e-12:
            break
        drop, add = int(movable[best[0]]), int(out[best[1]])
        current = values[best]
        pair_sum = float(new_pairs[best])
        to_set += sims[:, add] - sims[:, drop]
        inside[drop], inside[add] = False, True
        movable_mask[drop], movable_mask[add] = False, True
        members = np.flatnonzero(inside)
    return members


def _unit_vectors(ctx: RequestContext, items: np.ndarray, similarity: str) -> np.ndarray:
    """Rows of the content embeddings, SVD item factors or category indicators, scaled to unit
    length. A model trained without categories falls back to content embeddings."""
    if similarity == "category" and ctx.model.item_categories is not None:
        return category_unit_rows(ctx.model.item_categories[items])
    if similarity in ("content", "category"):  # stored unit length (or zero: no content) by training
        return ctx.model.item_content[items].astype(np.float64)
    emb = ctx.model.item_factors[items].astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", emb, emb))[:, None]
    norms[norms == 0] = 1.0
    return emb / norms


@hookimpl
def hybridrec_register_stages() -> list[type]:
    return [MMR]
