"""The columnar event reader: pyarrow parses the CSV, numpy applies the rules to whole columns.

It reproduces `data._read_events_rows` exactly (same codes in the same first-appearance order,
same weights, same report). The rules that need Python's own string functions (`str.strip`,
`str.lower`, `float`, `datetime.fromisoformat`) run once per *distinct* value, not per row:
ids, event types and values are read as dictionary columns. Timestamps in the common forms
(integer unix seconds, `YYYY-MM-DD[Thh:mm:ss[Z|+hh:mm]]`) are parsed with array arithmetic;
any other form goes to `parse_timestamp`, once per distinct string.

Input that pyarrow would parse differently from the csv module (ragged rows, invalid UTF-8,
duplicate header names) is not read here: the caller falls back to the row reader.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .config import EventsConfig

if TYPE_CHECKING:
    from .data import EventLog

BLOCK_BYTES = 16 << 20
INT_PATTERN = r"^-?[0-9]{1,15}$"  # int(float(x)) is exact up to 2**53
ISO_PATTERN = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
               r"(?:[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:Z|[+-][0-9]{2}:[0-9]{2})?)?$")


def _has_quote(path: Path) -> bool:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            if b'"' in block:
                return True
    return False


def _dictionary(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Row indices into one dictionary shared by all chunks, and that dictionary."""
    chunks = column.chunks
    if not chunks:
        return np.zeros(0, np.int64), []
    dictionary = chunks[0].dictionary
    parts = []
    for chunk in chunks:
        if not chunk.dictionary.equals(dictionary):
            raise ValueError("chunks with different dictionaries")  # not after unify_dictionaries
        parts.append(chunk.indices.to_numpy(zero_copy_only=False).astype(np.int64))
    return np.concatenate(parts), dictionary.to_pylist()


def _canonical(values: list[str], transform) -> tuple[np.ndarray, list[str]]:
    """Map dictionary entries through `transform` (strip, lower...) and merge equal results."""
    codes: dict[str, int] = {}
    out = np.fromiter((codes.setdefault(transform(v), len(codes)) for v in values), dtype=np.int64,
                      count=len(values))
    return out, list(codes)


