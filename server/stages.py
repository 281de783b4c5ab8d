"""The data that flows through a pipeline, and the base classes of its stages.

Candidates travel as columns: one int64 array of item indices plus one float32 score
array per source (NaN where that source has not judged the item), so per-request work
is vectorised numpy over candidates.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .bundle import Model


@dataclass
class RequestContext:
    """Everything a stage may read about one request. Stages must not mutate it."""

    model: Model
    user_id: str
    user: int  # row in the model, -1 when unknown
    k: int
    context_items: np.ndarray  # int64 item indices from the request
    exclude_items: np.ndarray  # int64 item indices the caller excluded
    explain: bool = False
    deadline: float | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def known_user(self) -> bool:
        return self.user >= 0

    def history(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(items, weights, last timestamps, strongest event codes); empty for unknown users."""
        if "history" not in self._cache:
            if self.user >= 0:
                self._cache["history"] = self.model.history(self.user)
            else:
                empty = np.zeros(0, dtype=np.int64)
                self._cache["history"] = (empty, empty.astype(np.float32), empty, empty.astype(np.int16))
        return self._cache["history"]

    def excluded(self) -> np.ndarray:
        """Items the pipeline's filters will certainly remove (sorted int64), so candidate
        sources can skip them inside the index search instead of over-fetching."""
        return self._cache.get("excluded", np.zeros(0, dtype=np.int64))

    def release(self) -> None:
        """Drop the values stages memoised (some are whole-catalogue score arrays), keeping the
        history: for a context held after its candidates were gathered (offline tuning)."""
        history = self._cache.get("history")
        self._cache.clear()
        if history is not None:
            self._cache["history"] = history

    def cached(self, key: str, compute: Any) -> Any:
        """Memoise a per-request value shared between stages (e.g. the user's CF vector)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


@dataclass
class SourceResult:
    """What a candidate source returns: items, their scores and optional anchors."""

    items: np.ndarray  # int64
    scores: np.ndarray  # float32, higher is better
    anchors: np.ndarray | None = None  # int64 item that led to each candidate, -1 for none
    # True when no item is in ctx.excluded(): filters whose `keep` drops exactly their
    # `excluded` items then skip their pass over the candidates
    excluded_applied: bool = False


def in_sorted(items: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which of `items` occur in `values`, an ascending array: `np.isin` by binary search,
    without its set-up cost (tens of microseconds on the few hundred items of a request)."""
    if values.shape[0] == 0 or items.shape[0] == 0:
        return np.zeros(items.shape[0], dtype=bool)
    pos = values.searchsorted(items)
    np.minimum(pos, values.shape[0] - 1, out=pos)
    return values[pos] == items


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """`np.unique` of a 1-d array, by one sort: a quarter of its cost on a request's few
    hundred items (numpy 2's `unique` hashes first, which pays off only on large arrays)."""
    ordered = values.flatten()  # a copy, sorted in place (the method skips np.sort's wrapper)
    ordered.sort()
    if ordered.shape[0] < 2:
        return ordered
    first = np.empty(ordered.shape[0], dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


@dataclass
class Candidates:
    """The candidate set of one request, as aligned columns."""

    items: np.ndarray
    scores: dict[str, np.ndarray]
    anchors: dict[str, np.ndarray] = field(default_factory=dict)
    stage_scores: dict[str, np.ndarray] = field(default_factory=dict)
    normalised: dict[str, np.ndarray] = field(default_factory=dict)
    contributions: dict[str, np.ndarray] = field(default_factory=dict)
    final: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def fresh(self) -> "Candidates":
        """The same gathered candidates (items, source scores, anchors: shared, not copied), with
        nothing a scorer or re-ranker writes: for ranking one gathered set more than once."""
        return Candidates(items=self.items, scores=self.scores, anchors=self.anchors)

    def select(self, keep: np.ndarray) -> "Candidates":
        """A new candidate set restricted to `keep` (a boolean mask or index array)."""
        return Candidates(
            items=self.items[keep],
            scores={k: v[keep] for k, v in self.scores.items()},
            anchors={k: v[keep] for k, v in self.anchors.items()},
            stage_scores={k: v[keep] for k, v in self.stage_scores.items()},
            normalised={k: v[keep] for k, v in self.normalised.items()},
            contributions={k: v[keep] for k, v in self.contributions.items()},
            final=None if self.final is None else self.final[keep],
        )

    @classmethod
    def merge(cls, results: dict[str, SourceResult]) -> "Candidates":
        """Union of several sources; an item found by two sources carries both scores."""
        if not results:
            return cls(items=np.zeros(0, dtype=np.int64), scores={})
        found = np.concatenate([r.items for r in results.values()]).astype(np.int64, copy=False)
        order = found.argsort(kind="stable")
        ordered = found[order]
        first = np.empty(ordered.shape[0], dtype=bool)
        first[:1] = True
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        union = ordered[first]  # sorted distinct items; inverse: each found item's place in it
        inverse = np.empty(ordered.shape[0], dtype=np.int64)
        inverse[order] = np.cumsum(first) - 1
        scores: dict[str, np.ndarray] = {}
        anchors: dict[str, np.ndarray] = {}
        offset = 0
        for name, result in results.items():
            n = result.items.shape[0]
            pos = inverse[offset:offset + n]
            offset += n
            column = np.empty(union.shape[0], dtype=np.float32)
            column.fill(np.nan)
            column[pos] = result.scores
            scores[name] = column
            if result.anchors is not None:
                anchor = np.empty(union.shape[0], dtype=np.int64)
                anchor.fill(-1)
                anchor[pos] = result.anchors
                anchors[name] = anchor
        return cls(items=union, scores=scores, anchors=anchors)


class Stage:
    """Base of every stage. Subclasses set `plugin_name`, `kind` and a `Params` dataclass."""

    plugin_name: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    @dataclass
    class Params:
        pass

    def __init__(self, name: str, params: Any) -> None:
        self.name = name
        self.params = params

    def validate(self) -> None:
        """Check parameter values; raise ValueError with a message naming the parameter."""

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)


