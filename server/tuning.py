"""`hybridrec tune`: coordinate search of a few hyperparameters on a validation split carved
from the training side of the evaluation protocol, so the test side is never looked at."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
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
from .evaluation import (EventTable, Gathered, check_pipelines, cold_start_requests, diversity_of, mmr_stage,
                         prepare_dataset, recommend_all, relevant_indices, trained)
from .reports import prepare_output

log = logging.getLogger("hybridrec")

SEARCH_COMPONENTS = (8, 16, 24, 32, 64)
SEARCH_EASE_LAMBDA = (200.0, 350.0, 500.0, 750.0, 1000.0)
SEARCH_DLAE_DROPOUT = (0.5, 0.6, 0.7, 0.8)
SEARCH_SESSION_SECONDS = (None, 60.0, 300.0, 900.0, 3600.0)
SEARCH_SESSION_WEIGHT = (1.0, 2.0, 3.0, 5.0)
# `structure=True` also searches these, first: how ratings are damped, and which dense item-item
# model (DLAE with each dropout, or EASE) the later coordinates refine
SEARCH_TRANSFORMS = ("none", "log1p")
# ... and, after the other coordinates of their kind: the content vectors' dimensions, the scorer's
# normalisation (each with the whole blend grid) and the MMR stage's shape (redundancy, keep_top,
# search). The swap search optimises the list's mean similarity, so it starts from mean-redundancy picks.
SEARCH_CONTENT_DIMS = (16, 32, 64)
SEARCH_NORMALISE = ("zscore", "minmax", "rank")
SEARCH_MMR_SHAPES = tuple((redundancy, keep, search) for redundancy, search in
                          (("mean", "greedy"), ("max", "greedy"), ("mean", "swap")) for keep in (0, 2, 4, 6))
# the scorer's popularity prior: (prior_weight, prior_items, prior_power); (0, 8, 1) is no prior. Power 2
# keeps popularity strong for the first few items of evidence and fades it faster after them
SEARCH_PRIOR = tuple((weight, items, 1.0) for weight, items in (
    (0.0, 8.0), (0.2, 8.0), (0.2, 32.0), (0.4, 8.0), (0.4, 32.0), (0.6, 8.0), (0.6, 32.0), (0.8, 8.0),
    (1.0, 4.0), (1.0, 8.0), (1.0, 16.0))) + tuple((weight, items, 2.0) for weight, items in (
    (0.6, 12.0), (0.8, 10.0), (1.0, 8.0), (1.0, 10.0), (1.0, 12.0), (1.0, 16.0)))
COLD_USERS = 0.2  # share of the training side's users held out to validate the prior for new users
COLD_CONTEXT = 5  # their first items, given as context (as `evaluate`'s cold-start users run)
MMR_LAMBDAS = tuple(round(0.95 - 0.05 * i, 2) for i in range(18))  # 0.95 down to 0.1
MMR_MAX_NDCG_LOSS = 0.04  # default: the most diverse lambda that keeps ndcg@10 within 4% of no MMR
MMR_PATIENCE = 2  # the lambda sweep stops after this many lambdas in a row outside that bound
MIN_GAIN = 0.0025  # a change must beat the incumbent by this relative margin: less is noise
# Validation: FOLDS random holdouts of VALID_RATIO of each user's training items, averaged per trial.
# A small holdout keeps each validation model close in size to the final one (90% of its rows):
# with a 25% holdout (56% of the ratings) the search preferred fewer SVD components and less
# item-item weight, settings that lose on the full training data.
FOLDS = 4
VALID_RATIO = 0.1


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


class Journal:
    """Training trials' scores, appended to a JSON-lines file as they are measured, so that an
    interrupted `tune` started again with the same journal skips what it already trained.

    A trial's key hashes everything its score depends on: the training config, the dataset's
    files, the base config file, the protocol and validation settings, and hybridrec's own
    source code and library versions. A journal from other data, settings or code simply
    holds no matching keys. A line cut short by the interruption is ignored."""

    def __init__(self, path: Path | None, context: dict[str, Any]) -> None:
        self.path = path
        self.context = json.dumps(context, sort_keys=True, default=str)
        self.scores: dict[str, float] = {}
        if path is not None and path.exists():
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # a line cut short: the next one starts afresh
                with path.open("a", encoding="utf-8") as handle:
                    handle.write("\n")
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                    self.scores[entry["key"]] = float(entry["ndcg@10"])
                except (ValueError, KeyError, TypeError):
                    continue

    def key(self, cfg: TrainingConfig) -> str:
        text = self.context + json.dumps(cfg.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, cfg: TrainingConfig) -> float | None:
        return self.scores.get(self.key(cfg))

    def add(self, cfg: TrainingConfig, label: str, ndcg: float) -> None:
        key = self.key(cfg)
        self.scores[key] = ndcg
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "trial": label, "ndcg@10": ndcg}) + "\n")


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.name).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _code_digest() -> str:
    """hybridrec's source (server and plugins) and the versions of the libraries that score."""
    import faiss
    import scipy
    import sklearn
    root = Path(__file__).resolve().parent
    files = sorted(root.glob("*.py")) + sorted((root.parent / "plugins").glob("*.py"))
    return f"{_digest(files)} numpy {np.__version__} scipy {scipy.__version__} " \
           f"sklearn {sklearn.__version__} faiss {faiss.__version__}"


