"""Built-in re-ranker: maximal marginal relevance over content-embedding similarity."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybridrec.server.hookspecs import hookimpl
from hybridrec.server.metrics import category_unit_rows
from hybridrec.server.stages import Candidates, RequestContext, Reranker


SIMILARITIES = ("content", "cf", "category")


class MMR(Reranker):
    """Greedy MMR: pick argmax of lambda * relevance - (1 - lambda) * max similarity to picks.

    Relevance is the scorer's final score min-max scaled over the pool; similarity is the
    cosine of content embeddings, of SVD item factors (`similarity: cf`) or of the items'
    category sets (`similarity: category`: shared categories over the geometric mean of the two
    sets' sizes; an item without categories is similar to nothing). The redundancy
    of a candidate is its largest similarity to the picks (`redundancy: max`, the classic
    MMR) or its mean similarity to them (`mean`, which trades relevance for intra-list
    diversity, itself a mean, more evenly).
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
        mmr_scores = np.empty(len(candidates), dtype=np.float32)
        mmr_scores.fill(np.nan)
        mmr_scores[pool[picked]] = picked_values
        available = np.ones(pool.shape[0], dtype=bool)
        available[picked] = False
        candidates.stage_scores[self.name] = mmr_scores
        rest = np.concatenate([pool[available], ranked[pool.shape[0]:]])
        if self.params.order == "relevance":  # same set, so the same diversity; better ranks first
            picked = np.sort(picked)  # pool positions are already in relevance order
        return np.concatenate([pool[picked], rest])


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
