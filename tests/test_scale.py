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