def tune(data: str | Path, base_config: str | Path, out_path: str | Path, pipeline: str = "hybrid",
         mmr_pipeline: str | None = None, test_ratio: float = 0.25, seed: int = 42,
         progress: Callable[[str], None] | None = None, valid_ratio: float = VALID_RATIO,
         folds: int = FOLDS, structure: bool = False, journal: str | Path | None = None,
         mmr_max_loss: float = MMR_MAX_NDCG_LOSS) -> dict[str, Any]:
    """Search, write the tuned config to `out_path`, and return what was chosen and measured.

    `journal`: a JSON-lines file of the training trials' scores (see `Journal`). Trials found in
    it are not trained again, so a run cut short resumes where it stopped; the blend, prior
    and MMR steps, which need no new training configs, always run.

    With `structure`, these are searched too; without it they stay as the config has them:
    the rating transform and the dense item-item method (before the other training
    coordinates), the content dimensions (after them), the scorer's normalisation (each with
    the blend grid) and the MMR stage's redundancy, keep_top and search (each with the lambda sweep).

    `mmr_max_loss`: the share of no-MMR validation ndcg@10 each MMR pipeline may give up for
    diversity; its lambda is the most diverse one within it."""
    splits.check_ratio("valid_ratio", valid_ratio)
    splits.check_ratio("mmr_max_loss", mmr_max_loss)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ValueError(f"folds must be an integer >= 1, got {folds!r}")
    say = progress or (lambda m: log.info("%s", m))
    started = time.perf_counter()
    base_config = Path(base_config)
    raw = load_yaml(base_config)
    config = build_dataclass(TrainingConfig, raw.get("training"), f"{base_config}: training")
    check_pipelines(base_config, [pipeline] + ([mmr_pipeline] if mmr_pipeline else []))  # before any training
    prepare_output(out_path, "out_path", folder=False)
    if journal is not None:
        prepare_output(journal, "journal", folder=False)
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
        valids = [splits.random_holdout(sub.users, sub.items, valid_ratio, seed + 1 + f) for f in range(folds)]
        helds = [splits.held_out_items(sub.users, sub.items, valid) for valid in valids]
        say(f"validation: {folds} folds of {int(valids[0].sum())} rows carved from the {len(sub.rows)} training rows "
            f"(the protocol's {int(protocol_test.sum())} test rows are not used)")
        journal_path = None if journal is None else Path(journal)
        book = Journal(journal_path, {
            "data": _digest([events_csv, items_csv]), "config": _digest([base_config]), "pipeline": pipeline,
            "test_ratio": test_ratio, "seed": seed, "valid_ratio": valid_ratio, "folds": folds,
            "code": _code_digest()})
        if journal_path is not None:
            found = len(book.scores)
            say(f"journal {journal_path}: " + (f"{found} trials on record (those of this run are not trained again)"
                                               if found else "new"))

        def measure(cfg: TrainingConfig, label: str) -> float:
            recorded = book.get(cfg)
            if recorded is not None:
                trials.append({"trial": label, "ndcg@10": round(recorded, 5), "journal": True})
                say(f"  {label:<48} validation ndcg@10 {recorded:.4f} (journal)")
                return recorded
            scores = []
            for fold, (valid, held) in enumerate(zip(valids, helds)):
                with trained(sub, ~valid, items_csv, cfg, base_config, workdir, f"tune-{fold}") as service:
                    pipe = service.state.config.pipelines.get(pipeline)
                    if pipe is None:
                        raise DataError(f"pipeline {pipeline!r} is not in {base_config}")
                    users, relevant = relevant_indices(service, held)
                    recs = recommend_all(service, pipeline, users, 10)
                    scores.append(metrics.ranking_metrics(recs, relevant, (10,))["ndcg@10"])
            ndcg = float(np.mean(scores))
            book.add(cfg, label, ndcg)
            trials.append({"trial": label, "ndcg@10": round(ndcg, 5)})
            say(f"  {label:<48} validation ndcg@10 {ndcg:.4f}")
            return ndcg

        best = measure(config, "base config")
        present_types = set(np.unique([r.get("event_type", "") for r in sub.rows]).tolist())

        def dense(c: TrainingConfig) -> bool:
            method = c.item_item.method
            if method == "auto":  # as training resolves it for this catalogue
                method = "ease" if len(np.unique(sub.items)) <= c.item_item.max_dense_items else "knn"
            return method in ("ease", "dlae")

        def set_method(c: TrainingConfig, value: tuple[str, float]) -> None:
            c.item_item.method, c.item_item.dlae_dropout = value

        # each coordinate: its name, its values given the config chosen so far, and how to set one
        searches: list[tuple[str, Callable[[TrainingConfig], list[Any]], Callable[[TrainingConfig, Any], None]]] = [
            ("events.weights", lambda c: event_weight_variants(c.events.weights, present_types),
             lambda c, v: setattr(c.events, "weights", v)),
        ]
        if structure:
            searches += [
                ("events.transform", lambda c: list(SEARCH_TRANSFORMS), lambda c, v: setattr(c.events, "transform", v)),
                # dropout means nothing to EASE, so the method and DLAE's dropout are one coordinate
                ("item_item.method, dlae_dropout",
                 lambda c: ([("ease", c.item_item.dlae_dropout)] + [("dlae", d) for d in SEARCH_DLAE_DROPOUT]
                            if dense(c) else []), set_method),
            ]
        searches += [
            ("collaborative.components", lambda c: list(SEARCH_COMPONENTS),
             lambda c, v: setattr(c.collaborative, "components", v)),
            ("item_item.ease_lambda",
             lambda c: list(SEARCH_EASE_LAMBDA) if dense(c) else [],
             lambda c, v: setattr(c.item_item, "ease_lambda", v)),
            ("item_item.dlae_dropout", lambda c: list(SEARCH_DLAE_DROPOUT) if c.item_item.method == "dlae" else [],
             lambda c, v: setattr(c.item_item, "dlae_dropout", v)),
            ("item_item.session_seconds", lambda c: list(SEARCH_SESSION_SECONDS) if dense(c) else [],
             lambda c, v: setattr(c.item_item, "session_seconds", v)),
            ("item_item.session_weight", lambda c: list(SEARCH_SESSION_WEIGHT) if dense(c) else [],
             lambda c, v: setattr(c.item_item, "session_weight", v)),
        ]
        if structure:
            searches.append(("content.dims", lambda c: list(SEARCH_CONTENT_DIMS),
                             lambda c, v: setattr(c.content, "dims", v)))
        # training is seeded, so a config measured once (e.g. a coordinate's old value, after another
        # value replaced it) would score the same again and could not beat the best it already lost to
        measured = [copy.deepcopy(config)]
        for name, values_of, apply in searches:
            for value in values_of(config):
                candidate = copy.deepcopy(config)
                apply(candidate, value)
                if candidate in measured:
                    continue
                measured.append(candidate)
                score = measure(candidate, f"{name} = {value}")
                if score > best * (1 + MIN_GAIN):
                    best, config = score, candidate
        # blend weights need no retraining: one model, many scorers
        weights, prior, chosen_lambda, mmr_shape = None, None, None, None
        mmr: dict[str, tuple[float | None, tuple[str, int, str] | None]] = {}  # pipeline -> (lambda, shape)
        with contextlib.ExitStack() as stack:
            services = [stack.enter_context(trained(sub, ~valid, items_csv, config, base_config, workdir,
                                                    f"tune-weights-{f}")) for f, valid in enumerate(valids)]
            lists = [relevant_indices(service, held) for service, held in zip(services, helds)]
            pipes = [service.state.config.pipelines[pipeline] for service in services]
            # from here on only scorer and re-ranker params change: candidates are gathered once
            batches = [Gathered(service, pipeline, users, 10) for service, (users, _) in zip(services, lists)]
            sources = [s.name for s in pipes[0].sources if s.name != pipes[0].scorer.params.fallback]
            configured = dict(pipes[0].scorer.params.weights)
            configured_norm = getattr(pipes[0].scorer.params, "normalise", None)
            normalisers = [configured_norm]
            if structure and configured_norm is not None:
                normalisers += [n for n in SEARCH_NORMALISE if n != configured_norm]
            chosen_norm = configured_norm
            for how in normalisers:  # the blend's weights mean something else under each normalisation
                for pipe in pipes:
                    if how is not None:
                        pipe.scorer.params.normalise = how
                grid_scores = []
                for grid_weights in weight_grid(sources):
                    scores = []
                    for batch, pipe, (_, relevant) in zip(batches, pipes, lists):
                        pipe.scorer.params.weights = grid_weights
                        recs = batch.top()
                        scores.append(metrics.ranking_metrics(recs, relevant, (10,))["ndcg@10"])
                    score = float(np.mean(scores))
                    label = f"weights {grid_weights}" + (f", normalise {how}" if len(normalisers) > 1 else "")
                    trials.append({"trial": label, "ndcg@10": round(score, 5)})
                    if score > best * (1 + MIN_GAIN):
                        best, weights, chosen_norm = score, grid_weights, how
                    grid_scores.append(score)
                if len(normalisers) > 1:
                    say(f"  blend grid under normalise {how}: best validation ndcg@10 {max(grid_scores):.4f}")
            normalise = chosen_norm if chosen_norm != configured_norm else None
            say(f"  best blend {weights or 'unchanged'}"
                + (f", normalise {chosen_norm}" if len(normalisers) > 1 else "") + f": validation ndcg@10 {best:.4f}")
            for pipe in pipes:  # the grid left its last blend in place
                pipe.scorer.params.weights = weights or configured
                if chosen_norm is not None:
                    pipe.scorer.params.normalise = chosen_norm
            prior = None
            if hasattr(pipes[0].scorer.params, "prior_weight"):
                # new users: held out of a model trained on the rest of the training side; their first
                # COLD_CONTEXT items are an anonymous request's context, the rest are to be found
                context, held_out = splits.cold_start_users(sub.users, sub.items, sub.timestamps, COLD_USERS,
                                                            COLD_CONTEXT, seed + 100)
                cold_service = stack.enter_context(trained(sub, ~(context | held_out), items_csv, config,
                                                           base_config, workdir, "tune-cold-users"))
                cold_params = cold_service.state.config.pipelines[pipeline].scorer.params
                cold_params.weights = weights or configured
                if chosen_norm is not None:
                    cold_params.normalise = chosen_norm
                cold = (cold_service, *cold_start_requests(cold_service, sub, context, held_out))
                say(f"  cold-start validation: {len(cold[1])} users held out of training, "
                    f"{COLD_CONTEXT} context items each")
                prior = _tune_prior(batches, pipes, lists, pipeline, trials, say, cold)
            if prior is not None:
                best = prior[3]
                prior = prior[:3]
            del batches  # each MMR pipeline gathers its own
            names = [mmr_pipeline] if mmr_pipeline else mmr_pipelines_of(raw, pipeline, services[0].state.config.pipelines)
            for name in names:  # with several, each trial and line names its pipeline
                mmr[name] = _tune_mmr(services, name, weights, lists, trials, say, prior, normalise,
                                      SEARCH_MMR_SHAPES if structure else (), f"{name}: " if len(names) > 1 else "",
                                      mmr_max_loss)
            if names:
                chosen_lambda, mmr_shape = mmr[names[0]]
    tuned = apply_tuned(raw, config, pipeline, mmr, weights, prior, normalise)
    header = (f"# Tuned by `hybridrec tune` from {base_config.name} on {Path(data).name}: validation "
              f"ndcg@10 {best:.4f} ({len(trials)} trials; {folds} folds of {valid_ratio:g} of each user's "
              f"training items, seed {seed}" + (f"; MMR within {mmr_max_loss:.1%} of no-MMR ndcg@10" if mmr else "")
              + ").\n")
    Path(out_path).write_text(header + yaml.safe_dump(tuned, sort_keys=False, default_flow_style=None, width=110))
    return {"validation_ndcg@10": best, "training": config.to_dict(), "weights": weights,
            "prior": prior, "normalise": normalise, "mmr_lambda": chosen_lambda, "mmr_shape": _shape_dict(mmr_shape),
            "mmr": {name: {"lambda": lam, "shape": _shape_dict(shape)} for name, (lam, shape) in mmr.items()},
            "trials": trials, "folds": folds, "valid_ratio": valid_ratio, "mmr_max_loss": mmr_max_loss,
            "validation_rows": [int(valid.sum()) for valid in valids], "structure": structure,
            "seconds": round(time.perf_counter() - started, 1)}


