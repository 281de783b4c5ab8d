"""Built-in candidate sources: FAISS over SVD factors, FAISS over content embeddings, popularity."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybridrec.server.hookspecs import hookimpl
from hybridrec.server.indexes import OVERFETCH_MAX_EXCLUDED, faiss_search  # noqa: F401 (re-exported)
from hybridrec.server.stages import CandidateSource, RequestContext, SourceResult, in_sorted, sorted_unique

EVENT_VERBS = {
    "booking": "booked",
    "start_booking": "started booking",
    "click": "clicked",
    "view": "viewed",
    "rating": "rated",
    "message": "asked about",
    "search": "searched for",
}


def user_cf_vector(ctx: RequestContext, context_weight: float) -> np.ndarray | None:
    """The user's SVD vector, plus the folded-in factors of the request's context items.

    Folding in (u = x V) is exact for training users, so session items and, later, live
    events move the vector without retraining. None when there is nothing to go on.
    """
    def compute() -> np.ndarray | None:
        model = ctx.model
        vector = model.user_factors[ctx.user].astype(np.float32) if ctx.known_user else None
        if ctx.context_items.shape[0] and context_weight > 0:
            folded = context_weight * model.item_factors[ctx.context_items].sum(axis=0)
            vector = folded if vector is None else vector + folded
        if vector is None or not np.any(vector):
            return None
        return np.asarray(vector, dtype=np.float32)

    return ctx.cached(f"cf_vector:{context_weight}", compute)


class FaissCF(CandidateSource):
    """Nearest items to the user's collaborative (SVD) vector by inner product.

    When the bundle stores each training user's best items (`collaborative.user_candidates`),
    a request of a known user without context items, whose exclusions are exactly the user's
    history, reads its first `n` from there: the same items and scores the index search finds,
    without the search (for Flat and IVF indexes; an HNSW search widens with k, so there the
    first n of the stored N can be better than a search for n). Other requests (context items, `exclude_item_ids`, new users, `n` above
    the stored width) search the index, as does `lookup: index`.
    """

    plugin_name = "faiss_cf"

    @dataclass
    class Params:
        n: int = 200  # candidates to return
        context_weight: float = 1.0  # weight of each context item when folded into the vector
        lookup: str = "auto"  # auto: the bundle's stored per-user candidates where they apply; index: search

    def validate(self) -> None:
        if self.params.n < 1:
            raise ValueError("n must be >= 1")
        if self.params.context_weight < 0:
            raise ValueError("context_weight must be >= 0")
        if self.params.lookup not in ("auto", "index"):
            raise ValueError("lookup must be one of: auto, index")

    def stored(self, ctx: RequestContext) -> SourceResult | None:
        """The user's stored candidates, or None when the request needs a search."""
        table = ctx.model.cf_user_items
        if (table is None or self.params.lookup != "auto" or ctx.user < 0 or ctx.context_items.shape[0]
                or self.params.n > table.shape[1]):
            return None
        row = table[ctx.user, : self.params.n]
        if row[0] < 0:  # no CF vector, or nothing left to find: the search path decides
            return None
        excluded, seen = ctx.excluded(), ctx.history()[0]
        if excluded.shape[0] != seen.shape[0]:
            return None  # the stored rows exclude the history, and only the history
        same = (excluded.tobytes() == seen.tobytes() if excluded.dtype == seen.dtype  # a 20th of array_equal's cost
                else np.array_equal(excluded, seen))
        if not same:
            return None
        if row[-1] < 0:
            row = row[row >= 0]
        return SourceResult(row.astype(np.int64), ctx.model.cf_user_scores[ctx.user, : row.shape[0]],
                            excluded_applied=True)

    def generate(self, ctx: RequestContext) -> SourceResult | None:
        found = self.stored(ctx)
        if found is not None:
            return found
        vector = user_cf_vector(ctx, self.params.context_weight)
        if vector is None:
            return None
        scores, labels = faiss_search(ctx.model.cf_index, vector, self.params.n, ctx.excluded())
        found, found_scores = labels[0], scores[0]
        if found.shape[0] and found.min() < 0:  # -1 pads a catalogue smaller than n
            keep = found >= 0
            found, found_scores = found[keep], found_scores[keep]
        return SourceResult(found.astype(np.int64, copy=False), found_scores, excluded_applied=True)

    def score(self, ctx: RequestContext, items: np.ndarray) -> np.ndarray | None:
        vector = user_cf_vector(ctx, self.params.context_weight)
        if vector is None:
            return None
        return ctx.model.item_factors[items] @ vector

    def reason(self, ctx: RequestContext, item: int, anchor: int) -> str:
        if ctx.model.popularity[item] == 0 and ctx.model.manifest.get("cf_from_content"):
            # no events: its factors were predicted from its content (`collaborative.cold_items`)
            return "new here, and its description matches the tastes of people like you"
        return "liked by people whose tastes match yours"


