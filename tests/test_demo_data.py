"""The synthetic learning-marketplace dataset: shape, determinism and latent structure."""
from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hybridrec.server.demo_data import END_TIMESTAMP, EVENT_TYPES, LEVELS, SUBJECTS, WINDOW_SECONDS, generate

EVENT_COLUMNS = ["user_id", "item_id", "event_type", "timestamp", "value"]
ITEM_COLUMNS = ["item_id", "title", "description", "category", "level", "tags", "price"]
USER_COLUMNS = ["user_id", "preferred_subjects", "level"]


def read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def default_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate(tmp_path_factory.mktemp("demo_default"), seed=5)


@pytest.fixture(scope="module")
def events(default_data: dict[str, Path]) -> list[dict[str, str]]:
    return read(default_data["events"])[1]


def test_returns_the_three_paths_with_their_columns(default_data: dict[str, Path]) -> None:
    assert set(default_data) == {"events", "items", "users"}
    assert read(default_data["events"])[0] == EVENT_COLUMNS
    assert read(default_data["items"])[0] == ITEM_COLUMNS
    assert read(default_data["users"])[0] == USER_COLUMNS


def test_exact_sizes(default_data: dict[str, Path], events: list[dict[str, str]]) -> None:
    assert len(events) == 20000
    assert len(read(default_data["items"])[1]) == 500
    assert len(read(default_data["users"])[1]) == 1000


def test_items_look_like_learning_packages(default_data: dict[str, Path]) -> None:
    items = read(default_data["items"])[1]
    assert items[0]["item_id"] == "pkg-00001"
    assert len({row["item_id"] for row in items}) == len(items)
    for row in items:
        assert row["category"] in SUBJECTS
        assert row["level"] in LEVELS
        assert row["level"].capitalize() in row["title"]
        assert 2 <= len(row["tags"].split("|")) <= 4
        assert 1 <= row["description"].count(".") <= 3
        assert re.fullmatch(r"\d+\.\d\d", row["price"])
    mean_price = {level: np.mean([float(r["price"]) for r in items if r["level"] == level]) for level in LEVELS}
    assert mean_price["beginner"] < mean_price["intermediate"] < mean_price["advanced"]
    assert len({row["category"] for row in items}) == len(SUBJECTS)


def test_users_have_one_to_three_subjects(default_data: dict[str, Path]) -> None:
    users = read(default_data["users"])[1]
    assert users[0]["user_id"] == "u-00001"
    for row in users:
        subjects = row["preferred_subjects"].split("|")
        assert 1 <= len(subjects) <= 3 and len(set(subjects)) == len(subjects)
        assert set(subjects) <= set(SUBJECTS)
        assert row["level"] in LEVELS


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", n_users=200, n_items=100, n_events=3000, seed=1)
    again = generate(tmp_path / "b", n_users=200, n_items=100, n_events=3000, seed=1)
    other = generate(tmp_path / "c", n_users=200, n_items=100, n_events=3000, seed=2)
    for name in ("events", "items", "users"):
        assert first[name].read_bytes() == again[name].read_bytes(), name
        assert first[name].read_bytes() != other[name].read_bytes(), name


def test_funnel_of_event_types(events: list[dict[str, str]]) -> None:
    counts = Counter(row["event_type"] for row in events)
    assert set(counts) == set(EVENT_TYPES)
    assert counts["view"] > counts["click"] > counts["start_booking"] > counts["booking"] > counts["rating"]
    assert 0.4 < counts["view"] / len(events) < 0.6
    assert counts["search"] > 0 and counts["message"] > 0


def test_values_only_on_ratings_and_timestamps_in_window(events: list[dict[str, str]]) -> None:
    for row in events:
        if row["event_type"] == "rating":
            assert row["value"] in {"1", "2", "3", "4", "5"}
        else:
            assert row["value"] == ""
        assert END_TIMESTAMP - WINDOW_SECONDS <= int(row["timestamp"]) <= END_TIMESTAMP


def test_user_activity_is_heavy_tailed_and_nobody_is_idle(events: list[dict[str, str]]) -> None:
    per_user = np.array(list(Counter(row["user_id"] for row in events).values()))
    assert len(per_user) == 1000
    assert per_user.min() >= 1
    assert per_user.max() > 10 * np.median(per_user)
    assert (per_user <= 5).mean() > 0.25


def test_item_popularity_is_skewed(events: list[dict[str, str]]) -> None:
    per_item = np.sort(np.array(list(Counter(row["item_id"] for row in events).values())))[::-1]
    top_tenth = per_item[: len(per_item) // 10].sum()
    assert top_tenth > 0.3 * per_item.sum()


def test_events_reference_known_users_and_items(default_data: dict[str, Path],
                                                events: list[dict[str, str]]) -> None:
    items = {row["item_id"] for row in read(default_data["items"])[1]}
    users = {row["user_id"] for row in read(default_data["users"])[1]}
    assert {row["item_id"] for row in events} <= items
    assert {row["user_id"] for row in events} <= users


def test_some_items_have_no_events(default_data: dict[str, Path], events: list[dict[str, str]]) -> None:
    items = {row["item_id"] for row in read(default_data["items"])[1]}
    unseen = items - {row["item_id"] for row in events}
    assert 0.03 * len(items) <= len(unseen) <= 0.15 * len(items)


def test_users_mostly_stay_in_their_preferred_subjects(default_data: dict[str, Path],
                                                       events: list[dict[str, str]]) -> None:
    subject = {row["item_id"]: row["category"] for row in read(default_data["items"])[1]}
    preferred = {row["user_id"]: set(row["preferred_subjects"].split("|")) for row in read(default_data["users"])[1]}
    inside = sum(subject[row["item_id"]] in preferred[row["user_id"]] for row in events)
    assert inside > 0.85 * len(events)


def test_small_sizes_work(tmp_path: Path) -> None:
    paths = generate(tmp_path / "small", n_users=20, n_items=15, n_events=100, seed=9)
    events = read(paths["events"])[1]
    assert len(events) == 100
    assert len({row["user_id"] for row in events}) == 20
    items = {row["item_id"] for row in read(paths["items"])[1]}
    assert len(items) == 15
    assert items - {row["item_id"] for row in events}


def test_fewer_events_than_users(tmp_path: Path) -> None:
    paths = generate(tmp_path / "tiny", n_users=50, n_items=5, n_events=10, seed=1)
    assert len(read(paths["events"])[1]) == 10
    assert len(read(paths["users"])[1]) == 50


def test_progress_messages_and_output_directory_created(tmp_path: Path) -> None:
    messages: list[str] = []
    out = tmp_path / "nested" / "dir"
    generate(out, n_users=30, n_items=20, n_events=200, progress=messages.append)
    assert out.is_dir() and len(messages) >= 3


def test_rejects_empty_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_events"):
        generate(tmp_path, n_events=0)