def _tune_prior(batches, pipes, lists, pipeline: str, trials: list, say,
                cold) -> tuple[float, float, float, float] | None:
    """The scorer's popularity prior (prior_weight, prior_items, prior_power), with its validation ndcg@10, or
    None to keep the config's own.

    The prior is for requests with little evidence, which the main folds hardly contain, so it
    is chosen on the held-out new users (`cold`: their service, context lists and items to
    find), among the settings whose main validation ndcg@10 is within MIN_GAIN of the best
    setting's. A setting replaces the config's own only when it is better for new users by
    MIN_GAIN, or when the config's own falls outside that band."""
    params = pipes[0].scorer.params
    cold_service, contexts, cold_relevant = cold
    cold_params = cold_service.state.config.pipelines[pipeline].scorer.params
    incumbent = (params.prior_weight, params.prior_items, params.prior_power)
    settings = [incumbent] + [s for s in SEARCH_PRIOR if s != incumbent and not (s[0] == 0 and incumbent[0] == 0)]
    cold_batch = Gathered(cold_service, pipeline, [""] * len(contexts), 10, contexts) if contexts else None
    found = []  # (setting, main ndcg@10, new users' ndcg@10)
    for setting in settings:
        scores = []
        for batch, pipe, (_, relevant) in zip(batches, pipes, lists):
            set_prior(pipe.scorer.params, setting)
            recs = batch.top()
            scores.append(metrics.ranking_metrics(recs, relevant, (10,))["ndcg@10"])
        set_prior(cold_params, setting)
        new_users = 0.0  # no user with enough items to hold out: main folds alone decide
        if cold_batch is not None:
            recs = cold_batch.top()
            new_users = metrics.ranking_metrics(recs, cold_relevant, (10,))["ndcg@10"]
        found.append((setting, float(np.mean(scores)), new_users))
        label = "prior (config's own)" if setting == incumbent else "prior"
        trials.append({"trial": f"{label} {prior_label(setting)}", "ndcg@10": round(found[-1][1], 5),
                       "new_users_ndcg@10": round(new_users, 5)})
        say(f"  {trials[-1]['trial']:<48} validation ndcg@10 {found[-1][1]:.4f}, new users {new_users:.4f}")
    top = max(main for _, main, _ in found)
    band = [row for row in found if row[1] >= top * (1 - MIN_GAIN)]
    pick = max(band, key=lambda row: (row[2], row[1]))  # ties on new users go to the main folds
    own = found[0]
    if own in band and pick[2] <= own[2] * (1 + MIN_GAIN):
        pick = own
    chosen = None if pick is own else (*pick[0], pick[1])
    for pipe in pipes:  # what later steps (MMR) run with
        set_prior(pipe.scorer.params, pick[0])
    say(f"  popularity prior {prior_label(pick[0]) if chosen else 'unchanged'}: validation ndcg@10 {pick[1]:.4f}, "
        f"new users {pick[2]:.4f}")
    return chosen


