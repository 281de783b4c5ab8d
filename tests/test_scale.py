"""Scale work: the synthetic scale-data generator and the columnar event reader."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from hybridrec.server.cli import main
from hybridrec.server.config import TrainingConfig
from hybridrec.server.data import read_catalogue, read_events
from hybridrec.server.scale_data import generate


@pytest.fixture(scope="module")
def scale_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate(tmp_path_factory.mktemp("scale"), n_users=2000, n_items=1000, n_events=40000, seed=5)


def test_generator_shape_and_determinism(scale_data: dict[str, Path], tmp_path: Path) -> None:
    again = generate(tmp_path, n_users=2000, n_items=1000, n_events=40000, seed=5)
    for name in ("events", "items"):
        assert again[name].read_bytes() == scale_data[name].read_bytes()
    other = generate(tmp_path / "other", n_users=2000, n_items=1000, n_events=40000, seed=6)
    assert other["events"].read_bytes() != scale_data["events"].read_bytes()
    log = read_events(scale_data["events"], TrainingConfig().events)
    assert log.report["rows"] == log.report["used"] == 40000 and not log.report["skipped"]
    assert len(log.user_ids) == 2000  # every user has an event when events >= users
    catalogue = read_catalogue(scale_data["items"], ["title", "description", "category", "tags"], None)
    assert len(catalogue.item_ids) == 1000
    assert all(catalogue.columns[f][0] for f in ("title", "description", "category", "tags"))
    assert set(log.event_types) <= {"view", "click", "search", "message", "start_booking", "booking", "rating"}


def test_generator_is_skewed_and_clustered(scale_data: dict[str, Path]) -> None:
    log = read_events(scale_data["events"], TrainingConfig().events)
    per_item = np.sort(np.bincount(log.items))[::-1]
    per_user = np.sort(np.bincount(log.users))[::-1]
    # Zipf-like: the top 1% of items and users take far more than 1% of the events
    assert per_item[:10].sum() / per_item.sum() > 0.05
    assert per_user[:20].sum() / per_user.sum() > 0.04
    assert per_user.max() > 10 * np.median(per_user)
    # a user's events concentrate in few categories
    catalogue = read_catalogue(scale_data["items"], ["category"], None)
    category = {i: c for i, c in zip(catalogue.item_ids, catalogue.columns["category"])}
    cats = np.array([category[log.item_ids[i]] for i in log.items])
    heavy = np.argsort(-np.bincount(log.users))[:50]
    shares = []
    for user in heavy:
        _, counts = np.unique(cats[log.users == user], return_counts=True)
        shares.append(np.sort(counts)[::-1][:3].sum() / counts.sum())
    n_categories = len(set(catalogue.columns["category"]))
    assert n_categories >= 8 and np.mean(shares) > 0.6


def test_scale_data_command(tmp_path: Path, capsys) -> None:
    assert main(["scale-data", "--out", str(tmp_path), "--users", "50", "--items", "20", "--events", "300"]) == 0
    assert "events.csv" in capsys.readouterr().out
    assert len((tmp_path / "events.csv").read_text().splitlines()) == 301


MESSY = """user_id,item_id,event_type,timestamp,value
u1,i1,view,1700000000,
 u1 ,i2,VIEW,1700000001.9,