class CandidateSource(Stage):
    """Finds candidate items. `generate` returns None when it cannot serve this request
    (e.g. CF for an unknown user): the scorer then treats the source as missing."""

    kind = "candidates"

    def generate(self, ctx: RequestContext) -> SourceResult | None:
        raise NotImplementedError

    def score(self, ctx: RequestContext, items: np.ndarray) -> np.ndarray | None:
        """Scores of arbitrary items (to complete candidates other sources found), or None."""
        return None

    def reason(self, ctx: RequestContext, item: int, anchor: int) -> str:
        """A short reason for recommending `item` when this source contributed most."""
        return f"found by {self.name}"


class Filter(Stage):
    """Removes candidates: returns a boolean mask of those to keep."""

    kind = "filter"
    # True when `keep` drops exactly the items `excluded` returns, no more: the pipeline then
    # skips `keep` when every source says it left ctx.excluded() out already
    keep_is_excluded: ClassVar[bool] = False

    def keep(self, ctx: RequestContext, candidates: Candidates) -> np.ndarray:
        raise NotImplementedError

    def excluded(self, ctx: RequestContext) -> np.ndarray | None:
        """Optional: item indices this filter will drop whatever the candidates, so sources
        can skip them during search. None when the filter cannot say in advance."""
        return None


class Scorer(Stage):
    """Combines the per-source columns into `candidates.final` (higher is better)."""

    kind = "scorer"

    def score(self, ctx: RequestContext, candidates: Candidates) -> None:
        raise NotImplementedError


class Reranker(Stage):
    """Reorders the ranked candidates: takes and returns an array of positions into candidates."""

    kind = "reranker"

    def rerank(self, ctx: RequestContext, candidates: Candidates, ranked: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def window(self, k: int) -> int:
        """How many top-ranked candidates this re-ranker wants to see to choose k."""
        return k


STAGE_KINDS: dict[str, type[Stage]] = {
    "candidates": CandidateSource,
    "filter": Filter,
    "scorer": Scorer,
    "reranker": Reranker,
}