def set_prior(params, setting: tuple[float, float, float]) -> None:
    """Set a weighted_hybrid scorer's (prior_weight, prior_items, prior_power)."""
    params.prior_weight, params.prior_items, params.prior_power = setting


def prior_label(setting: tuple[float, float, float]) -> str:
    weight, items, power = setting
    return f"{weight} x exp(-n / {items:g})" if power == 1 else f"{weight} x exp(-(n / {items:g})^{power:g})"


def _tune_mmr(services, name: str, weights, lists, trials: list, say, prior: tuple[float, float, float] | None = None,
              normalise: str | None = None, shapes: Sequence[tuple[str, int, str]] = (), label_prefix: str = "",
              max_loss: float = MMR_MAX_NDCG_LOSS) -> tuple[float | None, tuple[str, int, str] | None]:
    """The most diverse MMR lambda whose ndcg@10, averaged over the folds, stays within
    `max_loss` of the same pipeline without MMR (lambda 1), and the stage's shape
    (redundancy, keep_top, search) when `shapes` are searched: the shape whose chosen lambda gives the
    most ILD@10, kept as configured unless another beats it by MIN_GAIN (None: unchanged)."""
    stages = []
    for service in services:
        pipe = service.state.config.pipelines[name]
        if weights is not None:
            pipe.scorer.params.weights = weights
        if prior is not None and hasattr(pipe.scorer.params, "prior_weight"):
            set_prior(pipe.scorer.params, prior)
        if normalise is not None:
            pipe.scorer.params.normalise = normalise
        stages.append(mmr_stage(pipe))
    own = (stages[0].params.redundancy, stages[0].params.keep_top, stages[0].params.search)
    batches = [Gathered(service, name, users, 10) for service, (users, _) in zip(services, lists)]

    # ILD in the space the stage diversifies over: content embeddings, or category sets
    ild_key = diversity_of(stages[0], services[0].state.model)[0]
    diversity = [diversity_of(stage, service.state.model)[1] for service, stage in zip(services, stages)]

    def run(lam: float) -> tuple[float, float]:
        ndcg, ild = [], []
        for batch, stage, measure, (_, relevant) in zip(batches, stages, diversity, lists):
            stage.params.lambda_weight = lam
            recs = batch.top()
            ndcg.append(metrics.ranking_metrics(recs, relevant, (10,))["ndcg@10"])
            ild.append(measure(recs, 10))
        return float(np.mean(ndcg)), float(np.mean(ild))

    base = run(1.0)[0]  # lambda 1 is relevance order whatever the shape
    found = []  # (shape, chosen lambda, its ILD@10)
    for shape in [own] + [s for s in shapes if s != own]:
        for stage in stages:
            stage.params.redundancy, stage.params.keep_top, stage.params.search = shape
        chosen, chosen_ild, misses = 1.0, 0.0, 0
        for lam in MMR_LAMBDAS:
            ndcg, ild = run(lam)
            label = label_prefix + (f"mmr {shape[0]} keep_top {shape[1]} {shape[2]} lambda {lam}" if shapes
                                    else f"mmr lambda {lam}")
            trials.append({"trial": label, "ndcg@10": round(ndcg, 5), ild_key: round(ild, 5)})
            if ndcg >= (1 - max_loss) * base:
                chosen, chosen_ild, misses = lam, ild, 0
            else:
                misses += 1
                if misses >= MMR_PATIENCE:
                    break
        found.append((shape, chosen, chosen_ild))
        if shapes:
            say(f"  {label_prefix}MMR {shape[0]} keep_top {shape[1]} {shape[2]}: lambda {chosen}, validation {ild_key} "
                f"{chosen_ild:.4f}")
    pick = max(found, key=lambda row: row[2])
    if pick[2] <= found[0][2] * (1 + MIN_GAIN):
        pick = found[0]
    say(f"  {label_prefix}MMR lambda {pick[1]}"
        + (f", {pick[0][0]} redundancy, keep_top {pick[0][1]}, {pick[0][2]} search" if shapes else "")
        + f": the most diverse within {max_loss:.1%} of no-MMR ndcg@10")
    return pick[1], (None if pick[0] == own else pick[0])


