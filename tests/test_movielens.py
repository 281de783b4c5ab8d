"""The MovieLens converter: real 100K and latest-small data when present, tiny fixtures always."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from hybridrec.server.movielens import convert

# The repo and the read-only shared data sit side by side: <root>/main and <root>/shared.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EVENT_COLUMNS = ["user_id", "item_id", "event_type", "timestamp", "value"]
ITEM_COLUMNS = ["item_id", "title", "description", "category", "tags"]


def dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the real MovieLens data lives in ../shared/data beside the repo")
    return path


def read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_ml100k(tmp_path: Path) -> None:
    paths = convert(dataset("ml-100k"), tmp_path)
    header, events = read(paths["events"])
    assert header == EVENT_COLUMNS
    assert len(events) == 100_000
    assert {row["event_type"] for row in events} == {"rating"}
    assert {row["value"] for row in events} == {"1", "2", "3", "4", "5"}
    assert len({row["user_id"] for row in events}) == 943
    header, items = read(paths["items"])
    assert header == ITEM_COLUMNS
    assert len(items) == 1682
    by_id = {row["item_id"]: row for row in items}
    assert by_id["1"]["title"] == "Toy Story (1995)"
    assert by_id["1"]["category"] == "Animation|Children's|Comedy"
    assert sum(1 for row in items if row["category"]) > 1600
    assert all(row["tags"] == "" and row["description"] == "" for row in items)
    assert {row["item_id"] for row in events} <= set(by_id)


def test_ml_latest_small(tmp_path: Path) -> None:
    paths = convert(dataset("ml-latest-small"), tmp_path)
    _, events = read(paths["events"])
    assert len(events) == 100_836
    assert len({row["user_id"] for row in events}) == 610
    assert {float(row["value"]) for row in events} <= {x / 2 for x in range(1, 11)}
    _, items = read(paths["items"])
    assert len(items) == 9742
    by_id = {row["item_id"]: row for row in items}
    assert by_id["1"]["category"] == "Adventure|Animation|Children|Comedy|Fantasy"
    assert "pixar" in by_id["1"]["tags"].split("|")
    assert by_id["11"]["title"] == "American President, The (1995)"  # quoted in movies.csv
    tagged = [row for row in items if row["tags"]]
    assert 1000 < len(tagged) < 2000
    for row in tagged:
        tags = row["tags"].split("|")
        assert len({t.lower() for t in tags}) == len(tags)
    assert {row["item_id"] for row in events} <= set(by_id)


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding=encoding)


def test_tiny_ml100k_layout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_lines(src / "u.data", ["1\t10\t4\t881250949", "2\t11\t2\t881250950", ""])
    flags = ["0"] * 19
    drama = flags.copy()
    drama[8] = "1"
    both = flags.copy()
    both[1] = both[15] = "1"
    write_lines(src / "u.item", [
        "10|Amélie (2001)|01-Jan-2001||http://example|" + "|".join(drama),
        "11|Alien (1979)|01-Jan-1979||http://example|" + "|".join(both),
    ], encoding="latin-1")
    paths = convert(src, tmp_path / "out")
    assert set(paths) == {"events", "items"}
    _, events = read(paths["events"])
    assert events[0] == {"user_id": "1", "item_id": "10", "event_type": "rating",
                         "timestamp": "881250949", "value": "4"}
    assert len(events) == 2
    _, items = read(paths["items"])
    assert items[0]["title"] == "Amélie (2001)"
    assert items[0]["category"] == "Drama"
    assert items[1]["category"] == "Action|Sci-Fi"


def test_tiny_ml100k_reads_genre_names_from_u_genre(tmp_path: Path) -> None:
    write_lines(tmp_path / "u.data", ["1\t1\t5\t881250949"])
    write_lines(tmp_path / "u.genre", ["first|0", "second|1", ""])
    write_lines(tmp_path / "u.item", ["1|Film (1990)|||url|0|1"])
    _, items = read(convert(tmp_path, tmp_path / "out")["items"])
    assert items[0]["category"] == "second"


def test_tiny_latest_small_layout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_lines(src / "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4.5,964982703", "2,2,3.0,964982704"])
    write_lines(src / "movies.csv", [
        "movieId,title,genres",
        '1,"Good, the Bad and the Ugly, The (1966)",Action|Western',
        "2,Unknown Film (2017),(no genres listed)",
    ])
    write_lines(src / "tags.csv", [
        "userId,movieId,tag,timestamp",
        "1,1,spaghetti western,1",
        "2,1,Spaghetti Western,2",
        "2,1,Morricone,3",
        "2,2,odd|tag,4",
    ])
    paths = convert(src, tmp_path / "out")
    _, events = read(paths["events"])
    assert [row["value"] for row in events] == ["4.5", "3.0"]
    _, items = read(paths["items"])
    assert items[0] == {"item_id": "1", "title": "Good, the Bad and the Ugly, The (1966)", "description": "",
                        "category": "Action|Western", "tags": "spaghetti western|Morricone"}
    assert items[1]["category"] == ""
    assert items[1]["tags"] == "odd tag"


def test_latest_small_without_tags_file(tmp_path: Path) -> None:
    write_lines(tmp_path / "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4.0,1"])
    write_lines(tmp_path / "movies.csv", ["movieId,title,genres", "1,Film (1990),Drama"])
    _, items = read(convert(tmp_path, tmp_path / "out")["items"])
    assert items == [{"item_id": "1", "title": "Film (1990)", "description": "", "category": "Drama", "tags": ""}]


@pytest.mark.parametrize("make", [True, False], ids=["empty", "missing"])
def test_unknown_layout_is_a_one_line_error(tmp_path: Path, make: bool) -> None:
    src = tmp_path / "nothing"
    if make:
        src.mkdir()
    with pytest.raises(ValueError) as caught:
        convert(src, tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message
    assert str(src) in message
    assert "u.data" in message and "ratings.csv" in message
    assert not (tmp_path / "out").exists()