u2,,click,1700000002,
,i1,click,1700000003,
u3,i3,,1700000004,
u3,i3,click,notatime,
u3,i4,rating,2024-01-02T03:04:05Z,4
u3,i5,rating,2024-01-02T03:04:05+02:00,x
u4,i5,rating,2024-02-30T03:04:05,3
u4,i6,rating,2024-02-29,5
u4,i6,rating,2024-02-29 10:00:00, 2.5 
u4,i6,rating,1900-03-01T23:59:59-05:30,1
u5,i7,teleport,1700000010,
u5,i7,Teleport,0123,
u5,i8,booking,-5,
u5,i8,booking,99999999999999999,
u6,i9,click,2024-01-02T03:04:05.123456+05:30,
u6,i9,click, 1700000000 ,
u6,i10,rating,1700000000,
"u7","i,11",view,1700000000,
u8,i1,view,2024-13-01T00:00:00,
u1,i2,click,1700000100,
"""


def _assert_same(a, b) -> None:
    for name in ("user_ids", "item_ids", "event_types", "report"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("users", "items", "weights", "timestamps", "event_codes"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


@pytest.mark.parametrize("policy", ["default_weight", "reject"])
def test_arrow_reader_equals_row_reader_on_messy_input(tmp_path: Path, policy: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "e.csv"
    path.write_text(MESSY)
    config = TrainingConfig().events
    config.unknown_event_type = policy
    with caplog.at_level(logging.WARNING, logger="hybridrec"):
        fast = read_events(path, config, engine="arrow")
    fast_log = caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hybridrec"):
        slow = read_events(path, config, engine="python")
    _assert_same(fast, slow)
    assert fast_log == caplog.text and "bad timestamp" in fast_log
    assert fast.report["skipped"] == {"missing item_id": 1, "missing user_id": 1, "missing event_type": 1,
                                      "bad timestamp": 3, "bad value": 1}
    assert fast.report["unknown_event_types"] == {"teleport": 2}


def test_arrow_reader_equals_row_reader_on_generated_data(scale_data: dict[str, Path]) -> None:
    config = TrainingConfig().events
    _assert_same(read_events(scale_data["events"], config, engine="arrow"),
                 read_events(scale_data["events"], config, engine="python"))


def test_ragged_rows_fall_back_to_the_row_reader(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "e.csv"
    path.write_text("user_id,item_id,event_type,timestamp\nu1,i1,view,1700000000\nu2,i2\n"
                    "u3,i3,view,1700000000,extra\n")
    with caplog.at_level(logging.INFO, logger="hybridrec"):
        log = read_events(path, TrainingConfig().events)
    assert "reading row by row" in caplog.text
    assert log.report["skipped"] == {"missing event_type": 1} and log.report["used"] == 2


# --- item kNN by blocks


def _reference_knn(matrix, k: int) -> np.ndarray:
    """Dense cosine between item columns, each row keeping its k largest off-diagonal values."""
    dense = matrix.toarray().astype(np.float64)
    norms = np.linalg.norm(dense, axis=0)
    unit = dense / np.where(norms > 0, norms, 1.0)
    sims = unit.T @ unit
    np.fill_diagonal(sims, 0.0)
    out = np.zeros_like(sims)
    for row in range(sims.shape[0]):
        nonzero = np.nonzero(sims[row])[0]
        top = nonzero[np.argsort(-sims[row, nonzero], kind="stable")[:k]]
        out[row, top] = sims[row, top]
    return out


@pytest.mark.parametrize("k", [1, 3, 50])
@pytest.mark.parametrize("block_work", [1, 40, 10**9])
def test_knn_by_blocks_equals_dense_reference(k: int, block_work: int) -> None:
    import scipy.sparse as sp

    from hybridrec.server.item_knn import knn_matrix

    matrix = sp.random(80, 30, density=0.15, random_state=4, format="csr", dtype=np.float32)
    matrix.data += 0.1
    got = knn_matrix(matrix, k, block_work=block_work)
    assert got.shape == (30, 30)
    assert np.allclose(got.toarray(), _reference_knn(matrix, k), atol=1e-6)


def test_top_per_row_breaks_ties_by_position() -> None:
    from hybridrec.server.item_knn import top_per_row

    data = np.array([1, 1, 1, 1, 2, 2, 0.5, 3, -3, 3, 2], dtype=np.float32)
    indptr = np.array([0, 4, 7, 7, 11])
    assert top_per_row(indptr, data, 2).tolist() == [True, True, False, False, True, True, False,
                                                     True, False, True, False]


def test_user_cap_keeps_each_users_strongest_items() -> None:
    import scipy.sparse as sp

    from hybridrec.server.item_knn import cap_user_items

    matrix = sp.csr_matrix(np.array([[5, 1, 4, 3, 0], [0, 0, 1, 0, 2]], dtype=np.float32))
    capped = cap_user_items(matrix, 2).toarray()
    assert capped.tolist() == [[5, 0, 4, 0, 0], [0, 0, 1, 0, 2]]


# --- FAISS index choice


def test_auto_index_is_flat_for_small_and_ivf_for_large_catalogues() -> None:
    from hybridrec.server.indexes import AUTO_FLAT_MAX_ITEMS, resolve_factory

    assert resolve_factory("auto", AUTO_FLAT_MAX_ITEMS) == "Flat"
    assert resolve_factory("auto", 1_000_000) == "IVF1024,Flat"
    assert resolve_factory("auto", 100_000) == "IVF1024,Flat"  # at least AUTO_MIN_LISTS
    assert resolve_factory("auto", AUTO_FLAT_MAX_ITEMS + 1) == "IVF1024,Flat"
    assert resolve_factory("auto", 4_000_000) == "IVF2048,Flat"
    assert resolve_factory("HNSW32", 10) == "HNSW32"


def test_search_params_are_tuned_stored_and_applied_at_load(tmp_path: Path) -> None:
    import faiss

    from hybridrec.server.indexes import apply_search_params, build_index, recall_at

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4000, 16)).astype(np.float32)
    queries = rng.normal(size=(200, 16)).astype(np.float32)
    index, info = build_index(vectors, "IVF64,Flat", "collaborative", {}, queries)
    assert info["factory"] == "IVF64,Flat" and "nprobe" in info["search_params"]
    assert info["tuned_recall@100"] >= 0.96
    path = tmp_path / "x.faiss"
    faiss.write_index(index, str(path))
    loaded = faiss.read_index(str(path))
    apply_search_params(loaded, info["search_params"])
    assert faiss.extract_index_ivf(loaded).nprobe == info["search_params"]["nprobe"]
    assert recall_at(loaded, vectors, queries, 100) >= 0.95
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    hnsw, info = build_index(unit, "HNSW16", "content", {"efSearch": 77, "efConstruction": 20})
    assert not info["mips_transform"]
    assert info["search_params"] == {"efSearch": 77} and hnsw.hnsw.efConstruction == 20
    loaded = faiss.deserialize_index(faiss.serialize_index(hnsw))
    loaded.hnsw.efSearch = 16
    apply_search_params(loaded, info["search_params"])
    assert loaded.hnsw.efSearch == 77


def test_max_codes_bounds_a_search_through_one_overfull_list() -> None:
    import faiss

    from hybridrec.plugins.candidates import faiss_search
    from hybridrec.server.indexes import MAX_CODES_FACTOR, apply_search_params, build_index

    # a few hundred strong vectors and a long tail of near-zero ones, as SVD gives rare items
    rng = np.random.default_rng(2)
    strong = rng.normal(size=(640, 8)).astype(np.float32)
    tail = (rng.normal(size=(20000, 8)) * 1e-4).astype(np.float32)
    vectors = np.vstack([strong, tail])
    queries = rng.normal(size=(100, 8)).astype(np.float32)
    index, info = build_index(vectors, "IVF16,Flat", "collaborative", {}, queries)
    ivf = faiss.extract_index_ivf(index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    assert sizes.max() > 0.5 * vectors.shape[0]  # one list holds most of the tail
    nprobe, cap = info["search_params"]["nprobe"], info["search_params"]["max_codes"]
    assert info["tuned_recall@100"] >= 0.96  # measured with whatever cap is stored
    # the cap is the default one, or 0 (none) where the default cost recall
    expected = MAX_CODES_FACTOR * nprobe * np.median(sizes[sizes > 0])
    assert cap == 0 or (abs(cap - expected) <= MAX_CODES_FACTOR * nprobe and cap < sizes.max())
    balanced, info_b = build_index(rng.normal(size=(4000, 8)).astype(np.float32), "IVF16,Flat", "collaborative",
                                   {"nprobe": 4})
    assert info_b["search_params"]["max_codes"] > 4 * 4000 / 16  # never reached with even lists
    _, info_c = build_index(vectors, "IVF16,Flat", "collaborative", {"nprobe": 8, "max_codes": 123})
    assert info_c["search_params"] == {"nprobe": 8, "max_codes": 123}
    loaded = faiss.deserialize_index(faiss.serialize_index(index))
    apply_search_params(loaded, info["search_params"])
    assert faiss.extract_index_ivf(loaded).max_codes == info["search_params"]["max_codes"]
    # the top results of a strong query are strong vectors, cap or no cap, selector or not
    exact = np.argsort(-(vectors @ queries[0]))[:10]
    _, labels = faiss_search(loaded, queries[0], 10, np.array([vectors.shape[0] - 1], dtype=np.int64))
    assert len(set(labels[0].tolist()) & set(exact.tolist())) >= 8


def test_mips_transform_keeps_scores_and_takes_selectors() -> None:
    import faiss

    from hybridrec.plugins.candidates import faiss_search
    from hybridrec.server.indexes import build_index

    rng = np.random.default_rng(1)
    vectors = (rng.normal(size=(3000, 12)) * rng.gamma(1.0, 1.0, size=(3000, 1))).astype(np.float32)
    index, info = build_index(vectors, "IVF32,Flat", "collaborative", {"nprobe": 32})
    assert info["mips_transform"] and isinstance(index, faiss.IndexPreTransform) and index.d == 12
    query = rng.normal(size=(1, 12)).astype(np.float32)
    exact = vectors @ query[0]
    top = np.argsort(-exact)[:10]
    scores, labels = index.search(query, 10)  # nprobe = nlist: exhaustive
    assert labels[0].tolist() == top.tolist() and np.allclose(scores[0], exact[top], rtol=1e-4)
    loaded = faiss.deserialize_index(faiss.serialize_index(index))
    faiss.extract_index_ivf(loaded).nprobe = 32
    scores, labels = faiss_search(loaded, query[0], 5, top[:3].astype(np.int64))
    assert labels[0].tolist() == top[3:8].tolist()


# --- large config, id index, bundle


def test_large_config_is_accepted_by_train_and_serve() -> None:
    from hybridrec.server.config import BUILTIN_CONFIG_DIR, load_training_config
    from hybridrec.server.pipeline import load_serving_config
    from hybridrec.server.plugin_manager import Plugins

    path = BUILTIN_CONFIG_DIR / "large.yaml"
    training = load_training_config(path)
    assert training.collaborative.index == "auto" and training.item_item.method == "knn"
    assert training.item_item.knn_max_user_items == 50
    serving = load_serving_config(path, Plugins())
    assert serving.default_pipeline == "hybrid" and "item_item" in serving.pipelines


def test_bad_index_params_are_refused(tmp_path: Path) -> None:
    from hybridrec.server.config import load_training_config
    from hybridrec.server.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("training:\n  collaborative: {index_params: {nprob: 8}}\n")
    with pytest.raises(ConfigError, match="index_params.nprob"):
        load_training_config(path)


def test_id_index_behaves_like_a_dict() -> None:
    from hybridrec.server.bundle import IdIndex, id_order

    ids = np.array(["u10", "u2", "a", "u1", "zz-long-id"])
    index = IdIndex(ids, id_order(ids))
    reference = {str(v): i for i, v in enumerate(ids.tolist())}
    for key in [*reference, "u", "u3", "zz-long-id-longer", "", "b"]:
        assert index.get(key, -1) == reference.get(key, -1)
        assert (key in index) == (key in reference)
    assert index["u2"] == 1 and len(index) == 5 and list(index) == ids.tolist()
    with pytest.raises(KeyError):
        index["nope"]
    assert index.rows(["a", "nope", "zz-long-id"]).tolist() == [2, -1, 4]
    # a key longer than the stored width is unknown, whole or truncated, one by one or in bulk
    assert index.get("zz-long-idX", -1) == -1 and index.rows(["zz-long-idX", "u1"]).tolist() == [-1, 3]
    assert IdIndex(np.array([], dtype=str)).get("x", -1) == -1


def test_scale_bundle_trains_loads_and_refuses_a_bad_order(scale_data: dict[str, Path], tmp_path: Path) -> None:
    import json

    from hybridrec.server.bundle import load_model
    from hybridrec.server.config import BUILTIN_CONFIG_DIR, load_training_config
    from hybridrec.server.errors import BundleError
    from hybridrec.server.training import train

    config = load_training_config(BUILTIN_CONFIG_DIR / "large.yaml")
    config.collaborative.components = 8
    config.content.dims = 8
    config.collaborative.index = "IVF16,Flat"
    train(scale_data["events"], scale_data["items"], config, tmp_path / "m")
    model = load_model(tmp_path / "m")
    manifest = model.manifest
    assert manifest["indexes"]["cf"]["factory"] == "IVF16,Flat"
    nprobe = manifest["indexes"]["cf"]["search_params"]["nprobe"]
    import faiss
    assert faiss.extract_index_ivf(model.cf_index).nprobe == nprobe
    assert manifest["item_item"]["method"] == "knn" and model.item_item.nnz > 0
    for i in (0, 17, model.num_users - 1):
        assert model.user_index[str(model.user_ids[i])] == i
    assert model.item_index.get("i000003") == int(np.nonzero(model.item_ids == "i000003")[0][0])
    # an order that does not match the ids is refused with one line
    order = np.load(tmp_path / "m" / "item_order.npy")
    np.save(tmp_path / "m" / "item_order.npy", order + 1)
    data = (tmp_path / "m" / "item_order.npy").read_bytes()
    meta = json.loads((tmp_path / "m" / "manifest.json").read_text())
    import hashlib
    meta["files"]["item_order.npy"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="item_order does not match") as exc:
        load_model(tmp_path / "m")
    assert "\n" not in str(exc.value)
