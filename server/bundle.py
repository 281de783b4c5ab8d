"""The model bundle: a directory of `.npy` arrays, FAISS index files and a manifest.

No pickles: every array is saved with `allow_pickle=False` and ids are fixed-width
unicode arrays. `load_model` validates the manifest, the format version and every
file's size and checksum, and refuses a bad bundle with one clear line.

Loading stays fast for million-user bundles: checksums are computed on parallel threads
(hashlib releases the GIL), large arrays are memory-mapped (read-only, shared between
worker processes through the page cache), and ids map to rows through sorted id arrays
and binary search (`IdIndex`) instead of Python dicts; the sort orders are computed at
training time and saved in the bundle.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from .errors import BundleError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# name -> (dtype kind check, ndim)
ARRAYS: dict[str, int] = {
    "user_ids": 1,
    "item_ids": 1,
    "item_titles": 1,
    "user_factors": 2,
    "item_factors": 2,
    "item_content": 2,
    "popularity": 1,
    "history_indptr": 1,
    "history_items": 1,
    "history_weights": 1,
    "history_last_ts": 1,
    "history_event": 1,
    "item_item_indptr": 1,
    "item_item_indices": 1,
    "item_item_data": 1,
}
# Saved by current training; computed at load when an older bundle lacks them.
OPTIONAL_ARRAYS: dict[str, int] = {"user_order": 1, "item_order": 1}
# Saved only when the training config asks for them.
EXTRA_ARRAYS: dict[str, int] = {"content_neighbours": 2, "cf_user_items": 2, "cf_user_scores": 2,
                                 "item_categories": 2, "category_names": 1}
INDEXES = ("cf", "content")
MMAP_MIN_BYTES = 16 << 20  # with mmap=None, arrays from this size up are memory-mapped
HASH_THREADS = 4


class IdIndex(Mapping):
    """id -> row over a fixed-width unicode id array, by binary search in its sorted order.

    Behaves like the dict it replaces (`get`, `in`, `[]`, `len`, iteration in row order) and
    adds `rows(ids)` for many ids at once. Building it costs one gather of the ids (no Python
    object per id), which matters at millions of users.
    """

    def __init__(self, ids: np.ndarray, order: np.ndarray | None = None) -> None:
        self._ids = ids
        self._order = np.argsort(ids, kind="stable") if order is None else np.asarray(order, dtype=np.int64)
        self._sorted = ids[self._order]

    def is_sorted(self) -> bool:
        """Whether the order really sorts the ids (a bundle's saved order is checked at load)."""
        return bool(np.all(self._sorted[1:] >= self._sorted[:-1]))

    def _row(self, key: Any) -> int:
        if not isinstance(key, str) or self._sorted.shape[0] == 0:
            return -1
        width = self._sorted.dtype.itemsize // 4  # fixed-width unicode: 4 bytes a character
        if len(key) > width:  # cannot be stored here; searching would also cast the whole array
            return -1
        pos = int(np.searchsorted(self._sorted, np.asarray(key, dtype=self._sorted.dtype)))
        if pos < self._sorted.shape[0] and self._sorted[pos] == key:
            return int(self._order[pos])
        return -1

    def __getitem__(self, key: Any) -> int:
        row = self._row(key)
        if row < 0:
            raise KeyError(key)
        return row

    def get(self, key: Any, default: Any = None) -> Any:
        row = self._row(key)
        return default if row < 0 else row

    def __contains__(self, key: Any) -> bool:
        return self._row(key) >= 0

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __iter__(self) -> Iterator[str]:
        return (str(i) for i in self._ids.tolist())

    def rows(self, keys: Iterable[str]) -> np.ndarray:
        """Rows of many ids at once; -1 for unknown ones."""
        keys = np.asarray(list(keys), dtype=str)
        if keys.shape[0] == 0 or self._sorted.shape[0] == 0:
            return np.full(keys.shape[0], -1, dtype=np.int64)
        too_long = np.char.str_len(keys) > self._sorted.dtype.itemsize // 4
        keys = keys.astype(self._sorted.dtype)  # cast the few keys, never the million ids
        pos = np.minimum(np.searchsorted(self._sorted, keys), self._sorted.shape[0] - 1)
        found = (self._sorted[pos] == keys) & ~too_long  # a truncated long key must not match
        return np.where(found, self._order[pos], -1).astype(np.int64)


def id_order(ids: np.ndarray) -> np.ndarray:
    """The sort order an IdIndex over `ids` needs (saved in the bundle at training time)."""
    return np.argsort(ids, kind="stable").astype(np.int64)


@dataclass(frozen=True)
class Model:
    """An immutable loaded bundle. A request takes one reference and uses only it."""

    path: Path
    manifest: dict[str, Any]
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_titles: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_content: np.ndarray
    popularity: np.ndarray
    history_indptr: np.ndarray
    history_items: np.ndarray
    history_weights: np.ndarray
    history_last_ts: np.ndarray
    history_event: np.ndarray
    cf_index: Any
    content_index: Any
    user_index: IdIndex = field(repr=False)
    item_index: IdIndex = field(repr=False)
    popular_order: np.ndarray = field(repr=False)
    item_item: sp.csr_matrix = field(repr=False)
    # (items x k) nearest content neighbours, -1 padded; None when training did not store them
    content_neighbours: np.ndarray | None = field(default=None, repr=False)
    # (users x k) each training user's best CF items, history excluded, -1 padded, and their
    # scores; None when training did not store them (`collaborative.user_candidates`)
    cf_user_items: np.ndarray | None = field(default=None, repr=False)
    cf_user_scores: np.ndarray | None = field(default=None, repr=False)
    # (items x w) each item's category codes (rows of category_names), -1 padded; None when the
    # catalogue had no category field (`content.category_field`)
    item_categories: np.ndarray | None = field(default=None, repr=False)
    category_names: np.ndarray | None = field(default=None, repr=False)

    @property
    def version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def event_types(self) -> list[str]:
        return list(self.manifest["event_types"])

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])

    def history(self, user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(items, weights, last timestamps, strongest event codes) of a known user."""
        lo, hi = int(self.history_indptr[user]), int(self.history_indptr[user + 1])
        return (
            self.history_items[lo:hi],
            self.history_weights[lo:hi],
            self.history_last_ts[lo:hi],
            self.history_event[lo:hi],
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_replaceable(out_dir: Path) -> None:
    """Refuse an output path that holds anything but a bundle: a mistyped --out never deletes
    unrelated files (an empty directory, or none, is fine)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise BundleError(f"{out_dir} exists and is not a directory (a model bundle is one); refusing to replace it")
    if any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists():
        raise BundleError(f"{out_dir} exists and is not a hybridrec model bundle; refusing to overwrite it")


def save_bundle(
    out_dir: str | Path,
    arrays: dict[str, np.ndarray],
    indexes: dict[str, Any],
    manifest: dict[str, Any],
) -> Path:
    """Write a bundle atomically: into a sibling temp dir, then renamed into place.

    An existing directory is replaced only if it is itself a bundle (or empty), so a
    mistyped --out never deletes unrelated files.
    """
    out_dir = Path(out_dir)
    missing = set(ARRAYS) - set(arrays)
    if missing:
        raise BundleError(f"cannot save bundle: arrays missing: {', '.join(sorted(missing))}")
    check_replaceable(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files: dict[str, dict[str, Any]] = {}
    try:
        for name in [*ARRAYS, *(n for n in [*OPTIONAL_ARRAYS, *EXTRA_ARRAYS] if n in arrays)]:
            path = tmp / f"{name}.npy"
            np.save(path, arrays[name], allow_pickle=False)
        for name in INDEXES:
            faiss.write_index(indexes[name], str(tmp / f"{name}.faiss"))
        paths = sorted(tmp.iterdir())
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            digests = list(pool.map(_sha256, paths))
        for path, digest in zip(paths, digests):
            files[path.name] = {"bytes": path.stat().st_size, "sha256": digest}
        manifest = dict(manifest, format_version=FORMAT_VERSION, files=files)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    except BaseException:  # a full disk or ^C: leave no partial copy of the arrays beside the bundle
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out_dir)
    return out_dir


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """The manifest of a bundle, after checking it exists, parses and has our version."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise BundleError(f"model bundle {model_dir} does not exist (train one with `hybridrec train`)")
    path = model_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{model_dir} is not a hybridrec model bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is corrupt: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} is corrupt: not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{model_dir} has bundle format version {version!r}; this hybridrec reads version "
            f"{FORMAT_VERSION}: retrain it with this version"
        )
    return manifest


def _verify_files(model_dir: Path, manifest: dict[str, Any], checksums: bool) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{model_dir}/{MANIFEST} is corrupt: no file list")
    expected = {f"{name}.npy" for name in ARRAYS} | {f"{name}.faiss" for name in INDEXES}
    absent = sorted(expected - set(files))
    if absent:
        raise BundleError(f"{model_dir}/{MANIFEST} is corrupt: it does not list {absent[0]}")
    for name, meta in files.items():
        path = model_dir / name
        if not isinstance(meta, dict):
            raise BundleError(f"{model_dir}/{MANIFEST} is corrupt: bad entry for {name}")
        if not path.is_file():
            raise BundleError(f"model bundle {model_dir} is incomplete: {name} is missing")
        if path.stat().st_size != meta.get("bytes"):
            raise BundleError(f"model bundle {model_dir} is corrupt: {name} has the wrong size")
    if not checksums:
        return
    names = sorted(files, key=lambda n: -int(files[n]["bytes"]))  # biggest first: threads finish together
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        digests = dict(zip(names, pool.map(lambda n: _sha256(model_dir / n), names)))
    for name, meta in files.items():
        if digests[name] != meta.get("sha256"):
            raise BundleError(f"model bundle {model_dir} is corrupt: {name} fails its sha256 check")


def load_model(model_dir: str | Path, verify_checksums: bool = True, mmap: bool | None = None) -> Model:
    """Load and validate a bundle. Raises BundleError with one line on any problem.

    `mmap`: True maps every array and FAISS index read-only, False reads them all into memory,
    None (the default) maps those of MMAP_MIN_BYTES and more. A mapped index keeps its vectors
    in the page cache (FAISS's IO_FLAG_MMAP_IFC), so worker processes serving one bundle share
    them instead of each holding a private copy; searches read the same bytes either way.
    """
    from .indexes import apply_search_params

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    _verify_files(model_dir, manifest, verify_checksums)
    arrays: dict[str, np.ndarray] = {}
    listed = manifest["files"]
    wanted = dict(ARRAYS, **{n: d for n, d in {**OPTIONAL_ARRAYS, **EXTRA_ARRAYS}.items() if f"{n}.npy" in listed})
    for name, ndim in wanted.items():
        mapped = mmap if mmap is not None else int(listed[f"{name}.npy"]["bytes"]) >= MMAP_MIN_BYTES
        try:
            arr = np.load(model_dir / f"{name}.npy", allow_pickle=False, mmap_mode="r" if mapped else None)
        except (OSError, ValueError) as exc:
            raise BundleError(f"model bundle {model_dir} is corrupt: {name}.npy: {exc}") from None
        if arr.ndim != ndim:
            raise BundleError(f"model bundle {model_dir} is corrupt: {name}.npy has {arr.ndim} dims, not {ndim}")
        arrays[name] = arr
    indexes = {}
    for name in INDEXES:
        try:
            mapped = mmap if mmap is not None else int(listed[f"{name}.faiss"]["bytes"]) >= MMAP_MIN_BYTES
            indexes[name] = faiss.read_index(str(model_dir / f"{name}.faiss"),
                                             faiss.IO_FLAG_MMAP_IFC if mapped else 0)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise BundleError(f"model bundle {model_dir} is corrupt: {name}.faiss: {first}") from None
        stored = manifest.get("indexes", {}).get(name, {}) if isinstance(manifest.get("indexes"), dict) else {}
        apply_search_params(indexes[name], stored.get("search_params", {}) if isinstance(stored, dict) else {})
    _check_shapes(model_dir, arrays, indexes)
    user_ids, item_ids = arrays["user_ids"], arrays["item_ids"]
    user_order, item_order = arrays.pop("user_order", None), arrays.pop("item_order", None)
    neighbours = arrays.pop("content_neighbours", None)
    if neighbours is not None and (neighbours.shape[0] != item_ids.shape[0] or neighbours.dtype.kind not in "iu"
                                   or (neighbours.size and (int(neighbours.max()) >= item_ids.shape[0]
                                                            or int(neighbours.min()) < -1))):
        raise BundleError(f"model bundle {model_dir} is corrupt: content_neighbours does not match the other arrays")
    cf_items, cf_scores = arrays.pop("cf_user_items", None), arrays.pop("cf_user_scores", None)
    if (cf_items is None) != (cf_scores is None) or (cf_items is not None and (
            cf_items.shape[0] != user_ids.shape[0] or cf_items.shape != cf_scores.shape
            or cf_items.dtype.kind not in "iu" or cf_scores.dtype.kind != "f")):
        # shapes and types only: a range check would read the whole table at every start
        raise BundleError(f"model bundle {model_dir} is corrupt: cf_user_items and cf_user_scores do not match "
                          "the other arrays")
    categories, category_names = arrays.pop("item_categories", None), arrays.pop("category_names", None)
    if (categories is None) != (category_names is None) or (categories is not None and (
            categories.shape[0] != item_ids.shape[0] or categories.dtype.kind not in "iu"
            or (categories.size and (int(categories.max()) >= category_names.shape[0]
                                     or int(categories.min()) < -1)))):
        raise BundleError(f"model bundle {model_dir} is corrupt: item_categories and category_names do not match "
                          "the other arrays")
    for name, order, ids in (("user_order", user_order, user_ids), ("item_order", item_order, item_ids)):
        if order is not None and (order.shape[0] != ids.shape[0]
                                  or (order.shape[0] and (int(order.min()) < 0 or int(order.max()) >= ids.shape[0]))):
            raise BundleError(f"model bundle {model_dir} is corrupt: {name} does not match the other arrays")
    user_index, item_index = IdIndex(user_ids, user_order), IdIndex(item_ids, item_order)
    for name, index in (("user_order", user_index), ("item_order", item_index)):
        if not index.is_sorted():
            raise BundleError(f"model bundle {model_dir} is corrupt: {name} does not match the other arrays")
    popularity = arrays["popularity"]
    return Model(
        path=model_dir,
        manifest=manifest,
        cf_index=indexes["cf"],
        content_index=indexes["content"],
        user_index=user_index,
        item_index=item_index,
        # Stable sort: ties keep catalogue order, so popularity results are deterministic.
        popular_order=np.argsort(-popularity, kind="stable").astype(np.int64),
        content_neighbours=neighbours,
        cf_user_items=cf_items,
        cf_user_scores=cf_scores,
        item_categories=categories,
        category_names=category_names,
        item_item=sp.csr_matrix(
            (arrays.pop("item_item_data"), arrays.pop("item_item_indices"), arrays.pop("item_item_indptr")),
            shape=(item_ids.shape[0], item_ids.shape[0]),
        ),
        **arrays,
    )


def _check_shapes(model_dir: Path, a: dict[str, np.ndarray], indexes: dict[str, Any]) -> None:
    n_users, n_items = a["user_ids"].shape[0], a["item_ids"].shape[0]
    checks = [
        ("item_titles", a["item_titles"].shape[0] == n_items),
        ("user_factors", a["user_factors"].shape[0] == n_users),
        ("item_factors", a["item_factors"].shape[0] == n_items),
        ("item_factors", a["item_factors"].shape[1] == a["user_factors"].shape[1]),
        ("item_content", a["item_content"].shape[0] == n_items),
        ("popularity", a["popularity"].shape[0] == n_items),
        ("history_indptr", a["history_indptr"].shape[0] == n_users + 1),
        ("cf.faiss", indexes["cf"].ntotal == n_items and indexes["cf"].d == a["item_factors"].shape[1]),
        ("content.faiss", indexes["content"].ntotal == n_items and indexes["content"].d == a["item_content"].shape[1]),
    ]
    checks.append(("item_item_indptr", a["item_item_indptr"].shape[0] == n_items + 1))
    checks.append(("item_item_data", a["item_item_data"].shape[0] == a["item_item_indices"].shape[0]
                   == int(a["item_item_indptr"][-1] if n_items else 0)))
    checks.append(("item_item_indices", a["item_item_indices"].shape[0] == 0
                   or int(a["item_item_indices"].max()) < n_items))
    nnz = a["history_items"].shape[0]
    for name in ("history_weights", "history_last_ts", "history_event"):
        checks.append((name, a[name].shape[0] == nnz))
    checks.append(("history_indptr", n_users == 0 or int(a["history_indptr"][-1]) == nnz))
    for name, ok in checks:
        if not ok:
            raise BundleError(f"model bundle {model_dir} is corrupt: {name} does not match the other arrays")


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
