"""Small hand-made datasets for unit tests."""
from __future__ import annotations

import csv
from pathlib import Path

ITEMS = [
    ("i1", "Algebra basics", "equations and variables for beginners", "mathematics", "algebra|equations"),
    ("i2", "Advanced algebra", "polynomials equations and proofs", "mathematics", "algebra|proofs"),
    ("i3", "Calculus one", "limits derivatives and integrals", "mathematics", "calculus"),
    ("i4", "Spanish for travellers", "vocabulary and phrases for travel", "spanish", "vocabulary|travel"),
    ("i5", "Spanish grammar", "verbs tenses and grammar drills", "spanish", "grammar|verbs"),
    ("i6", "Guitar chords", "open chords strumming and rhythm", "music", "guitar|chords"),
    ("i7", "Piano scales", "scales arpeggios and finger technique", "music", "piano|scales"),
    ("i8", "Brand new course", "fresh material on guitar chords and rhythm", "music", "guitar"),
]


def write_items(path: Path, rows=ITEMS) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title", "description", "category", "tags"])
        writer.writerows(rows)
    return path


def write_events(path: Path, rows: list[tuple], header=("user_id", "item_id", "event_type", "timestamp", "value")) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def basic_events() -> list[tuple]:
    """Three taste groups (maths, spanish, music); i8 has no events at all."""
    rows = []
    t = 1_700_000_000
    groups = {"m": ["i1", "i2", "i3"], "s": ["i4", "i5"], "g": ["i6", "i7"]}
    for g, items in groups.items():
        for u in range(4):
            for j, item in enumerate(items):
                if (u + j) % 3 == 2:
                    continue
                rows.append((f"{g}{u}", item, "view", t + u * 100 + j, ""))
                rows.append((f"{g}{u}", item, "booking", t + u * 100 + j + 50, ""))
    return rows
