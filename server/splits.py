"""Train/test splits over an event table held as parallel arrays (users, items, timestamps).

Every split returns boolean row masks (True = the row is held out). Splits that work on
distinct (user, item) pairs send all events of a held-out pair to the same side, so a
pair is never in both train and test. Random choices come from
``np.random.default_rng(seed)``, so a split is reproducible for a given seed.
"""
from __future__ import annotations

import numpy as np


def check_ratio(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")


def _check_count(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def _check_lengths(**columns: np.ndarray) -> None:
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns must have the same length, got {lengths}")


class _Pairs:
    """The distinct (user, item) pairs of an event table.

    ``of_row`` maps each row to its pair, ``user`` gives each pair's user code, and
    ``first_row`` the first row at which each pair occurs.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
        _check_lengths(users=users, items=items)
        _, self.user_of_row = np.unique(np.asarray(users), return_inverse=True)
        _, item_codes = np.unique(np.asarray(items), return_inverse=True)
        stride = int(item_codes.max()) + 1 if item_codes.size else 1
        keys = self.user_of_row.astype(np.int64) * stride + item_codes
        _, self.first_row, self.of_row = np.unique(keys, return_index=True, return_inverse=True)
        self.user = self.user_of_row[self.first_row]

    def __len__(self) -> int:
        return self.first_row.size

    def per_pair(self, ufunc: np.ufunc, values: np.ndarray, initial: int) -> np.ndarray:
        """Reduce a per-row int64 column to one value per pair (e.g. the latest timestamp)."""
        out = np.full(len(self), initial, dtype=np.int64)
        ufunc.at(out, self.of_row, np.asarray(values, dtype=np.int64))
        return out

    def rows_of(self, chosen_pairs: np.ndarray) -> np.ndarray:
        """Row mask from a boolean mask over pairs."""
        return chosen_pairs[self.of_row]


def _rank_in_group(groups: np.ndarray, *order_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each element's 0-based position within its group, and its group's size.

    Within a group, elements are ordered by ``order_keys`` (the first is the primary key),
    then by their index.
    """
    index = np.arange(groups.size)
    order = np.lexsort((index, *reversed(order_keys), groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, groups.size])
    position = np.empty(groups.size, dtype=np.int64)
    position[order] = index - np.repeat(starts, sizes)
    size = np.empty(groups.size, dtype=np.int64)
    size[order] = np.repeat(sizes, sizes)
    return position, size


def random_holdout(users: np.ndarray, items: np.ndarray, test_ratio: float = 0.25, seed: int = 42) -> np.ndarray:
    """Test-row mask: per user, ``round(n * test_ratio)`` of their n distinct items at random.

    All events of a chosen item go to test. Users with fewer than 2 distinct items stay
    entirely in train, and every user keeps at least one item in train.
    """
    check_ratio("test_ratio", test_ratio)
    pairs = _Pairs(users, items)
    shuffle = np.random.default_rng(seed).random(len(pairs))
    position, n = _rank_in_group(pairs.user, shuffle)
    n_test = np.minimum(np.rint(n * test_ratio), n - 1)
    return pairs.rows_of(position < n_test)


def temporal_split(timestamps: np.ndarray, test_ratio: float = 0.2) -> np.ndarray:
    """Test-row mask: rows at or after the ``1 - test_ratio`` quantile of the timestamps."""
    check_ratio("test_ratio", test_ratio)
    timestamps = np.asarray(timestamps)
    if timestamps.size == 0:
        return np.zeros(0, dtype=bool)
    return timestamps >= np.quantile(timestamps, 1.0 - test_ratio)


def leave_last_n(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, n: int = 1) -> np.ndarray:
    """Test-row mask: per user, the ``n`` distinct items with the latest timestamps.

    An item's time is its last event; all its events go to test. Users with ``n`` or fewer
    distinct items stay entirely in train. Ties go to the item seen first in the table.
    """
    _check_count("n", n)
    _check_lengths(users=users, items=items, timestamps=timestamps)
    pairs = _Pairs(users, items)
    latest = pairs.per_pair(np.maximum, timestamps, np.iinfo(np.int64).min)
    position, size = _rank_in_group(pairs.user, -latest, pairs.first_row)
    return pairs.rows_of((position < n) & (size > n))


def cold_start_items(items: np.ndarray, fraction: float = 0.1, seed: int = 42) -> np.ndarray:
    """Test-row mask: every event of a random ``fraction`` of the distinct items.

    ``round(fraction * n_items)`` items are held out, at least one, and at least one item
    is always left for training.
    """
    check_ratio("fraction", fraction)
    items = np.asarray(items)
    distinct, item_of_row = np.unique(items, return_inverse=True)
    count = min(max(1, round(fraction * distinct.size)), distinct.size - 1)
    held = np.zeros(distinct.size, dtype=bool)
    if count > 0:
        held[np.random.default_rng(seed).choice(distinct.size, size=count, replace=False)] = True
    return held[item_of_row]


def cold_start_users(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, fraction: float = 0.1,
                     n_context: int = 5, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole users: returns ``(context_mask, test_mask)`` over the rows.

    ``round(fraction * eligible)`` users (at least one) are drawn from the users with more
    than ``n_context`` distinct items. Their first ``n_context`` distinct items, ordered
    by first timestamp (ties: first row), are the context rows; the rest of their rows are
    test. Each of their rows is in exactly one mask, so training on ``~(context | test)``
    never sees them.
    """
    check_ratio("fraction", fraction)
    _check_count("n_context", n_context)
    _check_lengths(users=users, items=items, timestamps=timestamps)
    pairs = _Pairs(users, items)
    n_items_of_user = np.bincount(pairs.user)
    eligible = np.flatnonzero(n_items_of_user > n_context)
    held_user = np.zeros(n_items_of_user.size, dtype=bool)
    if eligible.size:
        count = max(1, round(fraction * eligible.size))
        held_user[np.random.default_rng(seed).choice(eligible, size=count, replace=False)] = True
    first_seen = pairs.per_pair(np.minimum, timestamps, np.iinfo(np.int64).max)
    position, _ = _rank_in_group(pairs.user, first_seen, pairs.first_row)
    held_row = held_user[pairs.user_of_row]
    context = held_row & pairs.rows_of(position < n_context)
    return context, held_row & ~context


def held_out_items(users: np.ndarray, items: np.ndarray, mask: np.ndarray) -> dict[object, np.ndarray]:
    """For the rows in ``mask``: user -> array of that user's distinct items.

    Users and each user's items come in order of first appearance among those rows.
    Keys are plain Python values (``str``/``int``), not numpy scalars.
    """
    _check_lengths(users=users, items=items, mask=mask)
    mask = np.asarray(mask, dtype=bool)
    sub_users, sub_items = np.asarray(users)[mask], np.asarray(items)[mask]
    if sub_users.size == 0:
        return {}
    pairs = _Pairs(sub_users, sub_items)
    _, user_first_row = np.unique(pairs.user_of_row, return_index=True)
    # Pairs ordered by when their user first appears, then by when the pair first appears.
    order = np.lexsort((pairs.first_row, user_first_row[pairs.user]))
    rows = pairs.first_row[order]
    bounds = np.flatnonzero(np.diff(pairs.user[order])) + 1
    return {sub_users[group[:1]].tolist()[0]: sub_items[group] for group in np.split(rows, bounds)}
