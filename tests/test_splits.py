"""Train/test splits: per-user ratios, whole pairs on one side, determinism, cold-start hold-outs."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from hybridrec.server.splits import (cold_start_items, cold_start_users, held_out_items, leave_last_n,
                                     random_holdout, temporal_split)


def event_table(n_users: int = 60, n_items: int = 40, n_events: int = 1500, seed: int = 0):
    """Random events as string ids, with repeated (user, item) pairs and a 1-item user."""
    rng = np.random.default_rng(seed)
    users = np.array([f"u{u}" for u in rng.integers(0, n_users, n_events)] + ["lonely", "lonely"])
    items = np.array([f"i{i}" for i in rng.integers(0, n_items, n_events)] + ["i0", "i0"])
    timestamps = np.concatenate([rng.integers(0, 10_000, n_events), [5, 6]]).astype(np.int64)
    return users, items, timestamps


def pairs(users: np.ndarray, items: np.ndarray, mask: np.ndarray) -> set[tuple[str, str]]:
    return set(zip(users[mask].tolist(), items[mask].tolist()))


def distinct_items(users: np.ndarray, items: np.ndarray, mask: np.ndarray) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for user, item in zip(users[mask].tolist(), items[mask].tolist()):
        out[user].add(item)
    return out


# random_holdout


def test_random_holdout_ratio_per_user() -> None:
    users, items, _ = event_table()
    test = random_holdout(users, items, test_ratio=0.25, seed=1)
    everything = distinct_items(users, items, np.ones(users.size, dtype=bool))
    held = distinct_items(users, items, test)
    for user, all_items in everything.items():
        n = len(all_items)
        expected = 0 if n < 2 else min(round(n * 0.25), n - 1)
        assert len(held.get(user, set())) == expected, user


def test_random_holdout_never_splits_a_pair() -> None:
    users, items, _ = event_table()
    test = random_holdout(users, items, seed=3)
    assert test.any() and not test.all()
    assert not pairs(users, items, test) & pairs(users, items, ~test)


def test_random_holdout_is_deterministic_per_seed() -> None:
    users, items, _ = event_table()
    first = random_holdout(users, items, seed=7)
    assert np.array_equal(first, random_holdout(users, items, seed=7))
    assert not np.array_equal(first, random_holdout(users, items, seed=8))


def test_random_holdout_keeps_small_users_in_train() -> None:
    # "solo" has one distinct item (seen twice); "duo" has two: round(2 * 0.9) = 2, capped to 1 in test
    users = np.array(["solo", "solo", "duo", "duo"])
    items = np.array(["a", "a", "a", "b"])
    test = random_holdout(users, items, test_ratio=0.9)
    assert not test[:2].any()
    assert test[2:].sum() == 1


def test_random_holdout_accepts_int_ids() -> None:
    users = np.repeat(np.arange(10), 8)
    items = np.tile(np.arange(8), 10)
    test = random_holdout(users, items, test_ratio=0.25)
    assert np.bincount(users[test]).tolist() == [2] * 10


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_random_holdout_rejects_bad_ratios(ratio: float) -> None:
    with pytest.raises(ValueError, match="test_ratio"):
        random_holdout(np.array(["u"]), np.array(["i"]), test_ratio=ratio)


def test_mismatched_columns_raise() -> None:
    with pytest.raises(ValueError, match="same length"):
        random_holdout(np.array(["u", "v"]), np.array(["i"]))


# temporal_split


def test_temporal_split_cut_off() -> None:
    timestamps = np.arange(100, dtype=np.int64)
    test = temporal_split(timestamps, test_ratio=0.2)
    # 0.8 quantile of 0..99 is 79.2: rows 80..99 are test
    assert test.tolist() == [t >= 80 for t in range(100)]
    shuffled = np.random.default_rng(0).permutation(timestamps)
    assert np.array_equal(temporal_split(shuffled, 0.2), shuffled >= 80)


def test_temporal_split_everything_after_is_test() -> None:
    _, _, timestamps = event_table()
    test = temporal_split(timestamps, test_ratio=0.3)
    assert timestamps[test].min() > timestamps[~test].max()
    assert test.mean() == pytest.approx(0.3, abs=0.02)


def test_temporal_split_rejects_bad_ratio() -> None:
    with pytest.raises(ValueError, match="test_ratio"):
        temporal_split(np.arange(5), test_ratio=1.0)


# leave_last_n


def test_leave_last_n_picks_the_latest_items() -> None:
    users = np.array(["a", "a", "a", "a", "a", "b", "b", "c"])
    items = np.array(["x", "y", "z", "x", "w", "x", "y", "x"])
    times = np.array([1, 2, 3, 9, 5, 1, 2, 1], dtype=np.int64)
    # a: last times x=9, w=5, z=3, y=2 -> n=2 holds out x (both events) and w
    # b: two items, n=2 -> nothing held out; c: one item -> nothing
    test = leave_last_n(users, items, times, n=2)
    assert test.tolist() == [True, False, False, True, True, False, False, False]
    # n=1: a loses x; b loses y (its latest)
    test = leave_last_n(users, items, times, n=1)
    assert test.tolist() == [True, False, False, True, False, False, True, False]


def test_leave_last_n_on_random_events() -> None:
    users, items, times = event_table()
    test = leave_last_n(users, items, times, n=3)
    assert not pairs(users, items, test) & pairs(users, items, ~test)
    last_time: dict[tuple[str, str], int] = {}
    for pair in zip(users.tolist(), items.tolist(), times.tolist()):
        last_time[pair[:2]] = max(last_time.get(pair[:2], pair[2]), pair[2])
    held = distinct_items(users, items, test)
    for user, all_items in distinct_items(users, items, np.ones(users.size, dtype=bool)).items():
        if len(all_items) <= 3:
            assert user not in held
            continue
        assert len(held[user]) == 3
        kept = all_items - held[user]
        assert min(last_time[user, i] for i in held[user]) >= max(last_time[user, i] for i in kept)


def test_leave_last_n_rejects_bad_n() -> None:
    with pytest.raises(ValueError, match="n must"):
        leave_last_n(np.array(["u"]), np.array(["i"]), np.array([1]), n=0)


# cold_start_items


def test_cold_start_items_holds_out_whole_items() -> None:
    users, items, _ = event_table()
    test = cold_start_items(items, fraction=0.2, seed=5)
    held = set(items[test].tolist())
    assert len(held) == round(0.2 * np.unique(items).size)
    # every event of a held-out item is in test, and no held-out item is left in train
    assert not held & set(items[~test].tolist())
    assert np.array_equal(test, np.isin(items, list(held)))
    assert np.array_equal(test, cold_start_items(items, fraction=0.2, seed=5))


def test_cold_start_items_holds_out_at_least_one_and_keeps_one() -> None:
    assert cold_start_items(np.array(["a", "b", "c"]), fraction=0.01).sum() == 1
    assert cold_start_items(np.array(["a", "b"]), fraction=0.99).sum() == 1


def test_cold_start_items_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="fraction"):
        cold_start_items(np.array(["a"]), fraction=0)


# cold_start_users


def test_cold_start_users_keeps_held_users_out_of_train() -> None:
    users, items, times = event_table()
    context, test = cold_start_users(users, items, times, fraction=0.2, n_context=5, seed=2)
    assert not (context & test).any()
    held = set(users[context | test].tolist())
    train = ~(context | test)
    assert held and not held & set(users[train].tolist())
    # the held users are whole: every row of theirs is context or test
    assert np.array_equal(np.isin(users, list(held)), context | test)
    eligible = {u for u, its in distinct_items(users, items, np.ones(users.size, dtype=bool)).items() if len(its) > 5}
    assert held <= eligible
    assert len(held) == round(0.2 * len(eligible))


def test_cold_start_users_context_is_the_first_items() -> None:
    users, items, times = event_table()
    context, test = cold_start_users(users, items, times, fraction=0.3, n_context=4, seed=9)
    first_time: dict[tuple[str, str], int] = {}
    for user, item, t in zip(users.tolist(), items.tolist(), times.tolist()):
        first_time[user, item] = min(first_time.get((user, item), t), t)
    ctx_items = distinct_items(users, items, context)
    test_items = distinct_items(users, items, test)
    for user, chosen in ctx_items.items():
        assert len(chosen) == 4
        assert not chosen & test_items[user]
        assert max(first_time[user, i] for i in chosen) <= min(first_time[user, i] for i in test_items[user])


def test_cold_start_users_by_hand() -> None:
    users = np.array(["a"] * 5 + ["b"] * 2)
    items = np.array(["p", "q", "r", "p", "s", "p", "q"])
    times = np.array([4, 1, 3, 0, 2, 1, 2], dtype=np.int64)
    # only "a" has more than 2 distinct items; first times p=0, q=1, s=2, r=3 -> context p, q
    context, test = cold_start_users(users, items, times, fraction=0.5, n_context=2)
    assert context.tolist() == [True, True, False, True, False, False, False]
    assert test.tolist() == [False, False, True, False, True, False, False]


def test_cold_start_users_rejects_bad_arguments() -> None:
    users, items, times = np.array(["u"]), np.array(["i"]), np.array([1])
    with pytest.raises(ValueError, match="fraction"):
        cold_start_users(users, items, times, fraction=1.0)
    with pytest.raises(ValueError, match="n_context"):
        cold_start_users(users, items, times, n_context=0)


# held_out_items


def test_held_out_items_in_order_of_first_appearance() -> None:
    users = np.array(["b", "a", "b", "b", "a", "c"])
    items = np.array(["y", "x", "z", "y", "w", "v"])
    mask = np.array([True, True, True, True, True, False])
    held = held_out_items(users, items, mask)
    assert list(held) == ["b", "a"]
    assert held["b"].tolist() == ["y", "z"]
    assert held["a"].tolist() == ["x", "w"]
    assert all(type(user) is str for user in held)
    assert held_out_items(users, items, np.zeros(6, dtype=bool)) == {}


def test_held_out_items_matches_the_split() -> None:
    users, items, _ = event_table()
    test = random_holdout(users, items)
    held = held_out_items(users, items, test)
    assert {u: set(v.tolist()) for u, v in held.items()} == distinct_items(users, items, test)
