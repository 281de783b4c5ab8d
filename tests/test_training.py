"""Training: event weighting, row accounting, matrices, content vectors, the saved bundle."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from hybridrec.server.bundle import load_model
from hybridrec.server.config import TrainingConfig, load_training_config
from hybridrec.server.data import parse_timestamp, read_catalogue, read_events
from hybridrec.server.errors import ConfigError, DataError
from hybridrec.server.service import similar_items
from hybridrec.server.training import content_mapped_factors, train

from .helpers import basic_events, write_events, write_items


def tiny_config() -> TrainingConfig:
    config = TrainingConfig()
    config.collaborative.components = 4
    config.content.dims = 6
    return config


@pytest.fixture()
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    return write_events(tmp_path / "events.csv", basic_events()), write_items(tmp_path / "items.csv")


def test_default_event_weights_follow_the_reference(tmp_path: Path) -> None:
    path = write_events(tmp_path / "e.csv", [
        ("u", "a", "booking", 1, ""), ("u", "a", "start_booking", 2, ""), ("u", "b", "click", 3, ""),
        ("u", "c", "view", 4, ""),
    ])
    log = read_events(path, TrainingConfig().events)
    assert log.weights.tolist() == pytest.approx([1.0, 1.0, 0.2, 0.05])


def test_bad_rows_are_counted_by_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_events(tmp_path / "e.csv", [
        ("u1", "a", "view", "1700000000", ""),
        ("", "a", "view", "1700000000", ""),
        ("u1", "", "view", "1700000000", ""),
        ("u1", "a", "view", "yesterday-ish", ""),
        ("u2", "b", "click", "2024-05-01T10:00:00Z", ""),
    ])
    with caplog.at_level(logging.WARNING, logger="hybridrec"):
        log = read_events(path, TrainingConfig().events)
    assert log.report["used"] == 2
    assert log.report["skipped"] == {"missing user_id": 1, "missing item_id": 1, "bad timestamp": 1}
    assert log.report["rows"] == 5
    assert "skipped 3 unusable rows" in caplog.text
    assert log.timestamps[1] == 1714557600


def test_unknown_event_types_default_weight_or_reject(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_events(tmp_path / "e.csv", [("u", "a", "wishlist", 1, ""), ("u", "b", "view", 2, ""),
                                             ("v", "a", "wishlist", 3, "")])
    config = TrainingConfig().events
    config.default_weight = 0.3
    with caplog.at_level(logging.WARNING, logger="hybridrec"):
        log = read_events(path, config)
    assert log.weights.tolist() == pytest.approx([0.3, 0.05, 0.3])
    assert log.report["unknown_event_types"] == {"wishlist": 2}
    assert "wishlist x2" in caplog.text
    config.unknown_event_type = "reject"
    log = read_events(path, config)
    assert log.report["used"] == 1 and log.report["rows"] == 3


def test_rating_value_scales_its_weight(tmp_path: Path) -> None:
    path = write_events(tmp_path / "e.csv", [("u", "a", "rating", 1, "5"), ("u", "b", "rating", 2, "2")])
    log = read_events(path, TrainingConfig().events)
    assert log.weights.tolist() == pytest.approx([0.5, 0.2])


@pytest.mark.parametrize("engine", ["arrow", "python"])
def test_numbers_that_cannot_be_used_are_bad_rows(tmp_path: Path, engine: str) -> None:
    """Infinite or out-of-range timestamps once raised OverflowError, and NaN, infinite or negative
    values reached TruncatedSVD as NaN (with log1p) and failed it with a page of text."""
    path = write_events(tmp_path / "e.csv", [
        ("u1", "a", "view", "1700000000", ""), ("u1", "b", "view", "inf", ""), ("u1", "c", "view", "1e30", ""),
        ("u2", "a", "rating", "1700000000", "nan"), ("u2", "b", "rating", "1700000000", "inf"),
        ("u2", "c", "rating", "1700000000", "1e400"), ("u2", "d", "rating", "1700000000", "-5"),
        ("u2", "e", "rating", "1700000000", "0"),
    ])
    log = read_events(path, TrainingConfig().events, engine=engine)
    assert log.report["skipped"] == {"bad timestamp": 2, "bad value": 4}
    assert log.item_ids == ["a", "e"] and log.weights.tolist() == pytest.approx([0.05, 0.0])


def test_missing_columns_name_the_file(tmp_path: Path) -> None:
    path = write_events(tmp_path / "e.csv", [("u", "a", 1)], header=("user_id", "item_id", "timestamp"))
    with pytest.raises(DataError, match=r"e\.csv: missing column\(s\) event_type"):
        read_events(path, TrainingConfig().events)


def test_files_that_are_not_utf8_name_the_file(tmp_path: Path) -> None:
    events = tmp_path / "e.csv"
    events.write_bytes(b"user_id,item_id,event_type,timestamp\nu1,i1,view,1700000000\nu\xff2,i2,view,1700000001\n")
    for engine in ("auto", "python"):
        with pytest.raises(DataError, match=r"events file .*e\.csv: not UTF-8 text \(invalid start byte\)"):
            read_events(events, TrainingConfig().events, engine=engine)
    items = tmp_path / "i.csv"
    items.write_bytes(b"item_id,title\ni1,ok\ni2,caf\xe9\n")
    with pytest.raises(DataError, match=r"items file .*i\.csv: not UTF-8 text"):
        read_catalogue(items, ["title"], None)


@pytest.mark.parametrize("engine", ["arrow", "python"])
def test_a_log_in_milliseconds_is_warned_about(tmp_path: Path, engine: str, caplog: pytest.LogCaptureFixture) -> None:
    seconds = [("u1", "i1", "view", 1_700_000_000, ""), ("u2", "i2", "view", 1_700_000_100, "")]
    for scale, warned in ((1, False), (1000, True)):
        path = write_events(tmp_path / f"e{scale}.csv", [(u, i, e, t * scale, v) for u, i, e, t, v in seconds])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hybridrec"):
            read_events(path, TrainingConfig().events, engine=engine)
        assert ("look like milliseconds" in caplog.text) == warned, caplog.text


def test_parse_timestamp_forms() -> None:
    assert parse_timestamp("1700000000") == 1700000000
    assert parse_timestamp("1700000000.5") == 1700000000
    assert parse_timestamp("1970-01-02T00:00:00") == 86400
    assert parse_timestamp("") is None and parse_timestamp("soon") is None


def test_train_writes_a_consistent_bundle(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    events, items = tiny
    manifest = train(events, items, tiny_config(), tmp_path / "model")
    model = load_model(tmp_path / "model")
    assert model.version == manifest["model_version"]
    assert model.num_items == 8  # i8 has no events but is in the catalogue
    assert model.num_users == 12
    # aggregation: view 0.05 + booking 1.0 per pair
    items_, weights, _, events_ = model.history(model.user_index["m0"])
    assert weights.tolist() == pytest.approx([1.05] * len(items_))
    assert {model.event_types[c] for c in events_.tolist()} == {"booking"}
    # content vectors are L2-normalised, including the item without events
    norms = np.linalg.norm(model.item_content, axis=1)
    assert norms == pytest.approx(np.ones(8), abs=1e-5)
    # the new item is closest to the other guitar item by content
    i8, i6 = model.item_index["i8"], model.item_index["i6"]
    sims = model.item_content @ model.item_content[i8]
    sims[i8] = -1
    assert int(np.argmax(sims)) == i6
    assert model.popularity[i8] == 0.0 and model.popularity.max() == pytest.approx(1.0)
    assert manifest["data"]["events_report"]["used"] == len(basic_events())
    assert len(manifest["data"]["events_sha256"]) == 64


def test_svd_factors_reconstruct_the_matrix_order(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    events, items = tiny
    train(events, items, tiny_config(), tmp_path / "model")
    model = load_model(tmp_path / "model")
    u = model.user_index["s0"]
    scores = model.item_factors @ model.user_factors[u]
    spanish = {model.item_index["i4"], model.item_index["i5"]}
    top2 = set(np.argsort(-scores)[:2].tolist())
    assert top2 == spanish


@pytest.mark.parametrize("vector", ["[NaN, 1]", "[Infinity, 1]", "[1e300, 1]"])
def test_embedding_column_of_numbers_float32_cannot_hold_is_refused(tmp_path: Path, vector: str) -> None:
    events = write_events(tmp_path / "e.csv", basic_events())
    items = tmp_path / "items.csv"
    items.write_text(f'item_id,embedding\ni1,"[1, 2]"\ni2,"{vector}"\n')
    config = tiny_config()
    config.content.embedding_column = "embedding"
    with pytest.raises(DataError, match="embedding of item 'i2' must be a non-empty JSON array of finite numbers"):
        train(events, items, config, tmp_path / "model")


def test_precomputed_embedding_column(tmp_path: Path) -> None:
    events = write_events(tmp_path / "e.csv", basic_events())
    items = tmp_path / "items.csv"
    rng = np.random.default_rng(0)
    with items.open("w") as handle:
        handle.write("item_id,title,embedding\n")
        for i in range(1, 9):
            handle.write(f'i{i},Item {i},"{json.dumps(rng.normal(size=16).round(4).tolist())}"\n')
    config = tiny_config()
    config.content.embedding_column = "embedding"
    train(events, items, config, tmp_path / "model")
    model = load_model(tmp_path / "model")
    assert model.item_content.shape == (8, 16)
    assert np.linalg.norm(model.item_content, axis=1) == pytest.approx(np.ones(8), abs=1e-5)


def test_ragged_embedding_column_is_refused(tmp_path: Path) -> None:
    events = write_events(tmp_path / "e.csv", basic_events())
    items = tmp_path / "items.csv"
    items.write_text('item_id,embedding\ni1,"[1, 2]"\ni2,"[1, 2, 3]"\n')
    config = tiny_config()
    config.content.embedding_column = "embedding"
    with pytest.raises(DataError, match="item 'i2' has 3 numbers; others have 2"):
        train(events, items, config, tmp_path / "model")


def test_similar_items_of_an_item_with_neither_text_nor_events_is_empty(tmp_path: Path) -> None:
    rows = [("i1", "algebra", "maths", "maths", ""), ("i2", "geometry", "maths", "maths", ""),
            ("i3", "", "", "", ""), ("i4", "", "", "", "")]  # i3: no text, no events; i4: no text, events
    items = write_items(tmp_path / "items.csv", rows)
    baskets = {"u0": ("i1", "i2"), "u1": ("i2", "i4"), "u2": ("i1", "i4"), "u3": ("i1", "i2", "i4"), "u4": ("i4",)}
    events = write_events(tmp_path / "events.csv", [(user, item, "booking", 1_700_000_000 + n, "")
                                                     for n, (user, basket) in enumerate(baskets.items())
                                                     for item in basket])
    train(events, items, tiny_config(), tmp_path / "m")
    model = load_model(tmp_path / "m")
    index = {str(i): n for n, i in enumerate(model.item_ids)}
    assert similar_items(model, index["i3"], 3)[0].shape == (0,)  # not arbitrary items at score 0
    by_factors, scores = similar_items(model, index["i4"], 3)
    factors = np.asarray(model.item_factors, dtype=np.float64)
    cosine = factors @ factors[index["i4"]] / np.maximum(np.linalg.norm(factors, axis=1)
                                                         * np.linalg.norm(factors[index["i4"]]), 1e-12)
    exact = [i for i in np.argsort(-cosine, kind="stable").tolist() if i != index["i4"]][:3]
    assert by_factors.tolist() == exact and np.allclose(scores, cosine[exact], atol=1e-5)
    assert similar_items(model, index["i1"], 1)[0].tolist() == [index["i2"]]  # by text


def test_items_only_in_events_are_kept_with_empty_content(tmp_path: Path) -> None:
    rows = basic_events() + [("m0", "ghost", "view", 1_700_000_500, "")]
    events = write_events(tmp_path / "e.csv", rows)
    items = write_items(tmp_path / "items.csv")
    manifest = train(events, items, tiny_config(), tmp_path / "model")
    model = load_model(tmp_path / "model")
    assert "ghost" in model.item_index
    assert not model.item_content[model.item_index["ghost"]].any()
    assert manifest["data"]["items_report"]["items_only_in_events"] == 1


def test_training_config_errors_name_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  collaborative:\n    componentz: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: training\.collaborative: unknown key 'componentz'; valid keys: cold_item_scale, cold_items, components"):
        load_training_config(path)
    path.write_text("training:\n  events:\n    unknown_event_type: ignore\n")
    with pytest.raises(ConfigError, match="not one of: default_weight, reject"):
        load_training_config(path)
    path.write_text("training:\n  content:\n    dims: many\n")
    with pytest.raises(ConfigError, match="training.content.dims: expected"):
        load_training_config(path)


@pytest.mark.parametrize("section,error", [
    ("content: {text_fields: [1, 2]}", "training.content.text_fields: must be a list of column names"),
    ("events: {weights: {view: .nan}}", "training.events.weights.view: must be a finite number >= 0, got nan"),
    ("events: {default_weight: -1}", "training.events.default_weight: must be a finite number >= 0"),
    ("events: {value_scaled: {rating: 0}}", "training.events.value_scaled.rating: must be a finite number > 0"),
    ("item_item: {ease_lambda: .nan}", "training.item_item.ease_lambda: expected a finite number, got nan"),
    ("item_item: {session_seconds: .nan}", "training.item_item.session_seconds: expected a finite number, got nan"),
    ("popularity: {half_life_days: -5}", "training.popularity.half_life_days: must be > 0 or null"),
    ("seed: -1", "training.seed: must be between 0 and 4294967295"),
    ("collaborative: {n_iter: -1}", "training.collaborative.n_iter: must be >= 0"),
    ("content: {max_features: 0}", "training.content.max_features: must be >= 1"),
    ("collaborative: {cold_items: popularity}", "training.collaborative.cold_items: 'popularity' is not one of: content, none"),
    ("collaborative: {cold_item_scale: 0}", "training.collaborative.cold_item_scale: must be > 0 and <= 1, got 0"),
    ("collaborative: {cold_item_scale: .nan}", "training.collaborative.cold_item_scale: expected a finite number, got nan"),
])
def test_training_config_values_that_would_break_training_are_refused(tmp_path: Path, section: str,
                                                                        error: str) -> None:
    """Each once failed mid-training with a traceback or a library's words, or trained a bundle of
    NaN or negative weights or of popularity growing with age (a .nan passed every `x <= 0` check)."""
    path = tmp_path / "c.yaml"
    path.write_text(f"training:\n  {section}\n")
    with pytest.raises(ConfigError) as exc:
        load_training_config(path)
    assert str(exc.value).startswith(f"{path}: {error}")


def test_faiss_factory_string_from_config(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    events, items = tiny
    config = tiny_config()
    config.content.index = "HNSW8"
    train(events, items, config, tmp_path / "model")
    model = load_model(tmp_path / "model")
    assert "HNSW" in type(model.content_index).__name__
    config.collaborative.index = "NoSuchIndex"
    with pytest.raises(ConfigError, match="not a valid FAISS index factory string"):
        train(events, items, config, tmp_path / "model2")


def test_out_dir_that_is_not_a_bundle_is_never_overwritten(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    events, items = tiny
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(Exception, match="not a hybridrec model bundle; refusing"):
        train(events, items, tiny_config(), precious)
    assert (precious / "thesis.txt").read_text() == "do not delete"
    # both refused before any training: a broken events file behind them is never read
    with pytest.raises(Exception, match="not a hybridrec model bundle; refusing"):
        train(tmp_path / "absent.csv", items, tiny_config(), precious)
    with pytest.raises(Exception, match="thesis.txt exists and is not a directory"):
        train(tmp_path / "absent.csv", items, tiny_config(), precious / "thesis.txt")
    # but a bundle is replaced by a retrain
    train(events, items, tiny_config(), tmp_path / "model")
    train(events, items, tiny_config(), tmp_path / "model")
    assert load_model(tmp_path / "model").num_items == 8


def test_a_failed_retrain_keeps_the_bundle_and_leaves_no_partial_copy(tiny: tuple[Path, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    events, items = tiny
    out = tmp_path / "model"
    version = train(events, items, tiny_config(), out)["model_version"]
    bad = write_events(tmp_path / "bad.csv", [("u", "a", "view", "inf", "")])
    with pytest.raises(DataError, match="no usable events"):
        train(bad, items, tiny_config(), out)

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hybridrec.server.bundle.faiss.write_index", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(events, items, tiny_config(), out)
    assert load_model(out).version == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "events.csv", "items.csv", "model"]


def test_ease_weights_satisfy_the_closed_form(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    import scipy.sparse as sp

    from hybridrec.server.training import ease_matrix, item_gram

    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1], [0, 1, 1, 1]], dtype=np.float32))
    lam = 0.5
    b = ease_matrix(item_gram(x), lam)
    assert np.allclose(np.diag(b), 0.0)
    # EASE's stationarity condition: (X'X + lam I) B = X'X - diag(mu) for some mu, so off-diagonal
    # entries of (X'X + lam I) B - X'X vanish.
    gram = (x.T @ x).toarray()
    residual = (gram + lam * np.eye(4)) @ b - gram
    off = residual - np.diag(np.diag(residual))
    assert np.abs(off).max() < 1e-4


def test_item_item_method_auto_and_knn(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    events, items = tiny
    config = tiny_config()
    manifest = train(events, items, config, tmp_path / "ease")
    assert manifest["item_item"]["method"] == "ease"  # 8 items <= max_dense_items
    config.item_item.max_dense_items = 4
    config.item_item.knn_neighbours = 2
    manifest = train(events, items, config, tmp_path / "knn")
    assert manifest["item_item"]["method"] == "knn"
    model = load_model(tmp_path / "knn")
    per_row = np.diff(model.item_item.indptr)
    assert per_row.max() <= 2
    # cosine neighbours of a maths item are maths items
    i1 = model.item_index["i1"]
    neighbours = {str(model.item_ids[j]) for j in model.item_item[i1].indices}
    assert neighbours <= {"i2", "i3"}
    config.item_item.method = "none"
    train(events, items, config, tmp_path / "none")
    assert load_model(tmp_path / "none").item_item.nnz == 0


def test_dlae_weights_solve_their_normal_equations() -> None:
    import scipy.sparse as sp

    from hybridrec.server.training import dlae_matrix, item_gram

    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1], [0, 1, 1, 1]], dtype=np.float32))
    gram = item_gram(x)
    lam, p = 0.5, 0.6
    b = dlae_matrix(gram, lam, p)
    penalty = np.diag(p / (1 - p) * np.diag(gram) + lam)
    assert np.allclose((gram + penalty) @ b, gram, atol=1e-4)
    # a stronger dropout shrinks the weights towards zero
    assert np.abs(dlae_matrix(gram, lam, 0.9)).sum() < np.abs(b).sum()


def test_session_gram_matches_a_pairwise_sum() -> None:
    import scipy.sparse as sp

    from hybridrec.server.training import item_gram

    # user 0: items 0, 1 a minute apart and item 2 a day later; user 1: items 1, 2 together
    users = np.array([0, 0, 0, 1, 1])
    items = np.array([0, 1, 2, 1, 2])
    weights = np.array([1.0, 2.0, 1.0, 1.0, 3.0], dtype=np.float32)
    stamps = np.array([0, 60, 86_400, 500, 500])
    x = sp.csr_matrix((weights, (users, items)), shape=(2, 3))
    tau = 300.0
    got = item_gram(x, stamps, session_seconds=tau, session_weight=2.0)  # CSR keeps this row-major order
    expected = (x.T @ x).toarray()
    for u in (0, 1):
        rows = np.nonzero(users == u)[0]
        for a in rows:
            for b in rows:
                kernel = np.exp(-abs(stamps[a] - stamps[b]) / tau)
                expected[items[a], items[b]] += 2.0 * weights[a] * weights[b] * kernel
    assert np.allclose(got, expected)
    # the session term links 0 and 1 (a minute apart) far more than 0 and 2 (a day apart)
    plain = (x.T @ x).toarray()
    assert got[0, 1] - plain[0, 1] > 100 * (got[0, 2] - plain[0, 2])
    with pytest.raises(ValueError, match="one timestamp per stored"):
        item_gram(x, stamps[:2], session_seconds=tau)


def test_neighbour_table_is_exact_search_without_the_item_itself() -> None:
    import faiss

    from hybridrec.server.training import neighbour_table

    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    vectors[7] = vectors[3]  # an exact duplicate may outrank the item itself
    index = faiss.IndexFlatIP(8)
    index.add(vectors)
    table = neighbour_table(index, vectors, 10, chunk=64)  # several batches
    assert table.shape == (300, 10) and table.dtype == np.int32
    assert not (table == np.arange(300)[:, None]).any()
    sims = vectors @ vectors.T
    for row in (0, 3, 7, 150, 299):  # the same similarities as exact search (ties may swap ids)
        expected = np.sort(np.delete(sims[row], row))[::-1][:10]
        assert sims[row, table[row]] == pytest.approx(expected, rel=1e-5)
    assert 7 in table[3].tolist() and 3 in table[7].tolist()
    # a catalogue smaller than k + 1 pads with -1
    small = neighbour_table(index, vectors[:2], 400)
    assert (small[:, :299] >= 0).all() and (small[:, 299:] == -1).all()


def test_content_neighbours_are_stored_when_configured(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    events, items = tiny
    config = tiny_config()
    train(events, items, config, tmp_path / "plain")
    assert load_model(tmp_path / "plain").content_neighbours is None  # off by default
    config.content.neighbours = 3
    train(events, items, config, tmp_path / "model")
    model = load_model(tmp_path / "model")
    table = model.content_neighbours
    assert table.shape == (model.num_items, 3)
    assert not (table == np.arange(model.num_items)[:, None]).any()
    assert ((table >= -1) & (table < model.num_items)).all()
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  content:\n    neighbours: -1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: training\.content\.neighbours: must be an integer >= 0"):
        load_training_config(path)


def test_user_candidate_table_is_what_the_cf_search_finds() -> None:
    import faiss

    from hybridrec.server.indexes import OVERFETCH_MAX_EXCLUDED, faiss_search
    from hybridrec.server.training import user_candidate_table

    rng = np.random.default_rng(11)
    items = rng.normal(size=(2000, 8)).astype(np.float32)
    users = rng.normal(size=(40, 8)).astype(np.float32)
    users[5] = 0.0  # no CF vector: no row
    quantiser = faiss.IndexFlatIP(8)
    index = faiss.IndexIVFFlat(quantiser, 8, 16, faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    index.add(items)
    index.nprobe = 4  # approximate: the table must repeat the search's misses too
    lengths = rng.integers(0, 30, size=40)
    lengths[7] = OVERFETCH_MAX_EXCLUDED + 100  # a heavy user: excluded by ID selector
    lengths[9] = 1995  # fewer items left than asked for: padded
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    seen = np.concatenate([np.sort(rng.choice(2000, size=n, replace=False)) for n in lengths]).astype(np.int32)
    table, scores = user_candidate_table(index, users, indptr, seen, 12, threads=3, chunk=7)
    assert table.shape == scores.shape == (40, 12) and table.dtype == np.int32
    assert (table[5] == -1).all() and (scores[5] == 0).all()
    width = int((table[9] >= 0).sum())  # at most the 5 items left (fewer: the search is approximate)
    assert 0 < width <= 5 and (table[9, width:] == -1).all()
    for user in range(40):
        if user == 5:
            continue
        history = seen[indptr[user]:indptr[user + 1]].astype(np.int64)
        found_scores, found = faiss_search(index, users[user], 12, history)
        keep = found[0] >= 0
        assert table[user, : keep.sum()].tolist() == found[0][keep].tolist()
        assert scores[user, : keep.sum()] == pytest.approx(found_scores[0][keep])
        assert not np.isin(table[user], history).any()


def test_user_candidates_are_stored_when_configured(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    events, items = tiny
    config = tiny_config()
    train(events, items, config, tmp_path / "plain")
    plain = load_model(tmp_path / "plain")
    assert plain.cf_user_items is None and plain.cf_user_scores is None  # off by default
    config.collaborative.user_candidates = 4
    train(events, items, config, tmp_path / "model")
    model = load_model(tmp_path / "model")
    assert model.cf_user_items.shape == model.cf_user_scores.shape == (model.num_users, 4)
    for user in range(model.num_users):  # never one of the user's own items
        row = model.cf_user_items[user]
        assert not np.isin(row[row >= 0], model.history(user)[0]).any()
    path = tmp_path / "c.yaml"
    for bad in ("-1", "2.5", "true"):
        path.write_text(f"training:\n  collaborative:\n    user_candidates: {bad}\n")
        with pytest.raises(ConfigError, match=r"c\.yaml: training\.collaborative\.user_candidates: "):
            load_training_config(path)


def test_weights_too_large_for_32_bit_floats_are_refused(tmp_path: Path) -> None:
    """Event weights of 1e20 trained a bundle whose item-item weights were infinite, and exited 0."""
    events = write_events(tmp_path / "events.csv", basic_events())
    items = write_items(tmp_path / "items.csv")
    config = TrainingConfig()
    config.collaborative.components, config.content.dims = 3, 4
    config.events.weights = {name: 1e20 for name in config.events.weights}
    with pytest.raises(DataError, match=r"user-item strengths reach 2e\+20, above 1e\+09: .*training\.events\.weights"):
        train(events, items, config, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    config.events.transform = "log1p"  # the same weights, damped, train a usable bundle
    train(events, items, config, tmp_path / "m")
    model = load_model(tmp_path / "m")
    assert np.isfinite(model.item_item.data).all() and np.isfinite(model.user_factors).all()


def test_a_bundle_array_that_is_not_finite_is_refused() -> None:
    from hybridrec.server.training import check_finite

    check_finite({"ids": np.array(["a"]), "ok": np.ones(3, dtype=np.float32)})
    with pytest.raises(DataError, match=r"non-finite values in popularity; the event weights"):
        check_finite({"ok": np.ones(3, dtype=np.float32), "popularity": np.array([1.0, np.inf], dtype=np.float32)})


def test_item_categories_are_stored_from_the_category_field(tmp_path: Path) -> None:
    rows = [("a", "Alpha", "", "Drama|Comedy", ""), ("b", "Beta", "", "Drama", ""), ("c", "Gamma", "", "", ""),
            ("d", "Delta", "", " Horror | Drama |", "")]
    items = write_items(tmp_path / "items.csv", rows)
    events = write_events(tmp_path / "events.csv", [(u, i, "click", 1_700_000_000 + n, "")
                                                    for n, (u, i) in enumerate([("u1", "a"), ("u1", "b"), ("u2", "b"),
                                                                                ("u2", "d"), ("u3", "e")])])
    config = tiny_config()
    config.collaborative.components = 2
    config.content.dims = 2
    manifest = train(events, items, config, tmp_path / "model")
    model = load_model(tmp_path / "model")
    assert model.category_names.tolist() == ["Comedy", "Drama", "Horror"] and manifest["categories"] == 3
    held = {str(model.item_ids[row]): {str(model.category_names[c]) for c in codes if c >= 0}
            for row, codes in enumerate(model.item_categories)}
    # item e is only in the events: no categories, like item c whose field is empty
    assert held == {"a": {"Drama", "Comedy"}, "b": {"Drama"}, "c": set(), "d": {"Horror", "Drama"}, "e": set()}
    config.content.category_field = None
    manifest = train(events, items, config, tmp_path / "bare")
    bare = load_model(tmp_path / "bare")
    assert bare.item_categories is None and bare.category_names is None and manifest["categories"] == 0
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  content:\n    category_field: ''\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: training\.content\.category_field: must be a column name or null"):
        load_training_config(path)


def test_category_table_keeps_a_bounded_number_per_item(caplog: pytest.LogCaptureFixture) -> None:
    from hybridrec.server.data import Catalogue
    from hybridrec.server.training import MAX_ITEM_CATEGORIES, category_table

    many = "|".join(f"c{i:03d}" for i in range(MAX_ITEM_CATEGORIES + 5))
    catalogue = Catalogue(item_ids=["a", "b"], columns={"category": [many, "c000|x"]}, report={})
    with caplog.at_level(logging.WARNING, logger="hybridrec"):
        table, names = category_table(catalogue, "category", 3)  # a third item only in the events
    assert table.shape == (3, MAX_ITEM_CATEGORIES)
    assert [names[c] for c in table[0]] == [f"c{i:03d}" for i in range(MAX_ITEM_CATEGORIES)]
    assert [names[c] for c in table[1] if c >= 0] == ["c000", "x"] and (table[2] == -1).all()
    assert "1 items have more than 32 categories" in caplog.text
    with caplog.at_level(logging.INFO, logger="hybridrec"):
        assert category_table(catalogue, "genre", 3) is None  # no such column ...
    assert "no 'genre' column (content.category_field); no categories stored" in caplog.text  # ... said
    assert category_table(Catalogue(["a"], {"category": [" | "]}, {}), "category", 1) is None  # all empty


def test_serving_category_mmr_with_a_model_without_categories_is_warned(tiny: tuple[Path, Path], tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    from hybridrec.server.app import load_state

    events, items = tiny
    config = tiny_config()
    config.content.category_field = None
    train(events, items, config, tmp_path / "model")
    path = tmp_path / "serve.yaml"
    path.write_text("pipelines:\n  diverse:\n    candidates: [{plugin: popularity}]\n"
                    "    scorer: {plugin: weighted_hybrid, params: {weights: {popularity: 1.0}}}\n"
                    "    rerankers: [{plugin: mmr, params: {similarity: category}}]\n")
    with caplog.at_level(logging.WARNING, logger="hybridrec"):
        state = load_state(tmp_path / "model", path)
    assert state.model.item_categories is None
    assert "pipeline diverse: re-ranker mmr diversifies over categories" in caplog.text
    assert "it uses content similarity" in caplog.text


def test_content_mapped_factors_by_hand() -> None:
    rng = np.random.default_rng(0)
    content = rng.normal(size=(40, 5))
    content[-1] = 0.0  # an item with neither events nor content
    mapping = rng.normal(size=(5, 3))
    factors = content @ mapping
    cold = np.zeros(40, dtype=bool)
    cold[-6:] = True
    factors[cold] = 0.0
    filled, count = content_mapped_factors(factors.astype(np.float32), content.astype(np.float32), cold, ridge=1e-9)
    assert count == 5  # the item without content keeps zero factors
    assert filled[-6:-1] == pytest.approx((content[-6:-1] @ mapping).astype(np.float32), abs=1e-4)
    assert not filled[-1].any() and np.array_equal(filled[:-6], factors[:-6].astype(np.float32))
    # the ridge shrinks the map: with a strong one, the predicted factors are smaller
    shrunk, _ = content_mapped_factors(factors, content, cold, ridge=100.0)
    assert np.linalg.norm(shrunk[-6:-1]) < np.linalg.norm(filled[-6:-1])
    assert content_mapped_factors(factors, content, np.zeros(40, dtype=bool))[1] == 0  # nothing to fill


def test_an_item_without_events_gets_the_cf_factors_its_content_predicts(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    events, items = tiny
    config = tiny_config()
    config.collaborative.cold_items = "content"
    manifest = train(events, items, config, tmp_path / "model")
    model = load_model(tmp_path / "model")
    i8 = model.item_index["i8"]  # in the catalogue, no events
    assert manifest["cf_from_content"] == 1
    warm = np.arange(model.num_items) != i8
    x = model.item_content[warm].astype(np.float64)
    mapping = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ model.item_factors[warm])
    assert model.item_factors[i8] == pytest.approx(model.item_content[i8] @ mapping, abs=1e-4)
    assert np.linalg.norm(model.item_factors[i8]) > 0.01
    config.collaborative.cold_item_scale = 0.5
    train(events, items, config, tmp_path / "half")
    assert load_model(tmp_path / "half").item_factors[i8] == pytest.approx(0.5 * model.item_factors[i8], abs=1e-5)
    assert train(events, items, tiny_config(), tmp_path / "plain")["cf_from_content"] == 0  # the default: none
    plain = load_model(tmp_path / "plain")
    assert not plain.item_factors[i8].any()
    assert np.array_equal(plain.item_factors[warm], model.item_factors[warm])  # the other items are untouched