def _shape_dict(shape: tuple[str, int, str] | None) -> dict[str, Any] | None:
    return None if shape is None else {"redundancy": shape[0], "keep_top": shape[1], "search": shape[2]}


def _scorer_plugin(spec: Any) -> Any:
    return spec.get("plugin") if isinstance(spec, dict) else spec


def mmr_pipelines_of(raw: dict, pipeline: str, pipelines: dict[str, Any]) -> list[str]:
    """The pipelines whose MMR lambda `tune` sets: those with an MMR stage that are `pipeline`
    plus re-rankers (the same candidates, filters and scorer plugin in the YAML), so the blend,
    normalisation and prior tuned for `pipeline` fit them too. Others are left as configured."""
    specs = raw.get("pipelines") or {}
    own = specs.get(pipeline) or {}

    def same_base(spec: dict) -> bool:
        return (spec.get("candidates") == own.get("candidates") and spec.get("filters") == own.get("filters")
                and _scorer_plugin(spec.get("scorer")) == _scorer_plugin(own.get("scorer")))

    return [name for name, obj in pipelines.items()
            if mmr_stage(obj) is not None and (name == pipeline or same_base(specs.get(name) or {}))]


def apply_tuned(raw: dict, config: TrainingConfig, pipeline: str,
                mmr: dict[str, tuple[float | None, tuple[str, int, str] | None]], weights: dict | None,
                prior: tuple[float, float, float] | None = None, normalise: str | None = None) -> dict:
    """The base YAML with the tuned training config, the blend, normalisation and prior in
    `pipeline` and each tuned MMR pipeline, and each MMR pipeline's own lambda and shape."""
    tuned = copy.deepcopy(raw)
    tuned["training"] = config.to_dict()
    for name in {pipeline, *mmr}:
        lam, mmr_shape = mmr.get(name, (None, None))
        spec = tuned.get("pipelines", {}).get(name)
        if not isinstance(spec, dict):
            continue
        scorer = spec.get("scorer")
        if weights is not None and isinstance(scorer, dict):
            scorer.setdefault("params", {})["weights"] = dict(weights)
        if prior is not None and isinstance(scorer, dict):
            scorer.setdefault("params", {}).update(prior_weight=prior[0], prior_items=prior[1], prior_power=prior[2])
        if normalise is not None and isinstance(scorer, dict):
            scorer.setdefault("params", {})["normalise"] = normalise
        for entry in spec.get("rerankers") or []:
            if isinstance(entry, dict) and entry.get("plugin") == "mmr":
                if lam is not None:
                    entry.setdefault("params", {})["lambda_weight"] = lam
                if mmr_shape is not None:
                    entry.setdefault("params", {}).update(redundancy=mmr_shape[0], keep_top=mmr_shape[1],
                                                          search=mmr_shape[2])
    return tuned
