"""`hybridrec tune`: coordinate search of a few hyperparameters on a validation split carved
from the training side of the evaluation protocol, so the test side is never looked at."""
from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from . import metrics, splits
from .config import build_dataclass, load_yaml, TrainingConfig
from .errors import DataError
from .evaluation import EventTable, check_pipelines, mmr_stage, prepare_dataset, recommend_all, relevant_indices, trained

log = logging.getLogger("hybridrec")

SEARCH_COMPONENTS = (8, 16, 24, 32, 64)
SEARCH_EASE_LAMBDA = (200.0, 350.0, 500.0, 750.0, 1000.0)
SEARCH_DLAE_DROPOUT = (0.5, 0.6, 0.7, 0.8)
SEARCH_SESSION_SECONDS = (None, 60.0, 300.0, 900.0, 3600.0)
SEARCH_SESSION_WEIGHT = (1.0, 2.0, 3.0, 5.0)
# the scorer's popularity prior: (prior_weight, prior_items); (0, 8) is no prior
SEARCH_PRIOR = ((0.0, 8.0), (0.2, 8.0), (0.2, 32.0), (0.4, 8.0), (0.4, 32.0), (0.6, 8.0), (0.6, 32.0), (1.0, 8.0))
MMR_LAMBDAS = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3)
MMR_MAX_NDCG_LOSS = 0.04  # the most diverse lambda that keeps ndcg@10 within 4% of no MMR
MIN_GAIN = 0.0025  # a change must beat the incumbent by this relative margin: less is noise
FOLDS = 2  # validation folds averaged per trial


def weight_grid(sources: Sequence[str]) -> list[dict[str, float]]:
    """Blends of the weighted sources in steps of 0.1 (all combinations summing to 1)."""
    steps = [i / 10 for i in range(11)]
    grid: list[dict[str, float]] = [{}]
    for source in sources:
        grid = [dict(g, **{source: w}) for g in grid for w in steps if sum(g.values()) + w <= 1.0 + 1e-9]
    return [g for g in grid if abs(sum(g.values()) - 1.0) < 1e-9]


def event_weight_variants(weights: dict[str, float], present: set[str]) -> list[dict[str, float]]:
    """The configured weights, and versions with light events stronger or weaker (x0.5, x2)."""
    variants = [dict(weights)]
    if len(present & set(weights)) < 2:
        return variants
    strongest = max(weights.values())
    for factor in (0.5, 2.0):
        variants.append({k: (v if v == strongest else round(min(v * factor, strongest), 4)) for k, v in weights.items()})
    return variants


