"""Loading refuses missing, corrupt and other-version bundles with one clear line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hybridrec.server.bundle import FORMAT_VERSION, load_model
from hybridrec.server.errors import BundleError


@pytest.fixture()
def bundle_copy(demo_model: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(demo_model, copy)
    return copy


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_loads_and_checks_shapes(demo_model: Path) -> None:
    model = load_model(demo_model)
    assert model.cf_index.ntotal == model.num_items
    assert model.manifest["format_version"] == FORMAT_VERSION


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as exc:
        load_model(tmp_path / "nope")
    assert "does not exist" in _one_line(exc)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as exc:
        load_model(tmp_path)
    assert "manifest.json is missing" in _one_line(exc)


def test_other_format_version(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as exc:
        load_model(bundle_copy)
    assert f"format version {FORMAT_VERSION + 1}" in _one_line(exc)


def test_missing_file(bundle_copy: Path) -> None:
    (bundle_copy / "cf.faiss").unlink()
    with pytest.raises(BundleError) as exc:
        load_model(bundle_copy)
    assert "cf.faiss is missing" in _one_line(exc)


def test_flipped_byte_fails_checksum(bundle_copy: Path) -> None:
    path = bundle_copy / "item_factors.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as exc:
        load_model(bundle_copy)
    assert "item_factors.npy fails its sha256 check" in _one_line(exc)


def test_truncated_file(bundle_copy: Path) -> None:
    path = bundle_copy / "popularity.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(BundleError) as exc:
        load_model(bundle_copy)
    assert "popularity.npy has the wrong size" in _one_line(exc)


def test_garbled_manifest(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError) as exc:
        load_model(bundle_copy)
    assert "is corrupt" in _one_line(exc)


def test_bundle_holds_no_pickles(demo_model: Path) -> None:
    import numpy as np

    for path in demo_model.glob("*.npy"):
        np.load(path, allow_pickle=False)  # raises if an object array was saved


def test_stored_neighbours_out_of_range_are_refused(bundle_copy: Path) -> None:
    import hashlib

    import numpy as np

    model = load_model(bundle_copy)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    path = bundle_copy / "content_neighbours.npy"

    def store(value: int) -> None:  # a table with one entry set to `value`, listed in the manifest
        table = np.zeros((model.num_items, 4), dtype=np.int32)
        table[3, 1] = value
        np.save(path, table)
        manifest["files"][path.name] = {"bytes": path.stat().st_size,
                                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        (bundle_copy / "manifest.json").write_text(json.dumps(manifest))

    for bad in (model.num_items, -2):
        store(bad)
        with pytest.raises(BundleError) as exc:
            load_model(bundle_copy)
        assert _one_line(exc).endswith("content_neighbours does not match the other arrays")
    store(-1)  # -1 pads rows with fewer neighbours
    assert load_model(bundle_copy).content_neighbours.shape == (model.num_items, 4)


def _mapped_files() -> set[str]:
    return {line.split(None, 5)[5].strip() for line in Path("/proc/self/maps").read_text().splitlines()
            if len(line.split(None, 5)) == 6}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc to see file mappings")
def test_mmap_maps_the_faiss_indexes_and_searches_alike(demo_model: Path) -> None:
    import numpy as np

    mapped = load_model(demo_model, mmap=True)
    files = _mapped_files()
    for name in ("cf", "content"):  # workers share these pages instead of each copying them
        assert str((demo_model / f"{name}.faiss").resolve()) in files
    read = load_model(demo_model, mmap=False)
    queries = np.random.default_rng(0).normal(size=(20, mapped.cf_index.d)).astype(np.float32)
    for a, b in ((mapped.cf_index, read.cf_index), (mapped.content_index, read.content_index)):
        queries = queries[:, : a.d] if a.d <= queries.shape[1] else np.pad(queries, ((0, 0), (0, a.d - queries.shape[1])))
        da, ia = a.search(np.ascontiguousarray(queries), 10)
        db, ib = b.search(np.ascontiguousarray(queries), 10)
        assert ia.tolist() == ib.tolist() and np.array_equal(da, db)


def test_stored_user_candidates_must_match_the_users(bundle_copy: Path) -> None:
    import hashlib

    import numpy as np

    model = load_model(bundle_copy)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())

    def store(name: str, array) -> None:  # listed in the manifest, as training writes it
        path = bundle_copy / f"{name}.npy"
        np.save(path, array)
        manifest["files"][path.name] = {"bytes": path.stat().st_size,
                                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        (bundle_copy / "manifest.json").write_text(json.dumps(manifest))

    store("cf_user_items", np.full((model.num_users, 5), -1, dtype=np.int32))
    with pytest.raises(BundleError) as exc:  # the scores are missing
        load_model(bundle_copy)
    assert _one_line(exc).endswith("cf_user_items and cf_user_scores do not match the other arrays")
    store("cf_user_scores", np.zeros((model.num_users - 1, 5), dtype=np.float32))  # a user short
    with pytest.raises(BundleError):
        load_model(bundle_copy)
    store("cf_user_scores", np.zeros((model.num_users, 5), dtype=np.float32))
    assert load_model(bundle_copy).cf_user_items.shape == (model.num_users, 5)


def test_stored_categories_must_match_their_names(bundle_copy: Path) -> None:
    import hashlib

    import numpy as np

    model = load_model(bundle_copy)
    assert model.item_categories is not None and model.item_categories.shape[0] == model.num_items
    names = model.category_names.shape[0]
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    path = bundle_copy / "item_categories.npy"

    def store(value: int) -> None:  # the stored table with one entry set to `value`
        table = np.array(model.item_categories)
        table[2, 0] = value
        np.save(path, table)
        manifest["files"][path.name] = {"bytes": path.stat().st_size,
                                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        (bundle_copy / "manifest.json").write_text(json.dumps(manifest))

    for bad in (names, -2):
        store(bad)
        with pytest.raises(BundleError) as exc:
            load_model(bundle_copy)
        assert _one_line(exc).endswith("item_categories and category_names do not match the other arrays")
    store(-1)  # -1: no category in that slot
    assert load_model(bundle_copy).item_categories[2, 0] == -1
