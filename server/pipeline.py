"""Pipelines built from YAML by plugin name, and how one request runs through them."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import build_dataclass, load_yaml
from .errors import ConfigError
from .overload import OverloadSection
from .plugin_manager import Plugins
from .stages import (Candidates, CandidateSource, Filter, RequestContext, Reranker, Scorer, SourceResult, Stage,
                     sorted_unique)

log = logging.getLogger("hybridrec")

MAX_PRECOMPUTED_K = 1000  # a stored table holds this many items per user at most
MAX_K = 2**31 - 1  # the largest k a request can carry, and the largest max_k ModelInfo can report
SECTIONS = {"candidates": "candidates", "filters": "filter", "scorer": "scorer", "rerankers": "reranker"}


@dataclass
class PipelineResult:
    """The outcome of one request: candidates, the chosen positions in rank order, failures."""

    candidates: Candidates
    ranked: np.ndarray
    degraded: list[str]
    sources: dict[str, CandidateSource]


@dataclass
class Pipeline:
    """candidate sources -> filters -> scorer -> re-rankers."""

    name: str
    sources: list[CandidateSource]
    filters: list[Filter]
    scorer: Scorer
    rerankers: list[Reranker]
    fill_missing_scores: bool = True

    def stages(self) -> list[Stage]:
        return [*self.sources, *self.filters, self.scorer, *self.rerankers]

    def run(self, ctx: RequestContext) -> PipelineResult:
        candidates, degraded = self.gather(ctx)
        return self.rank(ctx, candidates, degraded)

    def gather(self, ctx: RequestContext) -> tuple[Candidates, list[str]]:
        """Candidates from the sources, filtered, with every source's scores filled in; and the
        stages that failed. Depends on the sources' and filters' params only, so offline tuning
        gathers once and calls `rank` on `Candidates.fresh()` copies for each scorer setting."""
        degraded: list[str] = []
        results: dict[str, SourceResult] = {}
        available: list[CandidateSource] = []
        pushed = [e for e in (f.excluded(ctx) for f in self.filters) if e is not None and e.shape[0]]
        if pushed:
            ctx._cache["excluded"] = sorted_unique(np.concatenate(pushed).astype(np.int64, copy=False))
        for source in self.sources:
            try:
                result = source.generate(ctx)
            except Exception:  # a failing source must not fail the request
                log.exception("pipeline %s: candidate source %s failed; continuing without it", self.name, source.name)
                degraded.append(source.name)
                continue
            if result is None:
                continue
            available.append(source)
            results[source.name] = result
        candidates = Candidates.merge(results)
        applied = all(r.excluded_applied for r in results.values())
        for f in self.filters:
            if applied and f.keep_is_excluded:  # every source left this filter's items out already
                continue
            keep = np.asarray(f.keep(ctx, candidates), dtype=bool)
            if not keep.all():  # sources usually skipped these already (ctx.excluded())
                candidates = candidates.select(keep)
        if self.fill_missing_scores and len(candidates):
            self._fill(ctx, candidates, available, degraded)
        return candidates, degraded

    def rank(self, ctx: RequestContext, candidates: Candidates, degraded: list[str]) -> PipelineResult:
        """Score the gathered candidates and re-rank them: the result of the request."""
        try:
            self.scorer.score(ctx, candidates)
            if candidates.final is None or candidates.final.shape != candidates.items.shape:
                raise ValueError("scorer did not set one final score per candidate")
        except Exception:
            log.exception("pipeline %s: scorer %s failed; ranking by popularity", self.name, self.scorer.name)
            degraded.append(self.scorer.name)
            candidates.final = ctx.model.popularity[candidates.items].astype(np.float32)
        window = max([ctx.k] + [r.window(ctx.k) for r in self.rerankers])
        ranked = top_positions(candidates.final, window)
        for reranker in self.rerankers:
            try:
                ranked = np.asarray(reranker.rerank(ctx, candidates, ranked), dtype=np.int64)
            except Exception:
                log.exception("pipeline %s: re-ranker %s failed; keeping the previous order", self.name, reranker.name)
                degraded.append(reranker.name)
        return PipelineResult(candidates, ranked[: ctx.k], degraded, {s.name: s for s in self.sources})

    def _fill(self, ctx: RequestContext, candidates: Candidates, available: list[CandidateSource],
              degraded: list[str]) -> None:
        """Ask each available source to score the candidates other sources found."""
        for source in available:
            column = candidates.scores.get(source.name)
            if column is None:
                column = np.empty(len(candidates), dtype=np.float32)
                column.fill(np.nan)
                candidates.scores[source.name] = column
            missing = np.isnan(column)
            if not missing.any():
                continue
            try:
                filled = source.score(ctx, candidates.items[missing])
            except Exception:
                log.exception("pipeline %s: %s could not score candidates; leaving them unscored", self.name, source.name)
                degraded.append(f"{source.name}.score")
                continue
            if filled is not None:
                column[missing] = filled


def top_positions(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n highest scores, best first; ties broken by position (deterministic)."""
    total = scores.shape[0]
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    negated = -scores  # ascending order of the negated scores is best first
    if math.isnan(negated.sum()):  # NaN (unscored) ranks last
        negated[np.isnan(negated)] = np.inf
    if n < total:
        part = negated.argpartition(n - 1)[:n]
        part.sort()
        return part[negated[part].argsort(kind="stable")].astype(np.int64, copy=False)
    return negated.argsort(kind="stable").astype(np.int64, copy=False)


