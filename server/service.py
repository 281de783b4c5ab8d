"""The Recommender gRPC servicer: validates requests, runs a pipeline, builds responses."""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from hybridrec.v1 import recommender_pb2 as pb
from hybridrec.v1 import recommender_pb2_grpc as pb_grpc

from .bundle import Model
from .errors import InvalidArgument, NotFound
from .overload import OVERLOAD_STAGE, OverloadGuard
from .pipeline import Pipeline, PipelineResult, ServingConfig, top_positions
from .precompute import Table
from .stages import RequestContext, Stage

log = logging.getLogger("hybridrec")

MAX_ID_LIST = 1000  # context and exclude lists longer than this are refused


@dataclass(frozen=True)
class ServingState:
    """What one request reads: a model and the pipelines. Replaced whole, never mutated."""

    model: Model
    config: ServingConfig
    precomputed: dict[tuple[str, int], Table] = field(default_factory=dict)  # (pipeline, k) -> stored answers


def item_indices(model: Model, ids: list[str], field: str) -> np.ndarray:
    """Indices of the known ids (unknown ones are ignored: they cannot be recommended anyway)."""
    if not ids:
        return np.zeros(0, dtype=np.int64)
    if len(ids) > MAX_ID_LIST:
        raise InvalidArgument(f"{field}: at most {MAX_ID_LIST} ids, got {len(ids)}")
    index = model.item_index
    return np.fromiter((index[i] for i in ids if i in index), dtype=np.int64)


def shown(value: str, limit: int = 100) -> str:
    """`value` quoted for an error message, cut to `limit` characters: a status message goes back
    in a trailer that clients refuse past 8 to 16 KB, which would hide the error behind another."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def check_k(k: int, max_k: int) -> None:
    if k < 1 or k > max_k:
        raise InvalidArgument(f"k must be between 1 and {max_k} (the server's max_k); got {k}")


class RecommenderService(pb_grpc.RecommenderServicer):
    """Implements hybridrec.v1.Recommender over a swappable ServingState."""

    def __init__(self, state: ServingState) -> None:
        self._state = state
        self._lock = threading.Lock()
        self.guard: OverloadGuard | None = None  # set by the asyncio server with `server.overload`
        self.stored_calls = 0  # Recommend calls answered from `server.precomputed` tables

    @property
    def state(self) -> ServingState:
        return self._state

    def swap(self, state: ServingState) -> None:
        """Replace model and pipelines atomically; requests in flight keep the old state."""
        with self._lock:
            self._state = state

    def recommend(self, request: pb.RecommendRequest, deadline: float | None = None) -> tuple[PipelineResult, RequestContext, str]:
        """Run a request in-process (the servicer and offline evaluation share this path)."""
        name, pipeline, ctx, fallback = self.prepare(request, deadline)
        result = pipeline.run(ctx)
        if fallback is not None:
            result.degraded.insert(0, OVERLOAD_STAGE)
        return result, ctx, name

    def prepare(self, request: pb.RecommendRequest, deadline: float | None = None
                ) -> tuple[str, Pipeline, RequestContext, str | None]:
        """Check a request and resolve it: the pipeline to run (name and object), its context,
        and the overload fallback's name when a cheaper pipeline stands in for the asked one."""
        state = self._state
        config = state.config
        check_k(request.k, config.max_k)
        name = request.pipeline or config.default_pipeline
        pipeline = config.pipelines.get(name)
        if pipeline is None:
            raise InvalidArgument(f"pipeline: unknown pipeline {shown(name)}; available: {', '.join(config.pipelines)}")
        fallback = None
        guard = self.guard
        if guard is not None and guard.level:  # saturated: a cheaper pipeline, if it has one
            fallback = config.overload.resolve(name, guard.level)
            if fallback is not None:
                guard.fallback_calls[fallback] += 1
                name, pipeline = fallback, config.pipelines[fallback]
        model = state.model
        ctx = RequestContext(
            model=model,
            user_id=request.user_id,
            user=model.user_index.get(request.user_id, -1) if request.user_id else -1,
            k=request.k,
            context_items=item_indices(model, list(request.context_item_ids), "context_item_ids"),
            exclude_items=item_indices(model, list(request.exclude_item_ids), "exclude_item_ids"),
            explain=request.explain,
            deadline=deadline,
        )
        return name, pipeline, ctx, fallback

    def log_stored_calls(self) -> None:
        """At shutdown: how many calls the stored answers served (benchmarks read this line)."""
        if self._state.precomputed:
            log.info("server.precomputed: %d Recommend calls answered from stored answers", self.stored_calls)

    def stored_answer(self, request: pb.RecommendRequest) -> pb.RecommendResponse | None:
        """The precomputed answer to `request`, or None when the pipeline must run: the request
        carries context items, exclusions or `explain`, or no table holds its pipeline, k and user."""
        state = self._state
        if not state.precomputed or request.context_item_ids or request.exclude_item_ids or request.explain:
            return None
        config = state.config
        name = request.pipeline or config.default_pipeline
        table = state.precomputed.get((name, request.k))
        if table is None:
            return None
        model = state.model
        user = model.user_index.get(request.user_id, -1) if request.user_id else -1
        row = user if user >= 0 else table.cold_row
        n = int(table.lengths[row])
        if n < 0:
            return None
        self.stored_calls += 1
        response = pb.RecommendResponse(model_version=model.version, pipeline=name, cold_start=user < 0)
        add = response.items.add
        for item_id, score in zip(model.item_ids[table.items[row, :n]].tolist(), table.scores[row, :n].tolist()):
            add(item_id=item_id, score=score)
        return response

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        if self._state.precomputed:
            check_k(request.k, self._state.config.max_k)  # a stored answer is only for a valid request
            stored = self.stored_answer(request)
            if stored is not None:
                return stored
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        result, ctx, name = self.recommend(request, deadline)
        cands = result.candidates
        ranked = result.ranked
        # whole-array lookups, then plain Python values: no numpy scalar per item
        ids = ctx.model.item_ids[cands.items[ranked]].tolist()
        scores = cands.final[ranked].tolist()
        # explanations first: a source whose reason() fails is listed among the degraded stages
        explanations = [explain(ctx, result, pos) for pos in ranked.tolist()] if request.explain else None
        response = pb.RecommendResponse(
            model_version=ctx.model.version,
            pipeline=name,
            degraded_stages=result.degraded,
            cold_start=not ctx.known_user,
        )
        add = response.items.add
        if explanations is not None:
            for explanation, item_id, score in zip(explanations, ids, scores):
                add(item_id=item_id, score=score).explanation.CopyFrom(explanation)
        else:
            for item_id, score in zip(ids, scores):
                add(item_id=item_id, score=score)
        return response

    def SimilarItems(self, request: pb.SimilarItemsRequest, context: grpc.ServicerContext) -> pb.SimilarItemsResponse:
        state = self._state
        if not request.item_id:
            raise InvalidArgument("item_id: required")
        check_k(request.k, state.config.max_k)
        model = state.model
        index = model.item_index.get(request.item_id)
        if index is None:
            raise NotFound(f"item_id: unknown item {shown(request.item_id)}")
        items, scores = similar_items(model, index, request.k)
        return pb.SimilarItemsResponse(
            items=[pb.ScoredItem(item_id=str(model.item_ids[i]), score=float(s)) for i, s in zip(items, scores)],
            model_version=model.version,
        )

    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        state = self._state
        model, config = state.model, state.config
        pipelines = []
        for name, pipeline in config.pipelines.items():
            stages = [pb.StageInfo(kind=s.kind, name=s.name, plugin=s.plugin_name, params_json=_described(s))
                      for s in pipeline.stages()]
            pipelines.append(pb.PipelineInfo(name=name, stages=stages, is_default=name == config.default_pipeline,
                                             precomputed_k=sorted(k for p, k in state.precomputed if p == name)))
        counts = model.manifest.get("counts", {})
        return pb.ModelInfo(
            model_version=model.version,
            created_at=str(model.manifest.get("created_at", "")),
            num_users=model.num_users,
            num_items=model.num_items,
            num_interactions=int(counts.get("interactions", 0)),
            pipelines=pipelines,
            default_pipeline=config.default_pipeline,
            max_k=config.max_k,
            format_version=int(model.manifest.get("format_version", 0)),
        )


