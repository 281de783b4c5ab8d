"""The model bundle: a directory of `.npy` arrays, FAISS index files and a manifest.

No pickles: every array is saved with `allow_pickle=False` and ids are fixed-width
unicode arrays. `load_model` validates the manifest, the format version and every
file's size and checksum, and refuses a bad bundle with one clear line.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
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
INDEXES = ("cf", "content")


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
    user_index: dict[str, int] = field(repr=False)
    item_index: dict[str, int] = field(repr=False)
    popular_order: np.ndarray = field(repr=False)
    item_item: sp.csr_matrix = field(repr=False)

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
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists():
        raise BundleError(f"{out_dir} exists and is not a hybridrec model bundle; refusing to overwrite it")
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files: dict[str, dict[str, Any]] = {}
    for name in ARRAYS:
        path = tmp / f"{name}.npy"
        np.save(path, arrays[name], allow_pickle=False)
    for name in INDEXES:
        faiss.write_index(indexes[name], str(tmp / f"{name}.faiss"))
    for path in sorted(tmp.iterdir()):
        files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = dict(manifest, format_version=FORMAT_VERSION, files=files)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
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
        if not path.is_file():
            raise BundleError(f"model bundle {model_dir} is incomplete: {name} is missing")
        if path.stat().st_size != meta.get("bytes"):
            raise BundleError(f"model bundle {model_dir} is corrupt: {name} has the wrong size")
        if checksums and _sha256(path) != meta.get("sha256"):
            raise BundleError(f"model bundle {model_dir} is corrupt: {name} fails its sha256 check")


def load_model(model_dir: str | Path, verify_checksums: bool = True, mmap: bool = False) -> Model:
    """Load and validate a bundle. Raises BundleError with one line on any problem."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    _verify_files(model_dir, manifest, verify_checksums)
    arrays: dict[str, np.ndarray] = {}
    for name, ndim in ARRAYS.items():
        try:
            arr = np.load(model_dir / f"{name}.npy", allow_pickle=False, mmap_mode="r" if mmap else None)
        except (OSError, ValueError) as exc:
            raise BundleError(f"model bundle {model_dir} is corrupt: {name}.npy: {exc}") from None
        if arr.ndim != ndim:
            raise BundleError(f"model bundle {model_dir} is corrupt: {name}.npy has {arr.ndim} dims, not {ndim}")
        arrays[name] = arr
    indexes = {}
    for name in INDEXES:
        try:
            indexes[name] = faiss.read_index(str(model_dir / f"{name}.faiss"))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise BundleError(f"model bundle {model_dir} is corrupt: {name}.faiss: {first}") from None
    _check_shapes(model_dir, arrays, indexes)
    user_ids, item_ids = arrays["user_ids"], arrays["item_ids"]
    popularity = arrays["popularity"]
    return Model(
        path=model_dir,
        manifest=manifest,
        cf_index=indexes["cf"],
        content_index=indexes["content"],
        user_index={str(u): i for i, u in enumerate(user_ids.tolist())},
        item_index={str(v): i for i, v in enumerate(item_ids.tolist())},
        # Stable sort: ties keep catalogue order, so popularity results are deterministic.
        popular_order=np.argsort(-popularity, kind="stable").astype(np.int64),
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
