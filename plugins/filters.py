"""Built-in filters: drop what the user has seen, and what the caller excluded."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybridrec.server.hookspecs import hookimpl
from hybridrec.server.stages import Candidates, Filter, RequestContext, in_sorted


class ExcludeSeen(Filter):
    """Removes items in the user's training history (and, by default, the context items)."""

    plugin_name = "exclude_seen"
    keep_is_excluded = True

    @dataclass
    class Params:
        include_context: bool = True  # also drop the request's context items

    def excluded(self, ctx: RequestContext) -> np.ndarray:
        seen = ctx.history()[0]
        if self.params.include_context and ctx.context_items.shape[0]:
            seen = np.concatenate([seen, ctx.context_items])
        return seen

    def keep(self, ctx: RequestContext, candidates: Candidates) -> np.ndarray:
        excluded = self.excluded(ctx).copy()
        excluded.sort()
        return ~in_sorted(candidates.items, excluded)


class ExcludeRequested(Filter):
    """Removes the items the request lists in `exclude_item_ids`."""

    plugin_name = "exclude_requested"
    keep_is_excluded = True

    @dataclass
    class Params:
        pass

    def excluded(self, ctx: RequestContext) -> np.ndarray:
        return ctx.exclude_items

    def keep(self, ctx: RequestContext, candidates: Candidates) -> np.ndarray:
        excluded = ctx.exclude_items.copy()
        excluded.sort()
        return ~in_sorted(candidates.items, excluded)


@hookimpl
def hybridrec_register_stages() -> list[type]:
    return [ExcludeSeen, ExcludeRequested]