def _first_appearance(codes: np.ndarray, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber `codes` in order of first appearance; returns new codes and the old value of each."""
    n = codes.shape[0]
    first = np.full(n_values, n, dtype=np.int64)
    np.minimum.at(first, codes, np.arange(n, dtype=np.int64))
    present = np.nonzero(first < n)[0]
    present = present[np.argsort(first[present], kind="stable")]
    remap = np.full(n_values, -1, dtype=np.int64)
    remap[present] = np.arange(present.shape[0])
    return remap[codes], present


def _ordered_counts(codes: np.ndarray, names: list[str]) -> dict[str, int]:
    """{name: count} for the codes present, in order of first appearance (like a Counter)."""
    if not codes.shape[0]:
        return {}
    counts = np.bincount(codes, minlength=len(names))
    _, order = _first_appearance(codes, len(names))
    return {names[int(c)]: int(counts[c]) for c in order}


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm)."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in_month(y: np.ndarray, m: np.ndarray) -> np.ndarray:
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    base = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(m, 0, 12)]
    return base + ((m == 2) & leap)


def _digits(arr: pa.Array, start: int, stop: int) -> np.ndarray:
    return pc.cast(pc.utf8_slice_codeunits(arr, start, stop), pa.int64()).to_numpy(zero_copy_only=False)


def _iso(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Unix seconds of strings matching ISO_PATTERN, and whether each is certainly valid."""
    length = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
    y, mo, d = _digits(arr, 0, 4), _digits(arr, 5, 7), _digits(arr, 8, 10)
    timed = length > 10
    filled = pc.utf8_rpad(arr, width=25, padding="0")  # date-only: 00:00:00; no offset: zero offset
    h, mi, s = (np.where(timed, _digits(filled, a, b), 0) for a, b in ((11, 13), (14, 16), (17, 19)))
    has_offset = length == 25
    oh, om = (np.where(has_offset, _digits(filled, a, b), 0) for a, b in ((20, 22), (23, 25)))
    sign = np.where(pc.equal(pc.utf8_slice_codeunits(filled, 19, 20), "-").to_numpy(zero_copy_only=False), -1, 1)
    valid = ((y >= 2) & (y <= 9998) & (mo >= 1) & (mo <= 12) & (d >= 1) & (d <= _days_in_month(y, mo))
             & (h <= 23) & (mi <= 59) & (s <= 59) & (oh <= 23) & (om <= 59))
    days = _days_from_civil(y, np.clip(mo, 1, 12), d)
    seconds = days * 86400 + h * 3600 + mi * 60 + s - sign * (oh * 3600 + om * 60)
    return seconds, valid


def _timestamps(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Unix seconds of every row and whether it parsed, exactly as `parse_timestamp` does."""
    from .data import parse_timestamp

    values, ok = [], []
    for arr in column.chunks:
        n = len(arr)
        out = np.zeros(n, dtype=np.int64)
        good = np.zeros(n, dtype=bool)
        todo = np.ones(n, dtype=bool)
        is_int = pc.match_substring_regex(arr, INT_PATTERN)
        mask = is_int.to_numpy(zero_copy_only=False)
        if mask.any():
            out[mask] = pc.cast(arr.filter(is_int), pa.int64()).to_numpy(zero_copy_only=False)
            good[mask] = True
            todo[mask] = False
        rest = np.nonzero(todo)[0]
        if rest.shape[0]:
            sub = arr.take(pa.array(rest))
            is_iso = pc.match_substring_regex(sub, ISO_PATTERN).to_numpy(zero_copy_only=False)
            if is_iso.any():
                where = rest[is_iso]
                seconds, valid = _iso(sub.filter(pa.array(is_iso)))
                out[where[valid]] = seconds[valid]
                good[where[valid]] = True
                todo[where[valid]] = False  # invalid-looking dates go to Python, which decides
            rest = np.nonzero(todo)[0]
        if rest.shape[0]:
            encoded = pc.dictionary_encode(arr.take(pa.array(rest)))
            parsed = [parse_timestamp(v) for v in encoded.dictionary.to_pylist()]
            stamps = np.array([0 if p is None else p for p in parsed], dtype=np.int64)
            parsed_ok = np.array([p is not None for p in parsed], dtype=bool)
            idx = encoded.indices.to_numpy(zero_copy_only=False)
            out[rest] = stamps[idx]
            good[rest] = parsed_ok[idx]
        values.append(out)
        ok.append(good)
    if not values:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate(values), np.concatenate(ok)


def read_events_arrow(path: Path, config: EventsConfig, header: list[str]) -> tuple[EventLog | None, str]:
    """The EventLog of `path`, or (None, why) when this reader must not be used for it."""
    from .data import EVENT_COLUMNS, EventLog, parse_value

    if len(set(header)) != len(header):
        return None, "duplicate column names"
    has_value = "value" in header
    names = list(EVENT_COLUMNS) + (["value"] if has_value else [])
    dictionary = pa.dictionary(pa.int32(), pa.string())
    types = {c: dictionary for c in ("user_id", "item_id", "event_type", "value")}
    types["timestamp"] = pa.string()
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(newlines_in_values=_has_quote(path)),
            convert_options=pacsv.ConvertOptions(
                column_types={c: types[c] for c in names}, include_columns=names,
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        table = table.unify_dictionaries()
    except (pa.ArrowException, OSError) as exc:
        return None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if table.num_rows == 0:
        return None, "no rows"
    if any(table.column(c).null_count for c in names):
        return None, "null values"

    user_idx, user_dict = _dictionary(table.column("user_id"))
    item_idx, item_dict = _dictionary(table.column("item_id"))
    event_idx, event_dict = _dictionary(table.column("event_type"))
    stamps, stamp_ok = _timestamps(table.column("timestamp"))
    value_idx, value_dict = _dictionary(table.column("value")) if has_value else (None, [])
    del table

    user_canon, user_names = _canonical(user_dict, str.strip)
    item_canon, item_names = _canonical(item_dict, str.strip)
    event_canon, event_names = _canonical(event_dict, lambda v: v.strip().lower())
    users = user_canon[user_idx]
    items = item_canon[item_idx]
    events = event_canon[event_idx]
    del user_idx, item_idx, event_idx

    reasons = ["missing user_id", "missing item_id", "missing event_type", "bad timestamp", "bad value"]
    reason = np.full(users.shape[0], -1, dtype=np.int8)  # -1: fine so far

    def fail(mask: np.ndarray, code: int) -> None:
        reason[(reason < 0) & mask] = code

    fail(np.array([n == "" for n in user_names], dtype=bool)[users], 0)
    fail(np.array([n == "" for n in item_names], dtype=bool)[items], 1)
    fail(np.array([n == "" for n in event_names], dtype=bool)[events], 2)
    fail(~stamp_ok, 3)

    known = config.weights
    is_known = np.array([n in known for n in event_names], dtype=bool)
    unknown_rows = (reason < 0) & ~is_known[events]
    unknown = _ordered_counts(events[unknown_rows], event_names)
    rejected = unknown_rows if config.unknown_event_type == "reject" else np.zeros_like(unknown_rows)
    weight_of = np.array([float(known[n]) if n in known else config.default_weight for n in event_names],
                         dtype=np.float64)
    weights = weight_of[events]
    if has_value:
        scale_of = np.array([float(config.value_scaled[n]) if n in config.value_scaled else np.nan
                             for n in event_names], dtype=np.float64)
        stripped = [v.strip() for v in value_dict]
        numbers = [parse_value(v) if v else None for v in stripped]
        given = np.array([bool(v) for v in stripped], dtype=bool)
        bad_number = np.array([bool(v) and n is None for v, n in zip(stripped, numbers)], dtype=bool)
        number = np.array([n if n is not None else np.nan for n in numbers], dtype=np.float64)
        scaled = (reason < 0) & ~rejected & ~np.isnan(scale_of[events]) & given[value_idx]
        fail(scaled & bad_number[value_idx], 4)
        scaled &= reason < 0
        weights[scaled] = weights[scaled] * (number[value_idx[scaled]] / scale_of[events[scaled]])
    used = (reason < 0) & ~rejected

    bad_codes = reason[reason >= 0].astype(np.int64)
    skipped = _ordered_counts(bad_codes, reasons)
    users, user_order = _first_appearance(users[used], len(user_names))
    items, item_order = _first_appearance(items[used], len(item_names))
    codes, event_order = _first_appearance(events[used], len(event_names))
    per_type = {event_names[int(c)]: int(n) for c, n in
                zip(event_order, np.bincount(codes, minlength=event_order.shape[0]))}
    total = int(used.sum()) + int(bad_codes.shape[0]) + (
        int(rejected.sum()) if config.unknown_event_type == "reject" else 0)
    report = {
        "rows": total,
        "used": int(used.sum()),
        "by_event_type": per_type,
        "skipped": skipped,
        "unknown_event_types": unknown,
        "unknown_event_policy": config.unknown_event_type,
    }
    return EventLog(
        user_ids=[user_names[int(i)] for i in user_order],
        item_ids=[item_names[int(i)] for i in item_order],
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        weights=weights[used].astype(np.float32),
        timestamps=stamps[used],
        event_codes=codes.astype(np.int16),
        event_types=[event_names[int(i)] for i in event_order],
        report=report,
    ), ""

