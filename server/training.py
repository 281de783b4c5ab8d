"""`hybridrec train`: events + items -> a model bundle.

Steps: read and weight events; aggregate per (user, item) into a sparse matrix; TruncatedSVD
for collaborative factors; TF-IDF (or given vectors) for content embeddings; decayed
popularity; FAISS indexes; save.
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from . import bundle, indexes, item_knn
from .config import ItemItemConfig, TrainingConfig, fingerprint
from .data import Catalogue, EventLog, parse_vectors, read_catalogue, read_events
from .errors import ConfigError, DataError
from .progress import Steps

log = logging.getLogger("hybridrec")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_item_space(events: EventLog, catalogue: Catalogue) -> tuple[list[str], np.ndarray]:
    """Catalogue items first, then items seen only in events; returns ids and each event's item index."""
    ids = list(catalogue.item_ids)
    index = {item: i for i, item in enumerate(ids)}
    extra = 0
    for item in events.item_ids:
        if item not in index:
            index[item] = len(ids)
            ids.append(item)
            extra += 1
    if extra:
        log.warning("%d items occur in events but not in the catalogue; they get empty content", extra)
    catalogue.report["items_only_in_events"] = extra
    remap = np.fromiter((index[item] for item in events.item_ids), dtype=np.int64, count=len(events.item_ids))
    return ids, remap[events.items]


def interaction_matrix(users: np.ndarray, items: np.ndarray, weights: np.ndarray,
                       shape: tuple[int, int], transform: str) -> sp.csr_matrix:
    """Sum event weights per (user, item) into CSR; duplicates are summed by scipy."""
    matrix = sp.csr_matrix((weights.astype(np.float32), (users, items)), shape=shape, dtype=np.float32)
    matrix.sum_duplicates()
    if transform == "log1p":
        matrix.data = np.log1p(matrix.data)
    return matrix


MAX_STRENGTH = 1e9  # a user-item strength past this squares past 1e18: the gram and SVD sums near float32's limit


def check_strengths(matrix: sp.csr_matrix) -> None:
    """Refuse strengths so large that the item-item gram or the SVD would overflow 32-bit floats
    (event weights of 1e20 trained a bundle of infinite item-item weights, and exited 0)."""
    if matrix.nnz and not float(matrix.data.max()) <= MAX_STRENGTH:
        raise DataError(f"user-item strengths reach {float(matrix.data.max()):.3g}, above {MAX_STRENGTH:.0e}: "
                        "the item-item model and the SVD would overflow 32-bit floats; lower "
                        "training.events.weights (or value_scaled, or the events' value column), or use "
                        "events.transform: log1p")


def check_finite(arrays: dict[str, np.ndarray]) -> None:
    """Every float array of a bundle must be finite: one that is not would serve NaN scores."""
    for name, array in arrays.items():
        if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
            raise DataError(f"training produced non-finite values in {name}; the event weights "
                            "(training.events.weights, value_scaled, the value column) are probably too large "
                            "for 32-bit floats")


def collaborative_factors(matrix: sp.csr_matrix, components: int, n_iter: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """User factors U*Sigma and item factors V, so that user . item approximates the matrix."""
    limit = min(matrix.shape) - 1
    if limit < 1:
        raise DataError("need at least 2 users and 2 items for collaborative factors")
    if components > limit:
        log.warning("collaborative.components %d > %d allowed by the data; using %d", components, limit, limit)
        components = limit
    svd = TruncatedSVD(n_components=components, n_iter=n_iter, random_state=seed)
    user_factors = svd.fit_transform(matrix).astype(np.float32)
    item_factors = np.ascontiguousarray(svd.components_.T, dtype=np.float32)
    log.info("TruncatedSVD: %d components explain %.1f%% of variance", components,
             100 * float(svd.explained_variance_ratio_.sum()))
    return user_factors, item_factors


def content_mapped_factors(item_factors: np.ndarray, content: np.ndarray, cold: np.ndarray,
                           ridge: float = 1.0, scale: float = 1.0) -> tuple[np.ndarray, int]:
    """Factors for the items no event reached, whose SVD factors are all zero (so the CF source
    could never find them): each gets the factors its content embedding predicts, by a ridge
    regression from embeddings to factors fitted on the items that have both (the attribute-to-
    feature mapping of Gantner et al., ICDM 2010), times `scale`. Returns the factors and how many
    items got them."""
    has_content = np.einsum("ij,ij->i", content, content) > 0
    fit, fill = ~cold & has_content, cold & has_content
    if not fill.any() or int(fit.sum()) < content.shape[1]:
        return item_factors, 0
    x = content[fit].astype(np.float64)
    mapping = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ item_factors[fit].astype(np.float64))
    out = item_factors.copy()
    out[fill] = (scale * (content[fill].astype(np.float64) @ mapping)).astype(item_factors.dtype)
    return out, int(fill.sum())


