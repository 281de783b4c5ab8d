"""Convert the MovieLens datasets (GroupLens) into hybridrec's `events.csv` and `items.csv`.

Two layouts are recognised by the files present:

* MovieLens 100K: `u.data` (tab-separated user, item, rating, unix time) and `u.item`
  (latin-1, `|`-separated: id, title, release date, video date, URL, then one 0/1 flag per
  genre in the order of `u.genre`);
* MovieLens latest-small: `ratings.csv`, `movies.csv` and optionally `tags.csv`.

Every rating becomes a `rating` event whose value is the rating as written in the source.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

EVENT_HEADER = ("user_id", "item_id", "event_type", "timestamp", "value")
ITEM_HEADER = ("item_id", "title", "description", "category", "tags")
# Genre order of the 100K flags, used when `u.genre` is missing.
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
NO_GENRES = "(no genres listed)"


def convert(src_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Convert MovieLens 100K or latest-small in `src_dir` into `out_dir`.

    Returns {"events": path, "items": path}. Raises ValueError when `src_dir` holds neither
    dataset.
    """
    src, out = Path(src_dir), Path(out_dir)
    if (src / "u.data").is_file() and (src / "u.item").is_file():
        events, items = _ml100k_events(src), _ml100k_items(src)
    elif (src / "ratings.csv").is_file() and (src / "movies.csv").is_file():
        events, items = _latest_events(src), _latest_items(src)
    else:
        raise ValueError(f"{src}: no MovieLens data found; expected u.data and u.item (MovieLens 100K) "
                         f"or ratings.csv and movies.csv (MovieLens latest-small)")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"events": out / "events.csv", "items": out / "items.csv"}
    _write(paths["events"], EVENT_HEADER, events)
    _write(paths["items"], ITEM_HEADER, items)
    return paths


def _write(path: Path, header: tuple[str, ...], rows: Iterable[Iterable[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


# ---------------------------------------------------------------------------- MovieLens 100K


def _ml100k_events(src: Path) -> Iterator[tuple[str, ...]]:
    with (src / "u.data").open(encoding="latin-1") as handle:
        for line in handle:
            fields = line.split("\t")
            if len(fields) < 4:
                continue  # blank or truncated line
            user, item, rating, stamp = (f.strip() for f in fields[:4])
            yield user, item, "rating", stamp, rating


def _ml100k_genres(src: Path) -> tuple[str, ...]:
    """Genre names by flag position, from `u.genre` (`name|index` lines) when present."""
    path = src / "u.genre"
    if not path.is_file():
        return ML100K_GENRES
    by_index: dict[int, str] = {}
    with path.open(encoding="latin-1") as handle:
        for line in handle:
            name, _, index = line.strip().rpartition("|")
            if name and index.isdigit():
                by_index[int(index)] = name
    return tuple(by_index[i] for i in sorted(by_index)) or ML100K_GENRES


def _ml100k_items(src: Path) -> Iterator[tuple[str, ...]]:
    genres = _ml100k_genres(src)
    with (src / "u.item").open(encoding="latin-1") as handle:
        for line in handle:
            fields = line.rstrip("\r\n").split("|")
            if len(fields) < 5 or not fields[0].strip():
                continue
            flags = fields[5:5 + len(genres)]
            category = "|".join(g for g, flag in zip(genres, flags) if flag.strip() == "1")
            yield fields[0].strip(), fields[1].strip(), "", category, ""


# ---------------------------------------------------------------------------- latest-small


def _latest_events(src: Path) -> Iterator[tuple[str, ...]]:
    with (src / "ratings.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            yield row["userId"], row["movieId"], "rating", row["timestamp"], row["rating"]


def _latest_tags(src: Path) -> dict[str, list[str]]:
    """Distinct tags per movie in first-seen order; case-insensitive duplicates collapse."""
    path = src / "tags.csv"
    tags: dict[str, dict[str, str]] = {}
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            # `|` separates tags in our format, so it cannot appear inside one.
            tag = " ".join((row.get("tag") or "").replace("|", " ").split())
            if tag:
                tags.setdefault(row["movieId"], {}).setdefault(tag.lower(), tag)
    return {movie: list(seen.values()) for movie, seen in tags.items()}


def _latest_items(src: Path) -> Iterator[tuple[str, ...]]:
    tags = _latest_tags(src)
    with (src / "movies.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            movie = row["movieId"]
            genres = (row.get("genres") or "").strip()
            category = "" if genres == NO_GENRES else genres
            yield movie, row["title"].strip(), "", category, "|".join(tags.get(movie, ()))