class FaissContent(CandidateSource):
    """Content neighbours of the user's most recent and strongest items and of context items.

    A candidate's score is its best cosine similarity to a seed, scaled by how strong that
    seed is (0.5 to 1.0), or with `aggregate: mean` its strength-weighted mean similarity to
    all seeds (a taste profile); its anchor is the most similar seed, which the explanation names.

    When the bundle stores each item's content neighbours (`training.content.neighbours`),
    the candidates are the seeds' stored neighbours, found by lookup, and the FAISS index is
    not searched at request time (`lookup: index` searches it anyway). Either way they are
    scored against every seed as above.
    """

    plugin_name = "faiss_content"

    @dataclass
    class Params:
        n: int = 200
        seeds: int = 10  # history items used as seeds
        recency_half_life_days: float = 30.0  # a seed's strength halves with this age
        context_weight: float = 2.0  # strength of a context item relative to the strongest history item
        aggregate: str = "max"  # max: best seed similarity; mean: strength-weighted mean over seeds
        lookup: str = "auto"  # auto: the bundle's stored neighbours if it has them, else search; index: search

    def validate(self) -> None:
        p = self.params
        if p.aggregate not in ("max", "mean"):
            raise ValueError("aggregate must be one of: max, mean")
        if p.lookup not in ("auto", "index"):
            raise ValueError("lookup must be one of: auto, index")
        if p.n < 1 or p.seeds < 0:
            raise ValueError("n must be >= 1 and seeds >= 0")
        if p.recency_half_life_days <= 0:
            raise ValueError("recency_half_life_days must be > 0")
        if p.context_weight < 0:
            raise ValueError("context_weight must be >= 0")

    def seeds(self, ctx: RequestContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seed items, relative strengths in (0, 1], whether each came from context)."""
        return self._profile(ctx)[:3]

    def _profile(self, ctx: RequestContext) -> tuple[np.ndarray, ...]:
        """The seeds (as `seeds`), then what scoring needs of them: their content vectors
        transposed, the per-seed factor of `max` and the per-seed weight of `mean`."""
        def compute() -> tuple[np.ndarray, ...]:
            items, weights, stamps, _ = ctx.history()
            p = self.params
            if items.shape[0]:  # strength halves every half-life before the user's latest event
                strength = weights * np.exp2((stamps - stamps.max()) * (1.0 / (86400.0 * p.recency_half_life_days)))
                top = (-strength).argsort(kind="stable")[: p.seeds]
                seed_items, seed_strength = items[top].astype(np.int64), strength[top].astype(np.float32)
            else:
                seed_items, seed_strength = np.zeros(0, np.int64), np.zeros(0, np.float32)
            ctx_items = ctx.context_items
            from_context = np.zeros(ctx_items.shape[0] + seed_items.shape[0], bool)
            if ctx_items.shape[0]:
                base = float(seed_strength.max()) if seed_strength.shape[0] else 1.0
                seed_items = np.concatenate([ctx_items, seed_items])
                seed_strength = np.concatenate([np.full(ctx_items.shape[0], p.context_weight * base, np.float32),
                                                seed_strength])
                from_context[: ctx_items.shape[0]] = True
            vectors = ctx.model.item_content[seed_items]
            # items without content (zero vectors) cannot seed content neighbours
            has_content = vectors.any(axis=1)
            if not has_content.all():
                seed_items, seed_strength = seed_items[has_content], seed_strength[has_content]
                from_context, vectors = from_context[has_content], vectors[has_content]
            if seed_strength.shape[0]:
                seed_strength = seed_strength / max(float(seed_strength.max()), 1e-12)
            factor = 0.5 + 0.5 * seed_strength
            mean_weights = (seed_strength / max(float(seed_strength.sum()), 1e-12)
                            if p.aggregate == "mean" else None)
            return seed_items, seed_strength, from_context, vectors.T, factor, mean_weights

        return ctx.cached(f"content_seeds:{self.name}", compute)

    def generate(self, ctx: RequestContext) -> SourceResult | None:
        seeds = self._profile(ctx)[0]
        if seeds.shape[0] == 0:
            return None
        table = ctx.model.content_neighbours if self.params.lookup == "auto" else None
        if table is not None:
            found = sorted_unique(table[seeds])
            if found.shape[0] and found[0] < 0:  # -1 pads rows of catalogues smaller than the table
                found = found[found >= 0]
            excluded = ctx.excluded()
            if excluded.shape[0] and found.shape[0]:
                found = found[~in_sorted(found, excluded)]
            found = found.astype(np.int64, copy=False)
            scores, anchors = self._score(ctx, found)
            if found.shape[0] > self.params.n:  # the stored neighbours of every seed: keep the n best
                best = (-scores).argpartition(self.params.n - 1)[: self.params.n]
                found, scores, anchors = found[best], scores[best], anchors[best]
            return SourceResult(found, scores, anchors, excluded_applied=True)
        per_seed = -(-self.params.n // seeds.shape[0])
        _, labels = faiss_search(ctx.model.content_index, ctx.model.item_content[seeds], per_seed, ctx.excluded())
        found = sorted_unique(labels[labels >= 0]).astype(np.int64, copy=False)
        scores, anchors = self._score(ctx, found)
        return SourceResult(found, scores, anchors, excluded_applied=True)

    def _score(self, ctx: RequestContext, items: np.ndarray,
               anchors: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores of `items`, and their anchors (the first best seed) unless `anchors` is False."""
        seeds, _, _, seed_vectors_t, factor, mean_weights = self._profile(ctx)
        sims = ctx.model.item_content[items] @ seed_vectors_t
        mean = self.params.aggregate == "mean"
        if mean and not anchors:
            return (sims @ mean_weights).astype(np.float32, copy=False), None
        # one row per seed, so the reductions run along rows of candidates rather than over a
        # handful of seeds per candidate (a few times faster)
        weighted = np.multiply(sims.T, factor[:, None], order="C")
        strongest = weighted.max(axis=0)
        scores = (sims @ mean_weights if mean else strongest).astype(np.float32, copy=False)
        if not anchors:
            return scores, None
        return scores, seeds[(weighted == strongest).argmax(axis=0)]

    def score(self, ctx: RequestContext, items: np.ndarray) -> np.ndarray | None:
        if self._profile(ctx)[0].shape[0] == 0:
            return None
        return self._score(ctx, items, anchors=False)[0]

    def reason(self, ctx: RequestContext, item: int, anchor: int) -> str:
        if anchor < 0:
            return "similar to items you liked"
        title = str(ctx.model.item_titles[anchor])
        if anchor in set(ctx.context_items.tolist()):
            return f"similar to {title}, which you are looking at"
        items, _, _, events = ctx.history()
        where = np.nonzero(items == anchor)[0]
        verb = "interacted with"
        if where.shape[0]:
            code = int(events[where[0]])
            types = ctx.model.event_types
            verb = EVENT_VERBS.get(types[code], "interacted with") if code < len(types) else verb
        return f"similar to {title}, which you {verb}"