def content_embeddings(catalogue: Catalogue, n_items: int, fields: list[str], dims: int,
                       max_features: int, embedding_column: str | None, seed: int) -> np.ndarray:
    """L2-normalised dense item vectors. Items only in events (no text) get zero vectors."""
    n_cat = len(catalogue.item_ids)
    if embedding_column:
        given = parse_vectors(catalogue.columns[embedding_column], embedding_column, catalogue.item_ids)
        out = np.zeros((n_items, given.shape[1]), dtype=np.float32)
        out[:n_cat] = normalize(given)
        return out
    present = [f for f in fields if f in catalogue.columns]
    if not present:
        raise DataError(f"items: none of the text fields {fields} is a column of the items file")
    docs = [" ".join(catalogue.columns[f][i].replace("|", " ") for f in present) for i in range(n_cat)]
    docs += [""] * (n_items - n_cat)
    vectorizer = TfidfVectorizer(sublinear_tf=True, max_features=max_features, stop_words="english",
                                 token_pattern=r"(?u)\b[\w'-]+\b", dtype=np.float32)
    try:
        tfidf = vectorizer.fit_transform(docs)
    except ValueError as exc:  # empty vocabulary
        raise DataError(f"items: cannot build TF-IDF from fields {present}: {exc}") from None
    limit = min(tfidf.shape) - 1
    if limit >= dims and limit >= 2:
        dense = TruncatedSVD(n_components=dims, n_iter=7, random_state=seed).fit_transform(tfidf)
    elif tfidf.shape[1] <= dims:
        dense = tfidf.toarray()
    else:
        dense = TruncatedSVD(n_components=max(1, limit), n_iter=7, random_state=seed).fit_transform(tfidf)
    return normalize(dense).astype(np.float32)


def item_gram(matrix: sp.csr_matrix, pair_times: np.ndarray | None = None, session_seconds: float | None = None,
              session_weight: float = 1.0) -> np.ndarray:
    """Dense item x item gram X'X, plus, with `session_seconds`, a session term.

    The session term adds, for every user and pair of their items, w_i w_j exp(-|t_i - t_j| / tau)
    (t the pair's last event time, tau = session_seconds): items taken up within minutes of
    each other co-occur more strongly than items a year apart. The Laplacian kernel is
    positive definite, so the sum stays a valid gram for EASE and DLAE.
    """
    gram = (matrix.T @ matrix).toarray().astype(np.float64)
    if not session_seconds or session_weight <= 0:
        return gram
    if pair_times is None or pair_times.shape[0] != matrix.nnz:
        raise ValueError("a session gram needs one timestamp per stored (user, item) pair")
    session = np.zeros_like(gram)
    indptr, indices = matrix.indptr, matrix.indices
    for user in range(matrix.shape[0]):
        lo, hi = indptr[user], indptr[user + 1]
        if hi - lo < 2:
            continue
        items = indices[lo:hi]  # distinct within a row, so the fancy-indexed += below is exact
        stamps = pair_times[lo:hi].astype(np.float64)
        weights = matrix.data[lo:hi].astype(np.float64)
        kernel = np.exp(-np.abs(stamps[:, None] - stamps[None, :]) / session_seconds)
        session[np.ix_(items, items)] += kernel * weights[:, None] * weights[None, :]
    return gram + session_weight * session


