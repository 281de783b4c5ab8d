"""Reading training input: the event log and the item catalogue (CSV).

Events: `user_id,item_id,event_type,timestamp[,value]`; timestamps are unix seconds or
ISO 8601. Every row that cannot be used is counted by reason and reported, never
dropped silently.
"""
from __future__ import annotations

import csv
import functools
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from .config import EventsConfig
from .errors import DataError

log = logging.getLogger("hybridrec")

T = TypeVar("T")
EVENT_COLUMNS = ("user_id", "item_id", "event_type", "timestamp")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # given vectors are stored as float32


@dataclass
class EventLog:
    """Events as parallel arrays; user and item ids are dictionary-encoded."""

    user_ids: list[str]
    item_ids: list[str]
    users: np.ndarray  # int64 codes into user_ids
    items: np.ndarray  # int64 codes into item_ids
    weights: np.ndarray  # float32
    timestamps: np.ndarray  # int64 unix seconds
    event_codes: np.ndarray  # int16 codes into event_types
    event_types: list[str]
    report: dict = field(default_factory=dict)


@dataclass
class Catalogue:
    """Items in catalogue order, with their text fields and optional given vectors."""

    item_ids: list[str]
    columns: dict[str, list[str]]
    report: dict = field(default_factory=dict)


def parse_timestamp(text: str) -> int | None:
    """Unix seconds (int or float) or an ISO 8601 date-time; None when neither."""
    text = text.strip()
    if not text:
        return None
    try:
        seconds = int(float(text))
    except (ValueError, OverflowError):  # not a number, or infinity
        pass
    else:
        return seconds if -2**63 <= seconds < 2**63 else None  # stored as int64
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def parse_value(text: str) -> float | None:
    """A `value` cell as a number that can scale a weight (finite, >= 0); None when it is not."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if 0.0 <= number < math.inf else None  # nan fails both


def _open_csv(path: Path, required: tuple[str, ...], what: str) -> tuple[csv.DictReader, object]:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{what} file {path}: {exc.strerror or exc}") from None
    reader = csv.DictReader(handle)
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        handle.close()
        raise DataError(
            f"{what} file {path}: missing column(s) {', '.join(missing)}; found: {', '.join(header) or 'none'}"
        )
    return reader, handle


def utf8_text(what: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorates a reader of a CSV file (its path first) so that a file that is not UTF-8 is a
    DataError naming it; the csv module only finds out row by row, deep in the reading."""
    def decorate(read: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(read)
        def reader(path: str | Path, *args: Any, **kwargs: Any) -> T:
            try:
                return read(path, *args, **kwargs)
            except UnicodeDecodeError as exc:
                raise DataError(f"{what} file {path}: not UTF-8 text ({exc.reason})") from None

        return reader

    return decorate


@utf8_text("events")
def read_events(path: str | Path, config: EventsConfig, engine: str = "auto") -> EventLog:
    """Read and weight the event log; unknown event types follow `config.unknown_event_type`.

    `engine`: "arrow" reads whole columns with pyarrow and works on arrays (fast, for logs of
    millions of rows), "python" reads row by row with the csv module, "auto" tries arrow and
    falls back to python for input arrow parses differently (ragged rows, invalid UTF-8,
    duplicate header names). Both give the same EventLog and the same report.
    """
    path = Path(path)
    if engine not in ("auto", "arrow", "python"):
        raise ValueError(f"engine must be auto, arrow or python, not {engine!r}")
    if engine != "python":
        from .fast_events import read_events_arrow

        reader, handle = _open_csv(path, EVENT_COLUMNS, "events")
        header = list(reader.fieldnames or [])
        handle.close()
        events, why = read_events_arrow(path, config, header)
        if events is not None:
            _log_report(path, events.report, config)
            if not events.users.shape[0]:
                _no_usable(path, events.report)
            _warn_unless_seconds(path, events.timestamps)
            return events
        if engine == "arrow":
            raise DataError(f"events file {path}: the arrow reader cannot read it: {why}")
        log.info("events %s: reading row by row (%s)", path, why)
    events = _read_events_rows(path, config)
    _warn_unless_seconds(path, events.timestamps)
    return events


SECONDS_BEFORE = 10**11  # as unix seconds, the year 5138: a log of timestamps past it is in ms or finer


def _warn_unless_seconds(path: Path, timestamps: np.ndarray) -> None:
    """Timestamps are read as unix seconds; a log in milliseconds would make every event look
    ages apart, and the popularity decay and content recency would be off by a factor of 1000."""
    sample = timestamps[:: max(1, timestamps.shape[0] // 10_001)]  # the median of a sample is enough
    if sample.shape[0] and float(np.median(sample)) >= SECONDS_BEFORE:
        log.warning("events %s: the timestamps look like milliseconds or finer (median %d, past the year "
                    "5000 as unix seconds); they are read as unix seconds: divide them by 1000", path,
                    int(np.median(sample)))


def _log_report(path: Path, report: dict, config: EventsConfig) -> None:
    bad, unknown = Counter(report["skipped"]), Counter(report["unknown_event_types"])
    if bad:
        log.warning("events %s: skipped %d unusable rows: %s", path, sum(bad.values()),
                    ", ".join(f"{n} {why}" for why, n in bad.most_common()))
    if unknown:
        action = "rejected" if config.unknown_event_type == "reject" else f"weighted {config.default_weight}"
        log.warning("events %s: %d rows of unknown event types (%s): %s", path, sum(unknown.values()), action,
                    ", ".join(f"{name} x{n}" for name, n in unknown.most_common()))


def _no_usable(path: Path, report: dict) -> None:
    raise DataError(f"events file {path}: no usable events (skipped: {report['skipped']}, "
                    f"unknown types: {report['unknown_event_types']})")


def _read_events_rows(path: Path, config: EventsConfig) -> EventLog:
    """The row-by-row reader (csv module): the reference semantics of `read_events`."""
    reader, handle = _open_csv(path, EVENT_COLUMNS, "events")
    has_value = "value" in (reader.fieldnames or [])
    user_codes: dict[str, int] = {}
    item_codes: dict[str, int] = {}
    type_codes: dict[str, int] = {}
    users, items, weights, stamps, codes = [], [], [], [], []
    bad: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    per_type: Counter[str] = Counter()
    known = config.weights
    with handle:
        for line, row in enumerate(reader, start=2):
            user, item = (row.get("user_id") or "").strip(), (row.get("item_id") or "").strip()
            event = (row.get("event_type") or "").strip().lower()
            if not user:
                bad["missing user_id"] += 1
                continue
            if not item:
                bad["missing item_id"] += 1
                continue
            if not event:
                bad["missing event_type"] += 1
                continue
            stamp = parse_timestamp(row.get("timestamp") or "")
            if stamp is None:
                bad["bad timestamp"] += 1
                continue
            if event in known:
                weight = float(known[event])
            else:
                unknown[event] += 1
                if config.unknown_event_type == "reject":
                    continue
                weight = config.default_weight
            if has_value and event in config.value_scaled:
                raw = (row.get("value") or "").strip()
                if raw:
                    number = parse_value(raw)
                    if number is None:
                        bad["bad value"] += 1
                        continue
                    weight *= number / float(config.value_scaled[event])
            per_type[event] += 1
            users.append(user_codes.setdefault(user, len(user_codes)))
            items.append(item_codes.setdefault(item, len(item_codes)))
            weights.append(weight)
            stamps.append(stamp)
            codes.append(type_codes.setdefault(event, len(type_codes)))
    total = sum(per_type.values()) + sum(bad.values()) + (
        sum(unknown.values()) if config.unknown_event_type == "reject" else 0
    )
    report = {
        "rows": total,
        "used": len(users),
        "by_event_type": dict(per_type),
        "skipped": dict(bad),
        "unknown_event_types": dict(unknown),
        "unknown_event_policy": config.unknown_event_type,
    }
    _log_report(path, report, config)
    if not users:
        _no_usable(path, report)
    return EventLog(
        user_ids=list(user_codes),
        item_ids=list(item_codes),
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        weights=np.asarray(weights, dtype=np.float32),
        timestamps=np.asarray(stamps, dtype=np.int64),
        event_codes=np.asarray(codes, dtype=np.int16),
        event_types=list(type_codes),
        report=report,
    )


@utf8_text("items")
def read_catalogue(path: str | Path, fields: list[str], embedding_column: str | None,
                   category_field: str | None = None) -> Catalogue:
    """Read items.csv: `item_id` plus whichever text fields exist (and the vector and category columns)."""
    path = Path(path)
    required = ("item_id",) + ((embedding_column,) if embedding_column else ())
    reader, handle = _open_csv(path, required, "items")
    header = reader.fieldnames or []
    wanted = [f for f in dict.fromkeys(["title", *fields, *([category_field] if category_field else [])])
              if f in header]
    if embedding_column:
        wanted.append(embedding_column)
    ids: list[str] = []
    seen: set[str] = set()
    columns: dict[str, list[str]] = {f: [] for f in wanted}
    duplicates = missing_id = 0
    with handle:
        for row in reader:
            item = (row.get("item_id") or "").strip()
            if not item:
                missing_id += 1
                continue
            if item in seen:
                duplicates += 1
                continue
            seen.add(item)
            ids.append(item)
            for f in wanted:
                columns[f].append((row.get(f) or "").strip())
    absent = [f for f in fields if f not in header]
    if absent:
        log.info("items %s: text field(s) not present, ignored: %s", path, ", ".join(absent))
    if duplicates or missing_id:
        log.warning("items %s: skipped %d duplicate item ids and %d rows without item_id", path, duplicates, missing_id)
    report = {"rows": len(ids) + duplicates + missing_id, "items": len(ids), "duplicates": duplicates,
              "missing_item_id": missing_id, "text_fields": [f for f in fields if f in header]}
    return Catalogue(item_ids=ids, columns=columns, report=report)


def parse_vectors(values: list[str], column: str, item_ids: list[str]) -> np.ndarray:
    """Parse a column of JSON arrays into a float32 matrix; every row must have the same length."""
    rows: list[list[float]] = []
    dims = None
    for item, text in zip(item_ids, values):
        try:
            vec = json.loads(text) if text else None
        except ValueError:
            raise DataError(f"items: {column} of item {item!r} is not a JSON array") from None
        if not isinstance(vec, list) or not vec or not all(
                isinstance(x, (int, float)) and abs(x) <= FLOAT32_MAX for x in vec):  # NaN fails too
            raise DataError(f"items: {column} of item {item!r} must be a non-empty JSON array of finite numbers")
        if dims is None:
            dims = len(vec)
        elif len(vec) != dims:
            raise DataError(f"items: {column} of item {item!r} has {len(vec)} numbers; others have {dims}")
        rows.append(vec)
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), dims or 0)