class ItemItem(CandidateSource):
    """Item-item model (EASE or cosine kNN, trained into the bundle): a candidate's score is
    the weighted sum of its item-item weights from the user's items and context items."""

    plugin_name = "item_item"

    @dataclass
    class Params:
        n: int = 200
        context_weight: float = 1.0  # history weight given to each context item

    def validate(self) -> None:
        if self.params.n < 1:
            raise ValueError("n must be >= 1")
        if self.params.context_weight < 0:
            raise ValueError("context_weight must be >= 0")

    def basket(self, ctx: RequestContext) -> tuple[np.ndarray, np.ndarray]:
        """The items the scores start from, with their weights."""
        items, weights, _, _ = ctx.history()
        if ctx.context_items.shape[0] and self.params.context_weight > 0:
            items = np.concatenate([items, ctx.context_items]).astype(np.int64)
            weights = np.concatenate([weights, np.full(ctx.context_items.shape[0], self.params.context_weight,
                                                       dtype=np.float32)])
        return items, weights

    def scores(self, ctx: RequestContext) -> np.ndarray | None:
        """Scores of the whole catalogue for this request (cached), or None with nothing to go on."""
        def compute() -> np.ndarray | None:
            items, weights = self.basket(ctx)
            if items.shape[0] == 0 or ctx.model.item_item.nnz == 0:
                return None
            rows = ctx.model.item_item[items]
            return np.asarray(rows.T @ weights, dtype=np.float32).ravel()

        return ctx.cached(f"item_item:{self.name}", compute)

    def generate(self, ctx: RequestContext) -> SourceResult | None:
        scores = self.scores(ctx)
        if scores is None:
            return None
        masked = scores.copy()
        masked[ctx.excluded()] = -np.inf
        n = min(self.params.n, masked.shape[0])
        top = np.argpartition(-masked, n - 1)[:n]
        top = top[np.isfinite(masked[top])]
        return SourceResult(top.astype(np.int64), scores[top], excluded_applied=True)

    def score(self, ctx: RequestContext, items: np.ndarray) -> np.ndarray | None:
        scores = self.scores(ctx)
        return None if scores is None else scores[items]

    def reason(self, ctx: RequestContext, item: int, anchor: int) -> str:
        items, weights = self.basket(ctx)
        if items.shape[0] == 0:
            return "often chosen together with items you liked"
        column = np.asarray(ctx.model.item_item[items][:, item].todense()).ravel() * weights
        best = int(items[int(np.argmax(column))])
        return f"often chosen by people who also chose {ctx.model.item_titles[best]}"


class Popularity(CandidateSource):
    """The most popular items (weighted, decayed by age): cold start and fill-up."""

    plugin_name = "popularity"

    @dataclass
    class Params:
        n: int = 100

    def validate(self) -> None:
        if self.params.n < 1:
            raise ValueError("n must be >= 1")

    def generate(self, ctx: RequestContext) -> SourceResult:
        excluded = ctx.excluded()
        top = ctx.model.popular_order[: self.params.n + excluded.shape[0]]
        if excluded.shape[0]:
            top = top[~in_sorted(top, excluded)][: self.params.n]
        return SourceResult(top, ctx.model.popularity[top].astype(np.float32), excluded_applied=True)

    def score(self, ctx: RequestContext, items: np.ndarray) -> np.ndarray:
        return ctx.model.popularity[items].astype(np.float32)

    def reason(self, ctx: RequestContext, item: int, anchor: int) -> str:
        return "popular right now"


@hookimpl
def hybridrec_register_stages() -> list[type]:
    return [FaissCF, FaissContent, ItemItem, Popularity]