def ease_matrix(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE (Steck, 2019): B = I - P diagMat(1 / diag(P)), P = (G + lam I)^-1, diag(B) = 0."""
    system = gram.copy()
    system[np.diag_indices_from(system)] += lam
    inverse = np.linalg.inv(system)
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return weights.astype(np.float32)


def dlae_matrix(gram: np.ndarray, lam: float, dropout: float) -> np.ndarray:
    """DLAE (Steck, 2020): B = (G + L)^-1 G, L = diag(p / (1 - p) * diag(G) + lam).

    Dropout p penalises each item's weights in proportion to its own popularity, which
    stands in for EASE's zero-diagonal constraint; the diagonal of B is left as solved
    (it only scores items a user already has, which the filters remove).
    """
    penalty = dropout / (1.0 - dropout) * np.diag(gram) + lam
    system = gram.copy()
    system[np.diag_indices_from(system)] += penalty
    return np.linalg.solve(system, gram).astype(np.float32)


def knn_matrix(matrix: sp.csr_matrix, neighbours: int, max_user_items: int | None = None) -> sp.csr_matrix:
    """Cosine item-item similarities, keeping each item's `neighbours` strongest (sparse throughout).

    Computed by blocks of items with a bounded cost and vectorised top-k (see `item_knn`);
    `max_user_items` caps how many of a heavy user's items count (None: all, exact cosine).
    """
    return item_knn.knn_matrix(matrix, neighbours, max_user_items)


def item_item_model(matrix: sp.csr_matrix, config: ItemItemConfig,
                    pair_times: np.ndarray | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """The item-item weights as CSR arrays (row = an item the user has, column = a candidate).

    `pair_times` (the last event time of each stored pair of `matrix`) feeds the session
    term of the dense methods' gram when `session_seconds` is set."""
    n = matrix.shape[1]
    method = config.method
    if method == "auto":
        method = "ease" if n <= config.max_dense_items else "knn"
    if method in ("ease", "dlae"):
        gram = item_gram(matrix, pair_times, config.session_seconds, config.session_weight)
        if method == "ease":
            csr = sp.csr_matrix(ease_matrix(gram, config.ease_lambda))
        else:
            csr = sp.csr_matrix(dlae_matrix(gram, config.ease_lambda, config.dlae_dropout))
    elif method == "knn":
        csr = knn_matrix(matrix, config.knn_neighbours, config.knn_max_user_items)
    else:
        csr = sp.csr_matrix((n, n), dtype=np.float32)
    csr.sort_indices()
    return method, {
        "item_item_indptr": csr.indptr.astype(np.int64),
        "item_item_indices": csr.indices.astype(np.int32),
        "item_item_data": csr.data.astype(np.float32),
    }


def popularity_scores(items: np.ndarray, weights: np.ndarray, timestamps: np.ndarray,
                      n_items: int, half_life_days: float | None) -> np.ndarray:
    """Weighted popularity in [0, 1], decayed exponentially by age when a half-life is set."""
    w = weights.astype(np.float64)
    if half_life_days:
        age_days = (timestamps.max() - timestamps) / 86400.0
        w = w * np.exp2(-age_days / half_life_days)
    pop = np.bincount(items, weights=w, minlength=n_items)
    top = pop.max()
    return (pop / top if top > 0 else pop).astype(np.float32)


def build_index(vectors: np.ndarray, factory: str, what: str, params: dict[str, Any] | None = None,
                queries: np.ndarray | None = None, seed: int = 42) -> Any:
    """A FAISS inner-product index from a factory string (or `auto`), trained if the type needs it."""
    return indexes.build_index(vectors, factory, what, params, queries, seed)[0]


MAX_ITEM_CATEGORIES = 32  # categories kept per item


def category_table(catalogue: Catalogue, field: str | None, n_items: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Each item's categories from a '|'-separated column: (items x widest) codes, -1 padded, and
    the category names the codes index (sorted). None when the column is absent or empty."""
    values = catalogue.columns.get(field) if field else None
    if field and values is None:
        log.info("items: no %r column (content.category_field); no categories stored", field)
    if not values:
        return None
    per_item = [sorted({c.strip() for c in text.split("|") if c.strip()}) for text in values]
    names = sorted({c for cats in per_item for c in cats})
    if not names:
        return None
    crowded = sum(len(cats) > MAX_ITEM_CATEGORIES for cats in per_item)
    if crowded:  # the table is items x widest: one item with thousands must not make it huge
        log.warning("items: %d items have more than %d categories in %r; only their first %d (sorted) are kept",
                    crowded, MAX_ITEM_CATEGORIES, field, MAX_ITEM_CATEGORIES)
        per_item = [cats[:MAX_ITEM_CATEGORIES] for cats in per_item]
    code = {name: i for i, name in enumerate(names)}
    table = np.full((n_items, max(len(cats) for cats in per_item)), -1, dtype=np.int32)
    for row, cats in enumerate(per_item):
        table[row, : len(cats)] = [code[c] for c in cats]
    return table, np.asarray(names, dtype=str)


def neighbour_table(index: Any, vectors: np.ndarray, k: int, chunk: int = 1 << 15) -> np.ndarray:
    """Each row's k nearest other rows by `index` (searched in batches), -1 where fewer exist.

    Searches k + 1 and drops the row itself from its results, or the last result when the
    row is not among them (an exact duplicate can displace it)."""
    n = vectors.shape[0]
    table = np.full((n, k), -1, dtype=np.int32)
    fetch = min(k + 1, index.ntotal)
    if fetch < 2:
        return table
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        _, labels = index.search(np.ascontiguousarray(vectors[start:stop], dtype=np.float32), fetch)
        drop = labels == np.arange(start, stop)[:, None]
        drop[~drop.any(axis=1), -1] = True  # exactly one dropped per row
        table[start:stop, : fetch - 1] = labels[~drop].reshape(stop - start, fetch - 1)
    return table


def user_candidate_table(index: Any, user_factors: np.ndarray, indptr: np.ndarray, seen: np.ndarray, k: int,
                         threads: int | None = None, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each user's k best items by `index` with the user's own items excluded, and their scores.

    Every row is found by `indexes.faiss_search`, the call the `faiss_cf` source makes for a
    known user without context items, so a stored row holds what that source would find.
    Rows of users without a CF vector, and the tail of a row with fewer than k items left,
    are -1 (score 0). Users are searched one at a time, a thread per core.
    """
    n_users = user_factors.shape[0]
    table = np.full((n_users, k), -1, dtype=np.int32)
    scores = np.zeros((n_users, k), dtype=np.float32)

    def fill(start: int) -> None:
        for user in range(start, min(start + chunk, n_users)):
            vector = np.asarray(user_factors[user], dtype=np.float32)
            if not vector.any():
                continue
            found_scores, found = indexes.faiss_search(
                index, vector, k, seen[indptr[user]:indptr[user + 1]].astype(np.int64))
            keep = found[0] >= 0
            width = int(keep.sum())
            table[user, :width] = found[0][keep]
            scores[user, :width] = found_scores[0][keep]

    omp_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # parallel over users instead
    try:
        with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            list(pool.map(fill, range(0, n_users, chunk)))
    finally:
        faiss.omp_set_num_threads(omp_threads)
    return table, scores


def user_histories(matrix: sp.csr_matrix, users: np.ndarray, items: np.ndarray,
                   timestamps: np.ndarray, event_codes: np.ndarray, event_weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per user: items, summed weights, last timestamp and strongest event type, as CSR arrays.

    The CSR matrix after `sum_duplicates` lists (user, item) pairs in sorted key order, so a
    group-by over events sorted by the same key lines up with it entry for entry.
    """
    key = users * matrix.shape[1] + items

    def last_of_group(*sort_keys: np.ndarray) -> np.ndarray:
        order = np.lexsort((*sort_keys, key))
        ordered = key[order]
        return order[np.r_[ordered[1:] != ordered[:-1], True]]

    latest = last_of_group(timestamps)
    strongest = last_of_group(timestamps, event_weights)
    if latest.shape[0] != matrix.nnz:  # would mean the alignment above no longer holds
        raise DataError("internal error: history does not line up with the interaction matrix")
    return {
        "history_indptr": matrix.indptr.astype(np.int64),
        "history_items": matrix.indices.astype(np.int32),
        "history_weights": matrix.data.astype(np.float32),
        "history_last_ts": timestamps[latest].astype(np.int64),
        "history_event": event_codes[strongest].astype(np.int16),
    }


def train(events_path: str | Path, items_path: str | Path, config: TrainingConfig,
          out_dir: str | Path, config_path: str | Path | None = None) -> dict[str, Any]:
    """Train a bundle into `out_dir`; returns its manifest."""
    bundle.check_replaceable(Path(out_dir))  # now, not after minutes of training
    steps = Steps("train", 8 + bool(config.content.neighbours) + bool(config.collaborative.user_candidates)
                  + (config.collaborative.cold_items == "content"))
    with steps.step(f"reading events {events_path}"):
        events = read_events(events_path, config.events)
    with steps.step(f"reading items {items_path}"):
        catalogue = read_catalogue(items_path, config.content.text_fields, config.content.embedding_column,
                                   config.content.category_field)
        item_ids, item_of_event = build_item_space(events, catalogue)
    n_users, n_items = len(events.user_ids), len(item_ids)
    with steps.step(f"interaction matrix ({n_users} users x {n_items} items)"):
        matrix = interaction_matrix(events.users, item_of_event, events.weights, (n_users, n_items),
                                    config.events.transform)
        check_strengths(matrix)
        histories = user_histories(matrix, events.users, item_of_event, events.timestamps,
                                   events.event_codes, events.weights)
    with steps.step(f"collaborative factors (TruncatedSVD, {config.collaborative.components} components)"):
        user_factors, item_factors = collaborative_factors(
            matrix, config.collaborative.components, config.collaborative.n_iter, config.seed)
    with steps.step(f"item-item model ({config.item_item.method})"):
        item_item_method, item_item = item_item_model(matrix, config.item_item, histories["history_last_ts"])
    with steps.step("content embeddings"):
        content = content_embeddings(catalogue, n_items, config.content.text_fields, config.content.dims,
                                     config.content.max_features, config.content.embedding_column, config.seed)
        popularity = popularity_scores(item_of_event, events.weights, events.timestamps, n_items,
                                       config.popularity.half_life_days)
    mapped = 0
    if config.collaborative.cold_items == "content":
        with steps.step("CF factors of items without events, from their content"):
            item_factors, mapped = content_mapped_factors(item_factors, content, np.asarray(matrix.getnnz(axis=0)) == 0,
                                                          scale=config.collaborative.cold_item_scale)
    with steps.step(f"FAISS indexes (cf: {indexes.resolve_factory(config.collaborative.index, n_items)}, "
                    f"content: {indexes.resolve_factory(config.content.index, n_items)})"):
        cf_index, cf_info = indexes.build_index(item_factors, config.collaborative.index, "collaborative",
                                                config.collaborative.index_params, user_factors, config.seed)
        content_index, content_info = indexes.build_index(content, config.content.index, "content",
                                                          config.content.index_params, content, config.seed)
        faiss_indexes = {"cf": cf_index, "content": content_index}
    extra: dict[str, np.ndarray] = {}
    if config.content.neighbours:
        with steps.step(f"content neighbours ({config.content.neighbours} per item, batch search)"):
            extra["content_neighbours"] = neighbour_table(content_index, content, config.content.neighbours)
    if config.collaborative.user_candidates:
        n_candidates = config.collaborative.user_candidates
        with steps.step(f"CF candidates per user ({n_candidates} per user, history excluded)"):
            extra["cf_user_items"], extra["cf_user_scores"] = user_candidate_table(
                cf_index, user_factors, histories["history_indptr"], histories["history_items"], n_candidates)
    categories = category_table(catalogue, config.content.category_field, n_items)
    if categories is not None:
        extra["item_categories"], extra["category_names"] = categories
    titles = catalogue.columns.get("title") or []
    titles = titles + [""] * (n_items - len(titles))
    user_id_array = np.asarray(events.user_ids, dtype=str)
    item_id_array = np.asarray(item_ids, dtype=str)
    arrays = {
        "user_ids": user_id_array,
        "item_ids": item_id_array,
        "user_order": bundle.id_order(user_id_array),
        "item_order": bundle.id_order(item_id_array),
        "item_titles": np.asarray([t or i for t, i in zip(titles, item_ids)], dtype=str),
        "user_factors": user_factors,
        "item_factors": item_factors,
        "item_content": content,
        "popularity": popularity,
        **histories,
        **item_item,
        **extra,
    }
    check_finite(arrays)
    data_fingerprint = {"events_sha256": file_sha256(events_path), "items_sha256": file_sha256(items_path)}
    config_dict = config.to_dict()
    manifest = {
        "model_version": f"{bundle.now_rfc3339()[:10]}-{fingerprint([config_dict, data_fingerprint])[:12]}",
        "created_at": bundle.now_rfc3339(),
        "config": config_dict,
        "config_path": str(config_path) if config_path else None,
        "config_sha256": fingerprint(config_dict),
        "data": {**data_fingerprint, "events_path": str(events_path), "items_path": str(items_path),
                 "events_report": events.report, "items_report": catalogue.report},
        "counts": {"users": n_users, "items": n_items, "interactions": int(matrix.nnz),
                   "events": int(events.users.shape[0])},
        "event_types": events.event_types,
        "dims": {"cf": int(item_factors.shape[1]), "content": int(content.shape[1])},
        "cf_from_content": mapped,  # items whose CF factors their content predicted (no events)
        "categories": 0 if categories is None else int(categories[1].shape[0]),
        "item_item": {"method": item_item_method, "nnz": int(item_item["item_item_data"].shape[0])},
        "indexes": {"cf": cf_info, "content": content_info},
    }
    with steps.step(f"writing bundle {out_dir}"):
        bundle.save_bundle(out_dir, arrays, faiss_indexes, manifest)
    return manifest
