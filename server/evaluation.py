"""`hybridrec evaluate`: split a dataset, train on one side, score every pipeline on the other.

The recommender evaluated is the very `Pipeline` the server runs, built from the same YAML
and called in-process through `RecommenderService.recommend`: there is no second
implementation of any stage here, only data handling and metrics.
"""
from __future__ import annotations

import csv
import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from hybridrec.v1 import recommender_pb2 as pb

from . import metrics, splits
from .app import load_state
from .config import TrainingConfig, load_training_config
from .errors import ConfigError, DataError
from .movielens import convert
from .pipeline import Pipeline, load_serving_config
from .plugin_manager import Plugins
from .service import RecommenderService
from .stages import Candidates
from .training import train

log = logging.getLogger("hybridrec")

SPLITS = ("random", "temporal", "leave_last")
DEFAULT_LAMBDAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3)


@dataclass
class EventTable:
    """An events CSV held in memory: the raw rows plus the columns splits need."""

    header: list[str]
    rows: list[dict[str, str]]
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray

    @classmethod
    def read(cls, path: Path) -> "EventTable":
        from .data import parse_timestamp

        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = list(reader.fieldnames or [])
        stamps = [parse_timestamp(r.get("timestamp") or "") for r in rows]
        return cls(header, rows, np.array([r["user_id"] for r in rows]), np.array([r["item_id"] for r in rows]),
                   np.array([s if s is not None else 0 for s in stamps], dtype=np.int64))

    def write(self, path: Path, keep: np.ndarray) -> Path:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.header)
            writer.writeheader()
            writer.writerows(row for row, k in zip(self.rows, keep.tolist()) if k)
        return path


def prepare_dataset(src: str | Path, workdir: Path) -> tuple[str, Path, Path]:
    """(name, events.csv, items.csv) from a MovieLens folder or a folder with our two CSVs."""
    src = Path(src)
    if (src / "events.csv").is_file() and (src / "items.csv").is_file():
        return src.name, src / "events.csv", src / "items.csv"
    if not src.exists():
        raise DataError(f"dataset {src} does not exist")
    if not src.is_dir():
        raise DataError(f"dataset {src} is a file; give the folder that holds the dataset's files")
    try:
        paths = convert(src, workdir / "data")
    except ValueError as exc:
        raise DataError(f"{exc}; or events.csv and items.csv (hybridrec's own format)") from None
    return src.name, paths["events"], paths["items"]


def split_mask(table: EventTable, split: str, test_ratio: float, seed: int, last_n: int = 1) -> np.ndarray:
    """The test rows of one of the protocol splits."""
    if split == "random":
        return splits.random_holdout(table.users, table.items, test_ratio, seed)
    if split == "temporal":
        return splits.temporal_split(table.timestamps, test_ratio)
    if split == "leave_last":
        return splits.leave_last_n(table.users, table.items, table.timestamps, last_n)
    raise DataError(f"split {split!r} is not one of: {', '.join(SPLITS)}")


@contextmanager
def trained(table: EventTable, keep: np.ndarray, items_csv: Path, config: TrainingConfig,
            pipelines_config: Path, workdir: Path, tag: str) -> Iterator[RecommenderService]:
    """Train on the kept rows and yield an in-process service over the result."""
    train_csv = table.write(workdir / f"train-{tag}.csv", keep)
    train(train_csv, items_csv, config, workdir / f"model-{tag}")
    yield RecommenderService(load_state(workdir / f"model-{tag}", pipelines_config, precomputed=False))


def recommend_all(service: RecommenderService, pipeline: str, users: Sequence[str], k: int,
                  contexts: Sequence[Sequence[str]] | None = None) -> np.ndarray:
    """Top-k item indices for each user (padded with -1), through the serving code path."""
    recs = np.full((len(users), k), -1, dtype=np.int64)
    for row, user in enumerate(users):
        request = pb.RecommendRequest(user_id=user, k=k, pipeline=pipeline,
                                      context_item_ids=list(contexts[row]) if contexts else [])
        result, _, _ = service.recommend(request)
        chosen = result.candidates.items[result.ranked]
        recs[row, : chosen.shape[0]] = chosen
    return recs