def tune(data: str | Path, base_config: str | Path, out_path: str | Path, pipeline: str = "hybrid",
         mmr_pipeline: str | None = None, test_ratio: float = 0.25, seed: int = 42,
         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Search, write the tuned config to `out_path`, and return what was chosen and measured."""
    say = progress or (lambda m: log.info("%s", m))
    started = time.perf_counter()
    base_config = Path(base_config)
    raw = load_yaml(base_config)
    config = build_dataclass(TrainingConfig, raw.get("training"), f"{base_config}: training")
    check_pipelines(base_config, [pipeline] + ([mmr_pipeline] if mmr_pipeline else []))  # before any training
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hybridrec-tune-") as tmp:
        workdir = Path(tmp)
        _, events_csv, items_csv = prepare_dataset(data, workdir)
        table = EventTable.read(events_csv)
        protocol_test = splits.random_holdout(table.users, table.items, test_ratio, seed)
        # validation carved from the protocol's training rows only
        train_rows = np.nonzero(~protocol_test)[0]
        sub = EventTable(table.header, [table.rows[i] for i in train_rows], table.users[train_rows],
                         table.items[train_rows], table.timestamps[train_rows])
        folds = [splits.random_holdout(sub.users, sub.items, test_ratio, seed + 1 + f) for f in range(FOLDS)]
        helds = [splits.held_out_items(sub.users, sub.items, valid) for valid in folds]
        say(f"validation: {FOLDS} folds of {int(folds[0].sum())} rows carved from the {len(sub.rows)} training rows "
            f"(the protocol's {int(protocol_test.sum())} test rows are not used)")

        def measure(cfg: TrainingConfig, weights: dict[str, float] | None, label: str) -> float:
            scores = []
            for fold, (valid, held) in enumerate(zip(folds, helds)):
                with trained(sub, ~valid, items_csv, cfg, base_config, workdir, f"tune-{fold}") as service:
                    pipe = service.state.config.pipelines.get(pipeline)
                    if pipe is None:
                        raise DataError(f"pipeline {pipeline!r} is not in {base_config}")
                    if weights is not None:
                        pipe.scorer.params.weights = weights
                    users, relevant = relevant_indices(service, held)
                    recs = recommend_all(service, pipeline, users, 10)
                    scores.append(metrics.ranking_metrics(recs, relevant, (10,))["ndcg@10"])
            ndcg = float(np.mean(scores))
            trials.append({"trial": label, "ndcg@10": round(ndcg, 5)})
            say(f"  {label:<48} validation ndcg@10 {ndcg:.4f}")
            return ndcg

        best = measure(config, None, "base config")
        present_types = set(np.unique([r.get("event_type", "") for r in sub.rows]).tolist())
        dense_item_item = config.item_item.method in ("ease", "dlae")
        searches: list[tuple[str, list[Any], Callable[[TrainingConfig, Any], None]]] = [
            ("events.weights", event_weight_variants(config.events.weights, present_types),
             lambda c, v: setattr(c.events, "weights", v)),
            ("collaborative.components", list(SEARCH_COMPONENTS),
             lambda c, v: setattr(c.collaborative, "components", v)),
            ("item_item.ease_lambda",
             list(SEARCH_EASE_LAMBDA) if config.item_item.method in ("ease", "dlae", "auto") else [],
             lambda c, v: setattr(c.item_item, "ease_lambda", v)),
            ("item_item.dlae_dropout", list(SEARCH_DLAE_DROPOUT) if config.item_item.method == "dlae" else [],
             lambda c, v: setattr(c.item_item, "dlae_dropout", v)),
            ("item_item.session_seconds", list(SEARCH_SESSION_SECONDS) if dense_item_item else [],
             lambda c, v: setattr(c.item_item, "session_seconds", v)),
            ("item_item.session_weight", list(SEARCH_SESSION_WEIGHT) if dense_item_item else [],
             lambda c, v: setattr(c.item_item, "session_weight", v)),
        ]
        for name, values, apply in searches:
            for value in values:
                candidate = copy.deepcopy(config)
                apply(candidate, value)
                if candidate == config:
                    continue
                score = measure(candidate, None, f"{name} = {value}")
                if score > best * (1 + MIN_GAIN):
                    best, config = score, candidate
        # blend weights need no retraining: one model, many scorers
        weights, prior, chosen_lambda = None, None, None
        with contextlib.ExitStack() as stack:
            services = [stack.enter_context(trained(sub, ~valid, items_csv, config, base_config, workdir,
                                                    f"tune-weights-{f}")) for f, valid in enumerate(folds)]
            lists = [relevant_indices(service, held) for service, held in zip(services, helds)]
            pipes = [service.state.config.pipelines[pipeline] for service in services]
            sources = [s.name for s in pipes[0].sources if s.name != pipes[0].scorer.params.fallback]
            configured = dict(pipes[0].scorer.params.weights)
            for grid_weights in weight_grid(sources):
                scores = []
                for service, pipe, (users, relevant) in zip(services, pipes, lists):
                    pipe.scorer.params.weights = grid_weights
                    recs = recommend_all(service, pipeline, users, 10)
                    scores.append(metrics.ranking_metrics(recs, relevant, (10,))["ndcg@10"])
                score = float(np.mean(scores))
                trials.append({"trial": f"weights {grid_weights}", "ndcg@10": round(score, 5)})
                if score > best * (1 + MIN_GAIN):
                    best, weights = score, grid_weights
            say(f"  best blend {weights or 'unchanged'}: validation ndcg@10 {best:.4f}")
            for pipe in pipes:  # the grid left its last blend in place
                pipe.scorer.params.weights = weights or configured
            prior = _tune_prior(services, pipes, lists, pipeline, best, trials, say)
            if prior is not None:
                best = prior[2]
                prior = prior[:2]
            service, (users, relevant) = services[0], lists[0]
            mmr_pipeline = mmr_pipeline or next(
                (p for p, obj in service.state.config.pipelines.items() if mmr_stage(obj) is not None), None)
            if mmr_pipeline:
                chosen_lambda = _tune_mmr(service, mmr_pipeline, weights, users, relevant, trials, say, prior)
    tuned = _apply(raw, config, pipeline, mmr_pipeline, weights, chosen_lambda, prior)
    header = (f"# Tuned by `hybridrec tune` from {base_config.name} on {Path(data).name}: validation "
              f"ndcg@10 {best:.4f} ({len(trials)} trials, seed {seed}).\n")
    Path(out_path).write_text(header + yaml.safe_dump(tuned, sort_keys=False, default_flow_style=None, width=110))
    return {"validation_ndcg@10": best, "training": config.to_dict(), "weights": weights,
            "prior": prior, "mmr_lambda": chosen_lambda, "trials": trials, "seconds": round(time.perf_counter() - started, 1)}


def _tune_prior(services, pipes, lists, pipeline: str, best: float, trials: list,
                say) -> tuple[float, float, float] | None:
    """The scorer's popularity prior (prior_weight, prior_items) with its validation ndcg@10, when
    one beats the incumbent (the config's own prior, at the chosen blend) by MIN_GAIN; else None."""
    params = pipes[0].scorer.params
    if not hasattr(params, "prior_weight"):
        return None
    incumbent = (params.prior_weight, params.prior_items)
    chosen = None
    for weight, items in SEARCH_PRIOR:
        if (weight, items) == incumbent or (weight == 0 and incumbent[0] == 0):
            continue
        scores = []
        for service, pipe, (users, relevant) in zip(services, pipes, lists):
            pipe.scorer.params.prior_weight, pipe.scorer.params.prior_items = weight, items
            recs = recommend_all(service, pipeline, users, 10)
            scores.append(metrics.ranking_metrics(recs, relevant, (10,))["ndcg@10"])
        score = float(np.mean(scores))
        trials.append({"trial": f"prior {weight} x exp(-n / {items:g})", "ndcg@10": round(score, 5)})
        say(f"  {trials[-1]['trial']:<48} validation ndcg@10 {score:.4f}")
        if score > best * (1 + MIN_GAIN):
            best, chosen = score, (weight, items, score)
    for pipe in pipes:  # what later steps (MMR) run with
        pipe.scorer.params.prior_weight, pipe.scorer.params.prior_items = chosen[:2] if chosen else incumbent
    say(f"  popularity prior {chosen[:2] if chosen else 'unchanged'}: validation ndcg@10 {best:.4f}")
    return chosen


def _tune_mmr(service, name: str, weights, users, relevant, trials: list, say,
              prior: tuple[float, float] | None = None) -> float | None:
    pipe = service.state.config.pipelines[name]
    stage = mmr_stage(pipe)
    if weights is not None:
        pipe.scorer.params.weights = weights
    if prior is not None and hasattr(pipe.scorer.params, "prior_weight"):
        pipe.scorer.params.prior_weight, pipe.scorer.params.prior_items = prior
    stage.params.lambda_weight = 1.0
    base = metrics.ranking_metrics(recommend_all(service, name, users, 10), relevant, (10,))["ndcg@10"]
    chosen = 1.0
    for lam in MMR_LAMBDAS:
        stage.params.lambda_weight = lam
        recs = recommend_all(service, name, users, 10)
        ndcg = metrics.ranking_metrics(recs, relevant, (10,))["ndcg@10"]
        ild = metrics.intra_list_diversity(recs, service.state.model.item_content, 10)
        trials.append({"trial": f"mmr lambda {lam}", "ndcg@10": round(ndcg, 5), "ild@10": round(ild, 5)})
        if ndcg >= (1 - MMR_MAX_NDCG_LOSS) * base:
            chosen = lam
    say(f"  MMR lambda {chosen}: the most diverse within {MMR_MAX_NDCG_LOSS:.0%} of no-MMR ndcg@10")
    return chosen


def _apply(raw: dict, config: TrainingConfig, pipeline: str, mmr_pipeline: str | None,
           weights: dict | None, lam: float | None, prior: tuple[float, float] | None = None) -> dict:
    tuned = copy.deepcopy(raw)
    tuned["training"] = config.to_dict()
    for name in {pipeline, mmr_pipeline} - {None}:
        spec = tuned.get("pipelines", {}).get(name)
        if not isinstance(spec, dict):
            continue
        scorer = spec.get("scorer")
        if weights is not None and isinstance(scorer, dict):
            scorer.setdefault("params", {})["weights"] = dict(weights)
        if prior is not None and isinstance(scorer, dict):
            scorer.setdefault("params", {}).update(prior_weight=prior[0], prior_items=prior[1])
        for entry in spec.get("rerankers") or []:
            if lam is not None and isinstance(entry, dict) and entry.get("plugin") == "mmr":
                entry.setdefault("params", {})["lambda_weight"] = lam
    return tuned