@dataclass
class ServingConfig:
    """The `server:` and `pipelines:` sections, with every pipeline built."""

    pipelines: dict[str, Pipeline]
    default_pipeline: str
    max_k: int = 100
    path: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    overload: OverloadSection = field(default_factory=OverloadSection)
    precomputed: dict[str, list[int]] = field(default_factory=dict)  # pipeline -> the k values stored


@dataclass
class ServerSection:
    max_k: int = 100
    default_pipeline: str | None = None
    overload: OverloadSection = field(default_factory=OverloadSection)
    precomputed: dict[str, Any] = field(default_factory=dict)


def check_precomputed(where: str, value: dict[Any, Any], pipelines: dict[str, Any], max_k: int) -> dict[str, list[int]]:
    """`server.precomputed`: pipeline name -> a list of k values, each in 1..max_k."""
    checked: dict[str, list[int]] = {}
    for name, ks in value.items():
        if name not in pipelines:
            raise ConfigError(f"{where}: {shown_key(name)} is not a pipeline; valid: {', '.join(pipelines)}")
        if isinstance(ks, int) and not isinstance(ks, bool):
            ks = [ks]
        if not isinstance(ks, list) or not ks or not all(isinstance(k, int) and not isinstance(k, bool) for k in ks):
            raise ConfigError(f"{where}.{name}: expected a list of k values (e.g. [10]), got {ks!r}")
        bad = [k for k in ks if not 1 <= k <= min(max_k, MAX_PRECOMPUTED_K)]
        if bad:
            raise ConfigError(f"{where}.{name}: k must be between 1 and {min(max_k, MAX_PRECOMPUTED_K)} "
                              f"(server.max_k, and at most {MAX_PRECOMPUTED_K} stored per user); got {bad[0]}")
        checked[name] = sorted(set(ks))
    return checked