def _described(stage: Stage) -> str:
    """A stage's parameters as JSON for GetModelInfo; a plugin whose `describe` fails (or returns
    what JSON cannot hold) shows an error there instead of failing the whole call."""
    try:
        return json.dumps(stage.describe(), sort_keys=True)
    except Exception:
        log.exception("stage %s (%s): describe() failed", stage.name, stage.plugin_name)
        return json.dumps({"error": "describe() failed; see the server log"})


def similar_items(model: Model, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Content neighbours of `item` (itself excluded); SVD item factors when it has no content;
    none when it has neither (no text and no events: nothing to be similar by)."""
    vector = model.item_content[item]
    if np.any(vector):
        scores, labels = model.content_index.search(vector.reshape(1, -1).astype(np.float32), min(k + 1, model.num_items))
        scores, labels = scores[0], labels[0]
    elif not np.any(model.item_factors[item]):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    else:  # cosine of SVD factors over the catalogue: one pass, and a partial sort (a full
        # argsort of a million items took 0.6 s of the worker; this takes about 75 ms)
        factors = model.item_factors
        sims = factors @ factors[item]
        sims /= np.maximum(np.sqrt(np.einsum("ij,ij->i", factors, factors)) * np.linalg.norm(factors[item]), 1e-12)
        labels = top_positions(sims, min(k + 1, sims.shape[0]))
        scores = sims[labels]
    keep = (labels >= 0) & (labels != item)
    return labels[keep][:k].astype(np.int64), scores[keep][:k]


def explain(ctx: RequestContext, result: PipelineResult, pos: int) -> pb.Explanation:
    """Per-source normalised scores, per-stage scores and a reason from the top contributor."""
    cands = result.candidates
    source_scores = {}
    columns = cands.normalised or cands.scores
    for name, column in columns.items():
        if not np.isnan(cands.scores[name][pos]):
            source_scores[name] = float(column[pos])
    stage_scores = {name: float(col[pos]) for name, col in cands.stage_scores.items() if not np.isnan(col[pos])}
    weights = cands.contributions or {n: c for n, c in columns.items()}
    reason = ""
    best = max(((float(col[pos]), name) for name, col in weights.items() if not np.isnan(col[pos])), default=None)
    if best is not None and best[1] in result.sources:
        name = best[1]
        anchor = int(cands.anchors[name][pos]) if name in cands.anchors else -1
        try:
            reason = result.sources[name].reason(ctx, int(cands.items[pos]), anchor)
        except Exception:  # an explanation is not worth failing the answer for
            stage = f"{name}.reason"
            if stage not in result.degraded:
                log.exception("candidate source %s could not explain an item; answering without its reasons", name)
                result.degraded.append(stage)
            reason = ""
    return pb.Explanation(source_scores=source_scores, stage_scores=stage_scores, reason=reason)
