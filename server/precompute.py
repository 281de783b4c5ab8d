"""Precomputed answers: a pipeline's top k for every known user, worked out once per bundle.

A `Recommend` for a known user without context items, exclusions or `explain` is a function
of the bundle, the pipeline and k alone. `server.precomputed: {hybrid: [10]}` asks for those
answers to be worked out ahead, by the same pipeline objects the server runs (`hybridrec
precompute`, or at the end of `hybridrec train` when its config file names them), and stored in
the bundle as arrays. The server then answers such a call by reading a row: the same items and
scores the pipeline would return, for a few microseconds instead of the pipeline's half a
millisecond or more. One more row holds the answer for a request with no known user and nothing
else to go on (the cold-start answer, the same for every such request).

Every other call runs the pipeline as before: context items, exclusions, `explain`, another k,
a user the table does not hold, or a stored answer that had a degraded stage (those rows are
left empty). A table records a fingerprint of the bundle version, the pipeline's config, k and
the hybridrec version; a server whose config or bundle no longer matches ignores the table,
says so in its log, and runs the pipeline. Only pipelines whose answers depend on nothing else
(no clock, no randomness, no state outside the bundle) should be precomputed; the built-in
stages qualify.

Layout: `MODEL_DIR/precomputed/PIPELINE-kK/` with `items.npy` (int32, one row per user plus
the cold-start row, -1 past the answer's end), `scores.npy` (float32, the same shape),
`lengths.npy` (int16: items in the answer, -1 for a row the server must compute) and
`table.json` (the fingerprint and counts). The arrays are memory-mapped, so every worker
process reads the same pages.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Model, now_rfc3339
from .config import fingerprint
from .errors import ConfigError

log = logging.getLogger("hybridrec")

DIRECTORY = "precomputed"
CHUNK = 4096  # users per task of a precompute worker


@dataclass(frozen=True)
class Table:
    """The stored answers of one pipeline at one k. Row `cold_row` is the cold-start answer."""

    pipeline: str
    k: int
    items: np.ndarray  # int32 (rows, k)
    scores: np.ndarray  # float32 (rows, k)
    lengths: np.ndarray  # int16 (rows,)

    @property
    def cold_row(self) -> int:
        return self.lengths.shape[0] - 1


def _code_version() -> str:
    try:
        return metadata.version("hybridrec")
    except metadata.PackageNotFoundError:
        return "unknown"


def table_fingerprint(model: Model, raw_config: dict[str, Any], pipeline: str, k: int) -> str:
    """What a stored table must match to be served: bundle, pipeline config, k and code version."""
    spec = (raw_config.get("pipelines") or {}).get(pipeline)
    return fingerprint({"model": model.version, "pipeline": spec, "k": k, "hybridrec": _code_version()})


def table_dir(model_dir: Path, pipeline: str, k: int) -> Path:
    return Path(model_dir) / DIRECTORY / f"{pipeline}-k{k}"


def wanted(config: Any) -> list[tuple[str, int]]:
    """The (pipeline, k) pairs a serving config asks to precompute."""
    return [(name, k) for name, ks in config.precomputed.items() for k in ks]


def load_tables(model: Model, config: Any) -> dict[tuple[str, int], Table]:
    """The tables of `config.precomputed` stored in the bundle that match it. A missing, stale or
    damaged table is skipped with a warning: those calls run the pipeline instead."""
    tables: dict[tuple[str, int], Table] = {}
    for name, k in wanted(config):
        where = table_dir(model.path, name, k)
        if not (where / "table.json").is_file():
            log.warning("server.precomputed: no stored answers for pipeline %r at k=%d in %s (run `hybridrec "
                        "precompute --model %s --config %s`); those calls run the pipeline", name, k,
                        model.path, model.path, config.path)
            continue
        try:
            meta = json.loads((where / "table.json").read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("table.json is not a JSON object")
            if meta.get("fingerprint") != table_fingerprint(model, config.raw, name, k):
                log.warning("server.precomputed: the stored answers for pipeline %r at k=%d are from another bundle, "
                            "config or hybridrec version; ignored (run `hybridrec precompute` again); those calls "
                            "run the pipeline", name, k)
                continue
            arrays = {n: np.load(where / f"{n}.npy", mmap_mode="r", allow_pickle=False).view(np.ndarray)
                      for n in ("items", "scores", "lengths")}
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("server.precomputed: cannot read %s (%s); those calls run the pipeline", where, exc)
            continue
        rows = model.num_users + 1
        items, scores, lengths = arrays["items"], arrays["scores"], arrays["lengths"]
        if (items.shape != (rows, k) or scores.shape != (rows, k) or lengths.shape != (rows,)
                or items.dtype != np.int32 or scores.dtype != np.float32 or lengths.dtype != np.int16):
            log.warning("server.precomputed: %s does not match the bundle's shape; ignored", where)
            continue
        # one pass over the table (about 20 ms per million users at k=10): a damaged row would
        # otherwise fail its calls with INTERNAL instead of running the pipeline
        if rows and (int(lengths.max()) > k or int(lengths.min()) < -1 or int(items.max()) >= model.num_items
                     or int(items.min()) < -1):
            log.warning("server.precomputed: %s holds values outside the bundle's items; ignored", where)
            continue
        tables[(name, k)] = Table(name, k, items, scores, lengths)
        log.info("server.precomputed: pipeline %r at k=%d answered from %s (%d of %d rows stored)", name, k,
                 where, int(meta.get("stored", -1)), rows)
    return tables


# --- building tables --------------------------------------------------------------------------

_STATE: dict[str, Any] = {}  # what a forked worker inherits: the service and the open outputs


def _work(task: tuple[int, int]) -> tuple[int, int]:
    """Answer users [start, stop) of the current table; returns (users done, rows left empty)."""
    from hybridrec.v1 import recommender_pb2 as pb

    start, stop = task
    service, name, k = _STATE["service"], _STATE["pipeline"], _STATE["k"]
    model = service.state.model
    items, scores, lengths = _STATE["outputs"]
    empty = 0
    for row in range(start, stop):
        user_id = str(model.user_ids[row]) if row < model.num_users else ""
        result, ctx, _ = service.recommend(pb.RecommendRequest(user_id=user_id, k=k, pipeline=name))
        # a degraded answer is not the one the pipeline gives when everything works; and an id
        # that does not lead back to its own row (it cannot, in a valid bundle) is not this row's
        if result.degraded or ctx.user != (row if row < model.num_users else -1):
            lengths[row] = -1
            empty += 1
            continue
        ranked = result.ranked
        n = int(ranked.shape[0])
        items[row, :n] = result.candidates.items[ranked]
        scores[row, :n] = result.candidates.final[ranked]
        lengths[row] = n
    return stop - start, empty


def _open_outputs(where: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.load(where / f"{n}.npy", mmap_mode="r+") for n in ("items", "scores", "lengths"))  # type: ignore[return-value]


def _init_worker(where: str) -> None:
    from .app import set_faiss_threads

    set_faiss_threads(1)
    _STATE["outputs"] = _open_outputs(Path(where))


def precompute(model_dir: str | Path, config_path: str | Path, jobs: int = 0, plugins: Any = None) -> list[dict[str, Any]]:
    """Work out and store every table `config_path`'s `server.precomputed` asks for, with `jobs`
    worker processes (0: one per CPU) and the stages of `plugins` (default: the installed ones).
    Returns each table's metadata."""
    from .app import load_state
    from .service import RecommenderService

    state = load_state(model_dir, config_path, plugins=plugins, mmap=True, precomputed=False)
    pairs = wanted(state.config)
    if not pairs:
        raise ConfigError(f"{config_path}: server.precomputed names no pipeline, so there is nothing to precompute "
                          "(e.g. `precomputed: {hybrid: [10]}` under `server:`)")
    model = state.model
    jobs = jobs or os.cpu_count() or 1
    rows = model.num_users + 1
    done_meta = []
    for name, k in pairs:
        final = table_dir(model.path, name, k)
        partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            np.lib.format.open_memmap(partial / "items.npy", mode="w+", dtype=np.int32, shape=(rows, k))[:] = -1
            np.lib.format.open_memmap(partial / "scores.npy", mode="w+", dtype=np.float32, shape=(rows, k))[:] = 0
            np.lib.format.open_memmap(partial / "lengths.npy", mode="w+", dtype=np.int16, shape=(rows,))[:] = -1
            _STATE.update(service=RecommenderService(state), pipeline=name, k=k)
            tasks = [(s, min(s + CHUNK, rows)) for s in range(0, rows, CHUNK)]
            jobs = min(jobs, len(tasks))
            start, users, empty, reported = time.perf_counter(), 0, 0, 0.0
            log.info("[precompute] pipeline %r, k=%d: %d users and the cold-start answer, %d processes",
                     name, k, model.num_users, jobs)
            if jobs == 1:
                _init_worker(str(partial))
                results = map(_work, tasks)
                pool = None
            else:
                pool = multiprocessing.get_context("fork").Pool(jobs, initializer=_init_worker, initargs=(str(partial),))
                results = pool.imap_unordered(_work, tasks)
            try:
                for n, e in results:
                    users, empty = users + n, empty + e
                    elapsed = time.perf_counter() - start
                    if elapsed - reported >= 10 or users == rows:
                        reported = elapsed
                        log.info("[precompute] %s k=%d: %d of %d rows, %.0f s", name, k, users, rows, elapsed)
            except BaseException:
                if pool is not None:
                    pool.terminate()  # not the rest of a million users
                raise
            finally:
                if pool is not None:
                    pool.close()
                    pool.join()
                _STATE.clear()
            seconds = time.perf_counter() - start
            meta = {"pipeline": name, "k": k, "rows": rows, "stored": rows - empty, "left_empty": empty,
                    "fingerprint": table_fingerprint(model, state.config.raw, name, k), "model_version": model.version,
                    "created_at": now_rfc3339(), "seconds": round(seconds, 2), "processes": jobs}
            (partial / "table.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if empty:
            log.warning("[precompute] %s k=%d: %d rows had a degraded stage and are left to the live pipeline",
                        name, k, empty)
        log.info("[precompute] %s k=%d: %d rows in %.1f s -> %s", name, k, rows, seconds, final)
        done_meta.append(meta)
    return done_meta