def shown_key(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 100 else text[:100] + "..."


def _stage_entries(value: Any, where: str, single: bool) -> list[dict[str, Any]]:
    if value is None:
        return []
    if single:
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of stages")
    return value


def build_stage(plugins: Plugins, kind: str, entry: Any, where: str, pipeline: str) -> Stage:
    """Build one stage from its YAML entry: `{plugin: NAME, name: ..., params: {...}}`."""
    if isinstance(entry, str):
        entry = {"plugin": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("plugin"), str):
        raise ConfigError(f"{where}: each stage needs a `plugin:` name; valid choices for {kind}: "
                          f"{', '.join(plugins.choices(kind))}")
    extra = sorted(set(entry) - {"plugin", "name", "params"}, key=str)
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} in stage (valid: plugin, name, params)")
    plugin = entry["plugin"]
    cls = plugins.stage_class(kind, plugin)
    if cls is None:
        raise ConfigError(
            f"{where}: unknown {kind} plugin {plugin!r}; valid choices: {', '.join(plugins.choices(kind)) or 'none'}"
        )
    name = str(entry.get("name") or plugin)
    params_where = f"{where} (plugin {plugin!r}) params"
    params = build_dataclass(cls.Params, entry.get("params"), params_where)
    stage = cls(name, params)
    try:
        stage.validate()
    except ValueError as exc:
        raise ConfigError(f"{params_where}: {exc}") from None
    return stage


def build_pipeline(plugins: Plugins, name: str, spec: Any, source: str) -> Pipeline:
    where = f"{source}: pipeline {name!r}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with candidates, filters, scorer, rerankers")
    unknown = sorted(set(spec) - set(SECTIONS) - {"fill_missing_scores"}, key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown section {unknown[0]!r}; valid: "
                          f"{', '.join(sorted(SECTIONS))}, fill_missing_scores")
    built: dict[str, list[Stage]] = {}
    for section, kind in SECTIONS.items():
        entries = _stage_entries(spec.get(section), f"{where}, {section}", single=(section == "scorer"))
        built[section] = [
            build_stage(plugins, kind, entry, f"{where}, {section} stage {i + 1}"
                        + (f" ({entry.get('name') or entry.get('plugin')!r})" if isinstance(entry, dict) else ""),
                        name)
            for i, entry in enumerate(entries)
        ]
    if not built["candidates"]:
        raise ConfigError(f"{where}: needs at least one candidates stage; valid choices: "
                          f"{', '.join(plugins.choices('candidates'))}")
    if not built["scorer"]:
        raise ConfigError(f"{where}: needs a scorer; valid choices: {', '.join(plugins.choices('scorer'))}")
    names = [s.name for s in built["candidates"] + built["filters"] + built["scorer"] + built["rerankers"]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: two stages are named {dup[0]!r}; give one a distinct `name:`")
    fill = spec.get("fill_missing_scores", True)
    if not isinstance(fill, bool):
        raise ConfigError(f"{where}: fill_missing_scores must be true or false")
    pipeline = Pipeline(name, built["candidates"], built["filters"], built["scorer"][0], built["rerankers"], fill)
    for stage in pipeline.stages():
        check = getattr(stage, "check_pipeline", None)
        if check is not None:
            try:
                check(pipeline)
            except ValueError as exc:
                raise ConfigError(f"{where}, stage {stage.name!r} (plugin {stage.plugin_name!r}): {exc}") from None
    return pipeline


def load_serving_config(path: str | Path, plugins: Plugins) -> ServingConfig:
    """Build every pipeline of a config file; errors name file, pipeline, stage and choices."""
    data = load_yaml(path)
    server = build_dataclass(ServerSection, data.get("server"), f"{path}: server")
    if not 1 <= server.max_k <= MAX_K:
        raise ConfigError(f"{path}: server.max_k must be between 1 and {MAX_K} (k is an int32 field)")
    specs = data.get("pipelines")
    if not isinstance(specs, dict) or not specs:
        raise ConfigError(f"{path}: needs a `pipelines:` mapping with at least one pipeline")
    pipelines = {str(name): build_pipeline(plugins, str(name), spec, str(path)) for name, spec in specs.items()}
    default = server.default_pipeline or next(iter(pipelines))
    if default not in pipelines:
        raise ConfigError(f"{path}: server.default_pipeline {default!r} is not one of: {', '.join(pipelines)}")
    server.overload.validate(f"{path}: server.overload", pipelines)
    precomputed = check_precomputed(f"{path}: server.precomputed", server.precomputed, pipelines, server.max_k)
    plugins.pipelines_built(dict(pipelines))
    return ServingConfig(pipelines, default, server.max_k, str(path), data, server.overload, precomputed)