class Gathered:
    """Requests to one pipeline whose candidates are gathered once, through the serving path
    (`Pipeline.gather`), and ranked again by `top()` with the scorer's and re-rankers' params
    as they stand at that moment (`Pipeline.rank`). `tune` changes only those params between
    calls, so each of its blend, prior and MMR trials costs a scorer and re-ranker pass, not
    the candidate searches. `top()` equals `recommend_all` with the same params.

    Each held request keeps its candidates and the user's history (13 KB on MovieLens 100K's
    hybrid). Past `max_held` requests the rest run the whole pipeline at every `top()`, so
    memory stays bounded whatever the number of validation users."""

    MAX_HELD = 20_000

    def __init__(self, service: RecommenderService, pipeline: str, users: Sequence[str], k: int,
                 contexts: Sequence[Sequence[str]] | None = None, max_held: int | None = None) -> None:
        self.service, self.pipeline, self.k = service, pipeline, k
        held = self.MAX_HELD if max_held is None else max_held
        self.rest = (list(users[held:]), list(contexts[held:]) if contexts else None)  # run whole each time
        self.requests = []
        for row, user in enumerate(users[:held]):
            request = pb.RecommendRequest(user_id=user, k=k, pipeline=pipeline,
                                          context_item_ids=list(contexts[row]) if contexts else [])
            _, pipe, ctx, _ = service.prepare(request)
            candidates, degraded = pipe.gather(ctx)
            ctx.release()  # e.g. the item-item source's scores of the whole catalogue
            self.requests.append((pipe, ctx, candidates, degraded))

    def top(self) -> np.ndarray:
        """Top-k item indices for each request (padded with -1), in the order given."""
        recs = np.full((len(self.requests), self.k), -1, dtype=np.int64)
        for row, (pipe, ctx, candidates, degraded) in enumerate(self.requests):
            result = pipe.rank(ctx, candidates.fresh(), list(degraded))
            chosen = result.candidates.items[result.ranked]
            recs[row, : chosen.shape[0]] = chosen
        if self.rest[0]:
            recs = np.concatenate([recs, recommend_all(self.service, self.pipeline, self.rest[0], self.k, self.rest[1])])
        return recs


