"""FAISS index choice, build and search-time parameters.

`index: auto` picks exact `Flat` up to AUTO_FLAT_MAX_ITEMS vectors and an inverted-file index
above (`IVF<nlist>,Flat` with nlist ~ sqrt(n), a power of two, and at least AUTO_MIN_LISTS:
1,024 lists for 100,000 items and for a million, 2,048 for four million): with k-means on at
most IVF_POINTS_PER_LIST points per list and IVF_NITER iterations it builds in well under a
minute on a million vectors on 2 cores, where HNSW32 takes several minutes. Any FAISS factory
string (e.g. `HNSW32`, `IVF4096,Flat`) is accepted too.

Search-time parameters (`nprobe` for IVF, `efSearch` for HNSW) are not all persisted by
`faiss.write_index` for every index type, so they are stored in the bundle manifest and
applied at load (`apply_search_params`). Given in the config's `index_params`, they are used
as is; left out, training picks the smallest value from a ladder that reaches
TARGET_RECALL recall@100 against exact search on a sample of real queries, and records it.
Build-time parameters (`efConstruction`) are applied before vectors are added.

Inner products between vectors of unequal norms (the SVD item factors: popular items have
long vectors) cluster and navigate badly: IVF over raw item factors needs half its lists for
0.95 recall. Approximate indexes over such vectors therefore use the MIPS-to-NN reduction
(Bachrach et al., 2014): every item vector gets one extra coordinate sqrt(M^2 - |x|^2) so all
have norm M, and queries get a 0 there (a RemapDimensionsTransform in an IndexPreTransform,
so callers still search with the original vectors). Inner products, and so the ranking and
the scores, are unchanged; the clustering is now by direction. With IVF, k-means is trained
on the longest vectors only (IVF_POINTS_PER_LIST per list): they are the items that reach a
user's top 100 (at 1M x 1M, every user's exact top 100 lay within the 75,000 longest of
a million item vectors), while the long tail of near-zero vectors, all close to one point
after the transform, would otherwise take most centroids. Measured on the 1M bundle: recall@100
0.92 at nprobe 64 with uniform training, 0.97 with head training. The tail then shares one
large list near that point, which only the rare query without enough positive centroids probes.
The head sample is nlist x IVF_POINTS_PER_LIST vectors, so fewer lists leave more of the catalogue
in that tail: at 100,000 items, sqrt(n) gave 256 lists trained on the 16,384 longest vectors, and
queries that probed the tail's lists scanned them whole (recall@100 0.976 needed nprobe 96 with no
max_codes cap: 0.25 ms p50 but 1.8-2.2 ms p95 per search). 1,024 lists there give recall 0.987 at
0.07 ms p50 and 0.10 ms p99. HNSW32 does badly on these vectors: the tail is one tight clump after
the transform, and efSearch 512 reached recall 0.81 at 0.67 ms. At a million items 1,024 lists
stay the fastest (0.074 ms mean at recall 0.973, against 0.078 for 2,048 and 0.156 for 4,096).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import faiss
import numpy as np

from .errors import ConfigError
from .stages import in_sorted

log = logging.getLogger("hybridrec")

AUTO_FLAT_MAX_ITEMS = 50_000
AUTO_MIN_LISTS = 1024  # the head-trained k-means needs this many lists to cover mid-size catalogues
IVF_POINTS_PER_LIST = 64  # k-means sample per list (FAISS default 256: 4x the training cost)
IVF_NITER = 10  # k-means iterations (FAISS default 25); plenty for coarse IVF lists
TARGET_RECALL = 0.96
TUNE_QUERIES = 500
TUNE_K = 100
SEARCH_PARAMS = ("nprobe", "efSearch", "max_codes")
# IVF: a search visits at most this many times nprobe x the median list's vectors. Skewed data
# (the near-zero SVD vectors of a long tail of rare items) can pile most of the catalogue into one
# list; a query probing it then scans that list whole (30 ms at 1M items instead of 0.2 ms). With
# balanced lists the cap is never reached, so recall is unchanged there.
MAX_CODES_FACTOR = 8
BUILD_PARAMS = ("efConstruction",)
LADDERS = {"nprobe": (4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512), "efSearch": (32, 64, 128, 256, 512, 1024)}


def resolve_factory(factory: str, n: int) -> str:
    """The FAISS factory string for `n` vectors: `auto` becomes Flat or IVF<nlist>,Flat."""
    if factory != "auto":
        return factory
    if n <= AUTO_FLAT_MAX_ITEMS:
        return "Flat"
    nlist = max(AUTO_MIN_LISTS, 1 << int(round(np.log2(np.sqrt(n)))))
    return f"IVF{nlist},Flat"


def _ivf(index: Any) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw(index: Any) -> Any:
    inner = index
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def search_param_name(index: Any) -> str | None:
    """`nprobe`, `efSearch` or None (exact and other index types)."""
    if _ivf(index) is not None:
        return "nprobe"
    if _hnsw(index) is not None:
        return "efSearch"
    return None


def apply_search_params(index: Any, params: dict[str, Any]) -> None:
    """Set the stored search-time parameters on a loaded index."""
    for name, value in params.items():
        if name not in SEARCH_PARAMS:
            continue
        if name == "nprobe" and _ivf(index) is not None:
            _ivf(index).nprobe = int(value)
        elif name == "max_codes" and _ivf(index) is not None:
            _ivf(index).max_codes = int(value)
        elif name == "efSearch" and _hnsw(index) is not None:
            _hnsw(index).hnsw.efSearch = int(value)


def build_index(vectors: np.ndarray, factory: str, what: str, params: dict[str, Any] | None = None,
                queries: np.ndarray | None = None, seed: int = 42) -> tuple[Any, dict[str, Any]]:
    """An inner-product index over `vectors` and a description of it for the manifest.

    The description holds the resolved factory string, the build time, the search-time
    parameters to apply at load and, for approximate indexes tuned here, the recall@100
    measured against exact search on `queries` (a sample of what serving will ask).
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(SEARCH_PARAMS) - set(BUILD_PARAMS))
    if unknown:
        raise ConfigError(f"training.{what}.index_params: unknown parameter {unknown[0]!r}; valid: "
                          f"{', '.join(SEARCH_PARAMS + BUILD_PARAMS)}")
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    resolved = resolve_factory(factory, data.shape[0])
    dims = data.shape[1]
    norms = np.linalg.norm(data, axis=1)
    nonzero = norms[norms > 0]
    mips = (resolved != "Flat" and nonzero.shape[0] > 0
            and float(nonzero.max() - nonzero.min()) > 1e-3 * float(nonzero.max()))
    try:
        index = faiss.index_factory(dims + mips, resolved, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        raise ConfigError(f"training.{what}.index: {resolved!r} is not a valid FAISS index factory string") from None
    started = time.perf_counter()
    if mips:
        top = float(norms.max())
        extra = np.sqrt(np.maximum(top * top - norms.astype(np.float64) ** 2, 0.0)).astype(np.float32)
        data = np.ascontiguousarray(np.hstack([data, extra[:, None]]))
        del extra
    ivf = _ivf(index)
    if ivf is not None and ivf.nlist > max(1, data.shape[0] // 39):
        raise ConfigError(f"training.{what}.index: {resolved!r} has {ivf.nlist} lists for {data.shape[0]} vectors; "
                          "use Flat or fewer lists (about sqrt(n))")
    if "efConstruction" in params and _hnsw(index) is not None:
        _hnsw(index).hnsw.efConstruction = int(params["efConstruction"])
    if ivf is not None:
        ivf.cp.seed = seed
        ivf.cp.max_points_per_centroid = IVF_POINTS_PER_LIST
        ivf.cp.niter = IVF_NITER
    if not index.is_trained:
        sample = data
        if mips and ivf is not None and data.shape[0] > ivf.nlist * IVF_POINTS_PER_LIST:
            sample = np.ascontiguousarray(data[np.argsort(-norms, kind="stable")[: ivf.nlist * IVF_POINTS_PER_LIST]])
        index.train(sample)
        del sample
    index.add(data)
    if mips:
        inner = index
        index = faiss.IndexPreTransform(faiss.RemapDimensionsTransform(dims, dims + 1, False), inner)
        index.ntotal = inner.ntotal
        index.is_trained = True
        data = np.ascontiguousarray(data[:, :dims])
    built = time.perf_counter() - started
    info: dict[str, Any] = {"factory": resolved, "build_seconds": round(built, 2), "search_params": {},
                            "mips_transform": bool(mips)}
    name = search_param_name(index)
    if name is not None:
        if name in params:
            info["search_params"] = {name: int(params[name])}
        elif queries is not None and queries.shape[0]:
            chosen, recall = tune_search_param(index, data, queries, name, seed)
            info["search_params"] = chosen
            info["tuned_recall@100"] = round(recall, 4)
        if name == "nprobe" and ("max_codes" in params or "max_codes" not in info["search_params"]):
            nprobe = info["search_params"].get("nprobe", _ivf(index).nprobe)
            info["search_params"]["max_codes"] = int(params.get("max_codes", ivf_max_codes(index, nprobe)))
        apply_search_params(index, info["search_params"])
    log.info("%s index %s over %d vectors built in %.1f s%s", what, resolved, data.shape[0], built,
             f"; {info['search_params']}" if info["search_params"] else "")
    return index, info


def ivf_max_codes(index: Any, nprobe: int) -> int:
    """The default cap on vectors visited per IVF search: MAX_CODES_FACTOR x nprobe x median list size."""
    ivf = _ivf(index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    median = float(np.median(sizes[sizes > 0])) if (sizes > 0).any() else 1.0
    return int(MAX_CODES_FACTOR * nprobe * max(median, 1.0))


def recall_at(index: Any, data: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean recall@k of `index` against exact inner-product search over `data`."""
    k = min(k, data.shape[0])
    exact = faiss.IndexFlatIP(data.shape[1])
    exact.add(data)
    truth = exact.search(queries, k)
    found = index.search(queries, k)
    return recall_of(truth, found)


def recall_of(truth: tuple[np.ndarray, np.ndarray], found: tuple[np.ndarray, np.ndarray],
              ties: bool = True) -> float:
    """Mean recall@k of `found` (scores, labels) against exact `truth` (scores, labels).

    With `ties`, a returned item whose exact score reaches the k-th exact score counts as a
    hit even when exact search listed another item of the same score: synthetic or real
    catalogues hold items with identical vectors, among which any choice is right.
    """
    (t_scores, t_labels), (f_scores, f_labels) = truth, found
    hits = []
    for ts, tl, fs, fl in zip(t_scores, t_labels, f_scores, f_labels):
        n = int((tl >= 0).sum())
        if n == 0:
            continue
        if ties:
            kth = ts[n - 1]
            got = int(((fl >= 0) & (fs >= kth - 1e-5 * max(1.0, abs(float(kth))))).sum())
        else:
            got = np.intersect1d(tl[tl >= 0], fl[fl >= 0]).shape[0]
        hits.append(min(got, n) / n)
    return float(np.mean(hits)) if hits else 1.0


def tune_search_param(index: Any, data: np.ndarray, queries: np.ndarray, name: str,
                      seed: int) -> tuple[dict[str, int], float]:
    """The smallest ladder value of `name` reaching TARGET_RECALL on a query sample, as search params.

    IVF steps are measured with the default `max_codes` cap first and, where the cap costs
    recall (it stops the whole search, so an overfull list probed early can crowd out the
    rest), without it (`max_codes` 0).
    """
    rng = np.random.default_rng(seed)
    sample = queries[rng.choice(queries.shape[0], size=min(TUNE_QUERIES, queries.shape[0]), replace=False)]
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    sample = sample[np.any(sample != 0, axis=1)]
    if sample.shape[0] == 0:
        return {name: LADDERS[name][2]}, 1.0
    k = min(TUNE_K, data.shape[0])
    exact = faiss.IndexFlatIP(data.shape[1])
    exact.add(data)
    truth = exact.search(sample, k)
    ladder = list(LADDERS[name])
    if name == "nprobe":
        ladder = [v for v in ladder if v < _ivf(index).nlist] + [_ivf(index).nlist]
    recall, tried = 0.0, {name: ladder[-1]}
    for value in ladder:
        options = [{name: value}]
        if name == "nprobe":
            options = [{name: value, "max_codes": ivf_max_codes(index, value)}, {name: value, "max_codes": 0}]
        for tried in options:
            apply_search_params(index, tried)
            recall = recall_of(truth, index.search(sample, k))
            log.info("  %s: recall@%d %.4f", tried, k, recall)
            if recall >= TARGET_RECALL:
                return tried, recall
    return tried, recall


def _search_params(index, selector):
    # Parameters passed to a search replace the index's own, so carry its settings over.
    if isinstance(index, faiss.IndexPreTransform):  # e.g. the MIPS transform of large bundles
        inner = _search_params(faiss.downcast_index(index.index), selector)
        params = faiss.SearchParametersPreTransform()
        params.index_params = inner
        params.inner_ref = inner  # the C++ struct holds a bare pointer: keep the object alive
        return params
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch)
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe, max_codes=index.max_codes)
    return faiss.SearchParameters(sel=selector)


# Up to this many exclusions, a search over-fetches k + len(excluded) results and drops the
# excluded ones; past it, they go into the search as an ID selector. Building a selector and
# its search parameters costs ~45 us of Python per search (more than the whole IVF search of
# a 1M-item catalogue), while a result heap a few hundred longer costs almost nothing.
OVERFETCH_MAX_EXCLUDED = 512


def faiss_search(index, queries: np.ndarray, k: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Search `index` for k results per query that are not in `excluded`.

    A short exclusion list (a typical user's history) is applied to an over-fetched result
    list; a long one goes into the search as a FAISS ID selector, so a heavy user's history
    costs a hash lookup per visited vector instead of a k + len(history) result heap. Index
    types that do not take selectors are over-fetched whatever the length. Either way each row
    holds the best k results not excluded, best first; labels may contain -1 padding, which
    callers drop.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, index.d)
    n_excluded = excluded.shape[0]
    if n_excluded > OVERFETCH_MAX_EXCLUDED:
        inner = faiss.IDSelectorBatch(excluded)
        selector = faiss.IDSelectorNot(inner)
        try:
            return index.search(queries, max(1, min(k, index.ntotal)), params=_search_params(index, selector))
        except RuntimeError:  # e.g. an index type without selector support
            pass
    scores, labels = index.search(queries, max(1, min(k + n_excluded, index.ntotal)))
    if n_excluded == 0:
        return scores, labels
    valid = labels >= 0
    valid &= ~in_sorted(labels.ravel(), np.sort(excluded)).reshape(labels.shape)
    if labels.shape[0] == 1:  # one query: the first k kept results
        keep = np.flatnonzero(valid[0])[:k]
        return scores[:, keep], labels[:, keep]
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # kept results first, in rank order
    rows = np.arange(labels.shape[0])[:, None]
    labels = labels[rows, order]
    labels[~valid[rows, order]] = -1
    return scores[rows, order], labels
