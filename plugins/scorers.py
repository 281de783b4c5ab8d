"""Built-in scorer: per-source scores normalised, then blended with weights from YAML."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hybridrec.server.hookspecs import hookimpl
from hybridrec.server.stages import Candidates, RequestContext, Scorer

NORMALISERS = ("minmax", "zscore", "rank", "none")


def normalise(column: np.ndarray, how: str) -> np.ndarray:
    """Scale one source's scores over the request's candidates; unscored (NaN) items get 0."""
    return _normalise(column, how)[0]


def _normalise(column: np.ndarray, how: str) -> tuple[np.ndarray, bool]:
    """`normalise`, and whether the column scored any item."""
    if column.shape[0] == 0:  # every candidate filtered out (e.g. the request excluded them all)
        return np.zeros(0, dtype=np.float32), False
    values = column.astype(np.float64)
    if not math.isnan(values.sum()):  # the usual case once missing scores are filled: no mask
        valid = None
    else:
        valid = ~np.isnan(column)
        if not valid.any():
            return np.zeros(column.shape[0], dtype=np.float32), False
        values = values[valid]
    if how == "minmax":
        low = values.min()
        span = values.max() - low
        scaled = (values - low) / span if span > 0 else np.ones_like(values)
    elif how == "zscore":
        std = values.std()
        # shifted so unscored items (0) rank below every scored one
        scaled = (values - values.mean()) / std if std > 0 else np.zeros_like(values)
        scaled = scaled - scaled.min() + 1.0
    elif how == "rank":
        order = np.argsort(np.argsort(values, kind="stable"), kind="stable")
        scaled = (order + 1) / values.shape[0]
    else:
        scaled = values
    if valid is None:
        return scaled.astype(np.float32), True
    out = np.zeros(column.shape[0], dtype=np.float32)
    out[valid] = scaled
    return out, True


class WeightedHybrid(Scorer):
    """final = sum_s w_s * norm(score_s) / sum of the weights of the sources present.

    A source is missing for a request when it could not run (CF for a new user, content
    with no seeds); its weight is dropped and the others are renormalised. When no weighted
    source is present, the `fallback` source (popularity) ranks alone.

    With `prior_weight` > 0 the fallback source is also a prior that fades as the request
    brings evidence: it takes the share prior_weight * exp(-n / prior_items) of the blend,
    where n counts the user's history items and the request's context items. A new user with
    five context items is then ranked partly by popularity, and a user with a long history
    by the personal sources alone. With `prior_power` p the share is
    prior_weight * exp(-(n / prior_items) ** p): p = 2 keeps popularity strong for the first few
    items and drops it faster after them than p = 1.
    """

    plugin_name = "weighted_hybrid"

    @dataclass
    class Params:
        weights: dict = field(default_factory=lambda: {"cf": 0.6, "content": 0.4})
        normalise: str = "minmax"
        fallback: str = "popularity"
        prior_weight: float = 0.0  # the fallback's share of the blend for a request without evidence
        prior_items: float = 8.0  # evidence scale: the share shrinks by e for every prior_items items
        prior_power: float = 1.0  # the fade's shape: exp(-(n / prior_items) ** prior_power)

    def validate(self) -> None:
        if self.params.normalise not in NORMALISERS:
            raise ValueError(f"normalise {self.params.normalise!r} is not one of: {', '.join(NORMALISERS)}")
        for source, weight in self.params.weights.items():
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not 0 <= weight < math.inf:
                raise ValueError(f"weights.{source} must be a finite number >= 0, got {weight!r}")
        if not any(w > 0 for w in self.params.weights.values()):
            raise ValueError("weights: at least one weight must be > 0")
        if not 0.0 <= self.params.prior_weight <= 1.0:
            raise ValueError(f"prior_weight must be between 0 and 1, got {self.params.prior_weight!r}")
        if not self.params.prior_items > 0:
            raise ValueError(f"prior_items must be > 0, got {self.params.prior_items!r}")
        if not 0 < self.params.prior_power <= 8:
            raise ValueError(f"prior_power must be > 0 and <= 8, got {self.params.prior_power!r}")

    def check_pipeline(self, pipeline) -> None:
        names = [s.name for s in pipeline.sources]
        for source in [*self.params.weights, self.params.fallback]:
            if source not in names:
                raise ValueError(f"names source {source!r}, which is not a candidates stage of this "
                                 f"pipeline; valid choices: {', '.join(names)}")

    def score(self, ctx: RequestContext, candidates: Candidates) -> None:
        how = self.params.normalise
        normalised, scored = {}, set()
        for name, col in candidates.scores.items():
            normalised[name], any_scored = _normalise(col, how)
            if any_scored:
                scored.add(name)
        candidates.normalised = normalised
        present = {name: float(w) for name, w in self.params.weights.items() if w > 0 and name in scored}
        fallback = self.params.fallback
        if fallback in candidates.normalised:
            share = self.prior_share(ctx) if present else 1.0
            if share >= 1.0:
                present = {fallback: 1.0}
            elif share > 0.0:  # the fallback's weight makes it `share` of the new total
                present[fallback] = present.get(fallback, 0.0) + share / (1.0 - share) * sum(present.values())
        total = sum(present.values()) or 1.0
        final = np.zeros(len(candidates), dtype=np.float32)
        for name, weight in present.items():
            contribution = (weight / total) * candidates.normalised[name]
            candidates.contributions[name] = contribution
            final += contribution
        candidates.final = final
        candidates.stage_scores[self.name] = final

    def prior_share(self, ctx: RequestContext) -> float:
        """The fallback source's share of the blend for this request (0 without a prior)."""
        if self.params.prior_weight <= 0.0:
            return 0.0
        evidence = ctx.history()[0].shape[0] + ctx.context_items.shape[0]
        return self.params.prior_weight * math.exp(-((evidence / self.params.prior_items) ** self.params.prior_power))


@hookimpl
def hybridrec_register_stages() -> list[type]:
    return [WeightedHybrid]