def relevant_indices(service: RecommenderService, held: dict[Any, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """Users and their held-out items as model indices; items the model lacks get indices
    past the catalogue, so they count as relevant but can never be hit."""
    index = service.state.model.item_index
    n = service.state.model.num_items
    users, relevant = [], []
    for user, items in held.items():
        mapped = [index.get(str(i), n + j) for j, i in enumerate(items.tolist())]
        users.append(str(user))
        relevant.append(np.asarray(mapped, dtype=np.int64))
    return users, relevant


def score_lists(service: RecommenderService, recs: np.ndarray, relevant: list[np.ndarray],
                ks: Sequence[int]) -> dict[str, float]:
    """Accuracy metrics at every k, and coverage, diversity, novelty and popularity bias."""
    model = service.state.model
    counts = np.bincount(model.history_items, minlength=model.num_items)
    result = metrics.ranking_metrics(recs, relevant, ks)
    for k in ks:
        result[f"coverage@{k}"] = metrics.catalog_coverage(recs, model.num_items, k)
        result[f"ild@{k}"] = metrics.intra_list_diversity(recs, model.item_content, k)
        if model.item_categories is not None:
            result[f"category_ild@{k}"] = metrics.category_diversity(recs, model.item_categories, k)
        result[f"novelty@{k}"] = metrics.novelty(recs, counts, model.num_users, k)
        result[f"popularity_bias@{k}"] = metrics.popularity_bias(recs, counts, k)
    return result


def mmr_stage(pipeline: Pipeline):
    return next((r for r in pipeline.rerankers if r.plugin_name == "mmr"), None)


def diversity_of(stage, model) -> tuple[str, Callable[[np.ndarray, int], float]]:
    """The name (at k=10) and function of ILD@k in the space an MMR stage diversifies over:
    category sets (`similarity: category` and a model that has them), else content embeddings."""
    if stage.params.similarity == "category" and model.item_categories is not None:
        return "category_ild@10", lambda recs, k: metrics.category_diversity(recs, model.item_categories, k)
    return "ild@10", lambda recs, k: metrics.intra_list_diversity(recs, model.item_content, k)


def mmr_curve(service: RecommenderService, name: str, users: list[str], relevant: list[np.ndarray],
              lambdas: Sequence[float], k: int = 10) -> list[dict[str, float]]:
    """NDCG@k and ILD@k of a pipeline as its MMR lambda varies (restored afterwards)."""
    stage = mmr_stage(service.state.config.pipelines[name])
    original = stage.params.lambda_weight
    points = []
    gathered = Gathered(service, name, users, k)  # lambda is a re-ranker param: gather once
    try:
        for lam in lambdas:
            stage.params.lambda_weight = lam
            recs = gathered.top()
            found = metrics.ranking_metrics(recs, relevant, (k,))
            points.append({"lambda": lam, f"ndcg@{k}": found[f"ndcg@{k}"], f"precision@{k}": found[f"precision@{k}"],
                           f"ild@{k}": metrics.intra_list_diversity(recs, service.state.model.item_content, k)})
            if service.state.model.item_categories is not None:
                points[-1][f"category_ild@{k}"] = metrics.category_diversity(
                    recs, service.state.model.item_categories, k)
    finally:
        stage.params.lambda_weight = original
    return points


def cold_start_items_section(table: EventTable, items_csv: Path, config: TrainingConfig, pipelines_config: Path,
                             workdir: Path, pipeline: str, fraction: float, seed: int, k: int = 10) -> dict[str, Any]:
    """Hold out whole items; rank only them for each user by `pipeline`'s own scorer over what its
    sources know of them (content similarity, and CF factors predicted from content); compare
    with random. Each content-based source's ranking alone is reported too."""
    test = splits.cold_start_items(table.items, fraction, seed)
    with trained(table, ~test, items_csv, config, pipelines_config, workdir, "cold-items") as service:
        model = service.state.model
        pipe = service.state.config.pipelines[pipeline]
        if not any(s.plugin_name == "faiss_content" for s in pipe.sources):
            return {"skipped": f"pipeline {pipeline!r} has no faiss_content source"}
        content_based = [s.name for s in pipe.sources if s.plugin_name == "faiss_content"
                         or (s.plugin_name == "faiss_cf" and model.manifest.get("cf_from_content"))]
        cold = np.unique([model.item_index[i] for i in np.unique(table.items[test]).tolist() if i in model.item_index])
        held = splits.held_out_items(table.users, table.items, test)
        recalls: dict[str, list[float]] = {name: [] for name in ["blend", *content_based]}
        for user, items in held.items():
            _, ctx, _ = service.recommend(pb.RecommendRequest(user_id=str(user), k=k))
            scores = {s.name: s.score(ctx, cold) for s in pipe.sources}
            scores = {name: np.asarray(v, dtype=np.float32) for name, v in scores.items() if v is not None}
            if not any(name in scores for name in content_based):
                continue
            candidates = Candidates(items=cold, scores=scores)
            pipe.scorer.score(ctx, candidates)
            relevant = {model.item_index[i] for i in items.tolist() if i in model.item_index}
            for name, ranking in (("blend", candidates.final), *((n, scores.get(n)) for n in content_based)):
                if ranking is not None:
                    top = cold[np.argsort(-ranking, kind="stable")[:k]]
                    recalls[name].append(len(relevant & set(top.tolist())) / len(relevant))
    recall = float(np.mean(recalls["blend"])) if recalls["blend"] else 0.0
    random_recall = metrics.random_recall_at_k(cold.shape[0], k)
    return {"pipeline": pipeline, "held_out_items": int(cold.shape[0]), "users": len(recalls["blend"]),
            f"recall@{k}": recall, f"random_recall@{k}": random_recall,
            "ratio": recall / random_recall if random_recall else 0.0,
            **{f"{name} alone recall@{k}": float(np.mean(found)) for name, found in recalls.items()
               if name != "blend" and found}}


def cold_start_users_section(table: EventTable, items_csv: Path, config: TrainingConfig, pipelines_config: Path,
                             workdir: Path, pipelines: Sequence[str], fraction: float, n_context: int, seed: int,
                             ks: Sequence[int]) -> dict[str, Any]:
    """Hold out whole users; give their first events as request context; score the rest."""
    context, test = splits.cold_start_users(table.users, table.items, table.timestamps, fraction, n_context, seed)
    with trained(table, ~(context | test), items_csv, config, pipelines_config, workdir, "cold-users") as service:
        contexts, relevant = cold_start_requests(service, table, context, test)
        out = {}
        for name in pipelines:
            recs = recommend_all(service, name, [""] * len(contexts), max(ks), contexts)
            out[name] = metrics.ranking_metrics(recs, relevant, ks)
    return {"users": len(contexts), "context_items": n_context, "metrics": out}


def cold_start_requests(service: RecommenderService, table: EventTable, context: np.ndarray,
                        test: np.ndarray) -> tuple[list[list[str]], list[np.ndarray]]:
    """For each held-out user: the context item ids of an anonymous request, and the indices of
    the items to find (the rows of `splits.cold_start_users`' two masks)."""
    held = splits.held_out_items(table.users, table.items, test)
    users, relevant = relevant_indices(service, held)
    by_user = {str(u): v for u, v in splits.held_out_items(table.users, table.items, context).items()}
    return [[str(i) for i in by_user.get(u, np.array([])).tolist()] for u in users], relevant


def check_pipelines(config_path: Path, wanted: Sequence[str] | None) -> list[str]:
    """Build the config's pipelines (so a bad stage fails now, not after training) and return
    the `wanted` ones, all of them by default; an unknown name is a ConfigError naming the choices."""
    available = list(load_serving_config(config_path, Plugins()).pipelines)
    for name in wanted or ():
        if name not in available:
            raise ConfigError(f"{config_path}: pipeline {name!r} is not in this config; available: {', '.join(available)}")
    return list(wanted or available)


def evaluate(data: str | Path, config_path: str | Path, split: str = "random", test_ratio: float = 0.25,
             seed: int = 42, ks: Sequence[int] = (5, 10, 20), pipelines: Sequence[str] | None = None,
             lambdas: Sequence[float] = DEFAULT_LAMBDAS, cold_start: bool = True,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole evaluation and return the report dict (see `reports.write_reports`)."""
    say = progress or (lambda message: log.info("%s", message))
    started = time.perf_counter()
    config_path = Path(config_path)
    config = load_training_config(config_path)
    names = check_pipelines(config_path, pipelines)  # before any data is read or model trained
    ks = sorted(set(int(k) for k in ks))
    with tempfile.TemporaryDirectory(prefix="hybridrec-eval-") as tmp:
        workdir = Path(tmp)
        name, events_csv, items_csv = prepare_dataset(data, workdir)
        table = EventTable.read(events_csv)
        test = split_mask(table, split, test_ratio, seed)
        say(f"{name}: {len(table.rows)} events, split {split}: {int(test.sum())} test rows")
        t0 = time.perf_counter()
        with trained(table, ~test, items_csv, config, config_path, workdir, "main") as service:
            model = service.state.model
            report: dict[str, Any] = {
                "dataset": name, "split": f"{split} (test ratio {test_ratio}, seed {seed})", "ks": ks,
                "train": {"users": model.num_users, "items": model.num_items, "events": int((~test).sum()),
                          "seconds": round(time.perf_counter() - t0, 2)},
                "pipelines": {},
            }
            users, relevant = relevant_indices(service, splits.held_out_items(table.users, table.items, test))
            for pipeline in names:
                t1 = time.perf_counter()
                recs = recommend_all(service, pipeline, users, max(ks))
                scores = score_lists(service, recs, relevant, ks)
                report["pipelines"][pipeline] = {"metrics": scores, "users": len(users),
                                                 "seconds": round(time.perf_counter() - t1, 2)}
                say(f"  {pipeline:<16} ndcg@10 {scores.get('ndcg@10', float('nan')):.4f}  "
                    f"precision@10 {scores.get('precision@10', float('nan')):.4f}  ({len(users)} users)")
            pipeline_sources = {p: service.state.config.pipelines[p].sources for p in names}
            report["best"] = max(names, key=lambda p: report["pipelines"][p]["metrics"].get("ndcg@10", 0.0))
            with_mmr = [p for p in names if mmr_stage(service.state.config.pipelines[p]) is not None]
            for pipeline in with_mmr if lambdas else ():  # one curve per MMR pipeline
                stage = mmr_stage(service.state.config.pipelines[pipeline])
                default = stage.params.lambda_weight
                curve = sorted({*lambdas, default}, reverse=True)  # the configured lambda is always a point
                say(f"MMR curve of {pipeline} over lambda {', '.join(str(x) for x in curve)}")
                report.setdefault("mmr_curves", []).append(
                    {"pipeline": pipeline, "default_lambda": default,
                     "diversity": diversity_of(stage, model)[0],  # the space the stage works in
                     "points": mmr_curve(service, pipeline, users, relevant, curve)})
            if report.get("mmr_curves"):
                report["mmr_curve"] = report["mmr_curves"][0]  # the first MMR pipeline's, as before
        if cold_start:
            # content is the only way to reach a held-out item: use the best pipeline that has it
            with_content = [p for p in sorted(names, key=lambda p: -report["pipelines"][p]["metrics"].get("ndcg@10", 0.0))
                            if any(s.plugin_name == "faiss_content" for s in pipeline_sources[p])]
            say("cold-start items: holding out 10% of items with all their events")
            report["cold_start_items"] = cold_start_items_section(
                table, items_csv, config, config_path, workdir, with_content[0] if with_content else report["best"],
                0.1, seed)
            say("cold-start users: holding out 10% of users; their first 5 items are the context")
            report["cold_start_users"] = cold_start_users_section(
                table, items_csv, config, config_path, workdir, names, 0.1, 5, seed, ks)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report
