"""A synthetic dataset shaped like an online tutoring marketplace.

Items are learning packages (a subject, a level, a title, a description, tags and a price),
users have subject preferences and a level, and the event log follows a booking funnel:
view -> click -> start_booking -> booking -> rating, with some search and message events.

The latent structure is built so that both halves of a hybrid recommender have something
to learn:

* subject and level are visible in the item text, so content similarity can find them;
* every user and item also has a hidden "style" vector that appears in no text field, so
  only collaborative filtering can learn it.

A user's affinity to an item is subject preference x level match x exp(style . style) x
item popularity. Sampling never builds a users x items matrix: a session first picks a
(subject, level) cell for its user, then a few candidate items inside the cell by
popularity, then one of them by style (sampling-importance-resampling).
"""
from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUBJECT_TOPICS: dict[str, tuple[str, ...]] = {
    "mathematics": ("algebra", "calculus", "geometry", "trigonometry", "statistics", "probability",
                    "equations", "derivatives", "integrals", "matrices", "vectors", "proofs",
                    "logarithms", "sequences", "polynomials"),
    "physics": ("mechanics", "kinematics", "optics", "thermodynamics", "electromagnetism", "circuits",
                "waves", "relativity", "quantum", "momentum", "energy", "gravity", "magnetism",
                "acoustics", "fluids"),
    "chemistry": ("stoichiometry", "molecules", "reactions", "bonding", "acids", "bases", "titration",
                  "electrochemistry", "thermochemistry", "organic", "polymers", "isotopes",
                  "equilibrium", "kinetics", "periodicity"),
    "biology": ("cells", "genetics", "evolution", "ecology", "anatomy", "physiology", "microbiology",
                "enzymes", "photosynthesis", "DNA", "proteins", "neurons", "immunology", "botany",
                "zoology"),
    "english": ("grammar", "vocabulary", "pronunciation", "essays", "literature", "poetry", "reading",
                "idioms", "conversation", "IELTS", "TOEFL", "punctuation", "storytelling", "rhetoric",
                "spelling"),
    "spanish": ("conjugation", "subjunctive", "preterite", "imperfect", "DELE", "vocabulario",
                "gramatica", "dialogues", "travel", "castilian", "latam", "pronombres", "ser-estar",
                "por-para", "listening"),
    "programming": ("python", "javascript", "algorithms", "recursion", "debugging", "databases", "SQL",
                    "git", "testing", "web", "APIs", "classes", "loops", "react", "linux"),
    "music": ("guitar", "piano", "chords", "scales", "harmony", "rhythm", "solfege", "composition",
              "singing", "notation", "improvisation", "jazz", "drums", "violin", "songwriting"),
    "history": ("ancient", "medieval", "renaissance", "revolutions", "empires", "colonialism", "WWII",
                "cold-war", "archaeology", "civilizations", "dynasties", "democracy",
                "industrialization", "historiography", "monarchy"),
    "economics": ("microeconomics", "macroeconomics", "supply", "demand", "inflation", "markets",
                  "elasticity", "GDP", "monetary", "fiscal", "trade", "econometrics", "game-theory",
                  "finance", "unemployment"),
}
SUBJECTS: tuple[str, ...] = tuple(SUBJECT_TOPICS)
# How common each subject is, among items and among users' preferences (same order as SUBJECTS).
SUBJECT_SHARE = np.array([0.16, 0.09, 0.08, 0.08, 0.14, 0.10, 0.14, 0.09, 0.05, 0.07])
LEVELS: tuple[str, ...] = ("beginner", "intermediate", "advanced")
LEVEL_SHARE = np.array([0.45, 0.35, 0.20])
USER_LEVEL_SHARE = np.array([0.50, 0.32, 0.18])
# LEVEL_MATCH[user level, item level]: how willing a user is to take a package of that level.
LEVEL_MATCH = np.array([[1.0, 0.35, 0.08],
                        [0.30, 1.0, 0.30],
                        [0.08, 0.35, 1.0]])
LEVEL_PRICE = np.array([18.0, 32.0, 55.0])
FORMATS = ("Crash Course", "Workshop", "Bootcamp", "Masterclass", "Private Lessons", "Study Group",
           "Exam Prep", "Fundamentals", "Deep Dive", "Weekly Tutoring")
GENERIC = ("guided practice", "worked examples", "homework help", "weekly quizzes", "mock exams",
           "personal feedback", "revision notes", "one-to-one sessions", "small group sessions",
           "worksheets", "study plans", "live exercises")
SENTENCES = (
    "Learn {t0} and {t1} through {g0} with an experienced {subject} tutor.",
    "{Level} sessions focused on {t0}, {t1} and {t2}.",
    "Covers {t2} with plenty of {g1} and {g2}.",
    "Great for students who struggle with {t1} or want to master {t3}.",
    "Includes {g0} on {t3} and {t4}.",
    "Build confidence in {t4} step by step with {g2}.",
)

# Within a session, events are listed in funnel order; trimming a user's log keeps a prefix.
EVENT_TYPES: tuple[str, ...] = ("search", "view", "click", "message", "start_booking", "booking", "rating")
SEARCH, VIEW, CLICK, MESSAGE, START, BOOKING, RATING = range(len(EVENT_TYPES))
P_SEARCH, P_CLICK, P_MESSAGE = 0.14, 0.5, 0.10
P_START_AFTER_CLICK, P_BOOKING_AFTER_START, P_RATING_AFTER_BOOKING = 0.24, 0.83, 0.4
# Seconds after the session's view: (low, high) per event type, in funnel order.
EVENT_OFFSETS = np.array([(-600, -10), (0, 1), (5, 600), (600, 3_600), (3_600, 86_400),
                          (86_400, 3 * 86_400), (4 * 86_400, 20 * 86_400)])

# A fixed end date (2024-07-01 00:00 UTC) so the output never depends on the clock.
END_TIMESTAMP = 1_719_792_000
WINDOW_SECONDS = 180 * 86_400
STYLE_DIMS = 6
STYLE_SCALE = 0.75  # per-dimension std of user and item style; style . style has std ~1.4
CANDIDATES = 12  # items drawn by popularity per session before resampling by style
CHUNK_SESSIONS = 100_000
WRITE_ROWS = 200_000
NEW_ITEM_SHARE = 0.05
ZIPF_EXPONENT = 0.9
ACTIVITY_SIGMA = 1.6  # lognormal spread of events per user


@dataclass
class _Items:
    subject: np.ndarray  # int, index into SUBJECTS
    level: np.ndarray  # int, index into LEVELS
    style: np.ndarray  # float32 (n, STYLE_DIMS)
    popularity: np.ndarray  # float64, 0 for new items that get no events
    price: np.ndarray  # float64


@dataclass
class _Users:
    preference: np.ndarray  # float64 (n, subjects), rows sum to 1
    level: np.ndarray
    style: np.ndarray
    quota: np.ndarray  # events this user must have
    start: np.ndarray  # int64 unix seconds of the user's first activity
    n_preferred: np.ndarray  # how many subjects the user prefers (1-3)


@dataclass
class _Events:
    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray  # index into EVENT_TYPES
    timestamp: np.ndarray
    rating: np.ndarray  # 1-5 for rating events, 0 otherwise

    def take(self, index: np.ndarray | slice) -> _Events:
        """The events selected by a mask, an index array or a slice."""
        return _Events(self.user[index], self.item[index], self.kind[index], self.timestamp[index],
                       self.rating[index])

    @staticmethod
    def concat(parts: list[_Events]) -> _Events:
        """All events of `parts`, in order."""
        return _Events(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in ("user", "item", "kind", "timestamp", "rating")))


def generate(out_dir: str | Path, n_users: int = 1000, n_items: int = 500, n_events: int = 20000,
             seed: int = 7, progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Write `events.csv`, `items.csv` and `users.csv` into `out_dir` and return their paths.

    The output is fully determined by the arguments: the same seed gives byte-identical files.
    Exactly `n_events` events are written; every user has at least one event when
    `n_events >= n_users`, and about 5% of the items (at least one) have none.
    """
    if n_users < 1 or n_items < 1 or n_events < 1:
        raise ValueError(f"n_users, n_items and n_events must be >= 1, got {n_users}, {n_items}, {n_events}")
    report = progress or (lambda message: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    report(f"demo data: {n_items} items")
    items = _make_items(rng, n_items)
    item_text = _item_text(rng, items)
    report(f"demo data: {n_users} users")
    users = _make_users(rng, n_users, n_events)
    report(f"demo data: {n_events} events")
    events = _simulate(rng, users, items, report)

    paths = {"events": out / "events.csv", "items": out / "items.csv", "users": out / "users.csv"}
    report(f"demo data: writing {out}")
    _write_items(paths["items"], items, item_text)
    _write_users(paths["users"], users)
    _write_events(paths["events"], events, n_users, n_items)
    return paths


# ---------------------------------------------------------------------------- catalogue


def _item_labels(n: int) -> list[str]:
    return [f"pkg-{i:05d}" for i in range(1, n + 1)]


def _user_labels(n: int) -> list[str]:
    return [f"u-{i:05d}" for i in range(1, n + 1)]


def _make_items(rng: np.random.Generator, n_items: int) -> _Items:
    subject = rng.choice(len(SUBJECTS), size=n_items, p=SUBJECT_SHARE)
    level = rng.choice(len(LEVELS), size=n_items, p=LEVEL_SHARE)
    style = rng.normal(0.0, STYLE_SCALE, size=(n_items, STYLE_DIMS)).astype(np.float32)
    ranks = rng.permutation(n_items) + 1
    popularity = ranks.astype(np.float64) ** -ZIPF_EXPONENT
    n_new = min(max(1, round(n_items * NEW_ITEM_SHARE)), n_items - 1)
    if n_new > 0:
        popularity[rng.choice(n_items, size=n_new, replace=False)] = 0.0
    price = LEVEL_PRICE[level] * np.exp(rng.normal(0.0, 0.3, size=n_items))
    return _Items(subject, level, style, popularity, price)


def _capitalise(word: str) -> str:
    return word[:1].upper() + word[1:]


def _item_text(rng: np.random.Generator, items: _Items) -> list[tuple[str, str, str]]:
    """(title, description, tags) per item; all random draws are made up front, in bulk."""
    n = len(items.subject)
    n_topics = len(next(iter(SUBJECT_TOPICS.values())))
    topics = np.argsort(rng.random((n, n_topics)), axis=1)[:, :5]  # 5 distinct topics per item
    generic = np.argsort(rng.random((n, len(GENERIC))), axis=1)[:, :3]
    sentences = np.argsort(rng.random((n, len(SENTENCES))), axis=1)[:, :3]
    n_sentences = rng.integers(1, 4, size=n)
    n_tags = rng.integers(2, 5, size=n)
    formats = rng.integers(0, len(FORMATS), size=n)
    rows = []
    for i in range(n):
        subject = SUBJECTS[items.subject[i]]
        level = LEVELS[items.level[i]]
        words = [SUBJECT_TOPICS[subject][t] for t in topics[i]]
        fields = {f"t{k}": w for k, w in enumerate(words)}
        fields.update({f"g{k}": GENERIC[g] for k, g in enumerate(generic[i])})
        fields.update(subject=subject, Level=_capitalise(level))
        title = f"{_capitalise(level)} {_capitalise(words[0])} {FORMATS[formats[i]]}"
        description = " ".join(SENTENCES[s].format(**fields) for s in sorted(sentences[i, :n_sentences[i]]))
        rows.append((title, description, "|".join(words[:n_tags[i]])))
    return rows


# ---------------------------------------------------------------------------- users


def _subject_orderings(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per row, a random ordering of subjects favouring common ones (Gumbel top-k)."""
    keys = np.log(SUBJECT_SHARE) + rng.gumbel(size=(n, len(SUBJECTS)))
    return np.argsort(-keys, axis=1)


def _make_users(rng: np.random.Generator, n_users: int, n_events: int) -> _Users:
    n_preferred = rng.choice([1, 2, 3], size=n_users, p=[0.45, 0.35, 0.20])
    order = _subject_orderings(rng, n_users)
    chosen = np.arange(len(SUBJECTS))[None, :] < n_preferred[:, None]  # first k of each ordering
    weights = np.zeros((n_users, len(SUBJECTS)))
    np.put_along_axis(weights, order, np.where(chosen, rng.gamma(1.5, size=chosen.shape), 0.0), axis=1)
    # A little exploration outside the preferred subjects keeps the data from being too clean.
    preference = 0.96 * weights / weights.sum(axis=1, keepdims=True) + 0.04 / len(SUBJECTS)
    level = rng.choice(len(LEVELS), size=n_users, p=USER_LEVEL_SHARE)
    style = rng.normal(0.0, STYLE_SCALE, size=(n_users, STYLE_DIMS)).astype(np.float32)
    quota = _activity(rng, n_users, n_events)
    start = END_TIMESTAMP - (rng.random(n_users) * WINDOW_SECONDS).astype(np.int64)
    return _Users(preference, level, style, quota, start, n_preferred)


def _activity(rng: np.random.Generator, n_users: int, n_events: int) -> np.ndarray:
    """Events per user: heavy-tailed (lognormal), summing to n_events, at least 1 when possible."""
    appetite = rng.lognormal(0.0, ACTIVITY_SIGMA, size=n_users)
    base = 1 if n_events >= n_users else 0
    spread = rng.multinomial(n_events - base * n_users, appetite / appetite.sum())
    return spread + base


# ---------------------------------------------------------------------------- events


@dataclass
class _Cells:
    """Items grouped by (subject, level) cell, with cumulative popularity for sampling."""

    order: np.ndarray  # item indices sorted by cell
    cumulative: np.ndarray  # cumulative popularity along `order`
    low: np.ndarray  # per cell, cumulative popularity before its first item
    mass: np.ndarray  # per cell, total popularity


def _cells(items: _Items) -> _Cells:
    cell = items.subject * len(LEVELS) + items.level
    order = np.argsort(cell, kind="stable")
    cumulative = np.cumsum(items.popularity[order])
    mass = np.bincount(cell, weights=items.popularity, minlength=len(SUBJECTS) * len(LEVELS))
    low = np.concatenate([[0.0], np.cumsum(mass)[:-1]])
    return _Cells(order, cumulative, low, mass)


def _cell_cdf(users: _Users, cells: _Cells) -> np.ndarray:
    """Per user, the cumulative distribution over (subject, level) cells.

    Subject preference is normalised by the subject's total popularity so that it reads as the
    share of the user's sessions in that subject, whatever the subject's catalogue size.
    """
    mass = cells.mass.reshape(len(SUBJECTS), len(LEVELS))
    subject_mass = mass.sum(axis=1)
    within = np.divide(mass, subject_mass[:, None], out=np.zeros_like(mass), where=subject_mass[:, None] > 0)
    weight = users.preference[:, :, None] * within[None, :, :] * LEVEL_MATCH[users.level][:, None, :]
    weight = weight.reshape(len(users.level), -1)
    cdf = np.cumsum(weight, axis=1)
    return cdf / cdf[:, -1:]


def _pick_items(rng: np.random.Generator, session_users: np.ndarray, users: _Users, items: _Items,
                cells: _Cells, cdf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One item per session and the session's style affinity (user style . item style)."""
    cell = (cdf[session_users] < rng.random(len(session_users))[:, None]).sum(axis=1)
    cell = np.minimum(cell, cdf.shape[1] - 1)
    # Candidates in the cell by popularity; the shrink keeps the draw strictly inside the cell.
    draw = rng.random((len(session_users), CANDIDATES)) * (1.0 - 1e-9)
    target = cells.low[cell][:, None] + draw * cells.mass[cell][:, None]
    position = np.minimum(np.searchsorted(cells.cumulative, target, side="right"), len(cells.order) - 1)
    candidates = cells.order[position]
    affinity = np.einsum("sd,scd->sc", users.style[session_users], items.style[candidates])
    # Gumbel-max: picks a candidate with probability proportional to exp(affinity).
    best = np.argmax(affinity + rng.gumbel(size=affinity.shape), axis=1)
    rows = np.arange(len(session_users))
    return candidates[rows, best], affinity[rows, best]


def _funnel(rng: np.random.Generator, affinity: np.ndarray) -> np.ndarray:
    """Which event types each session produces: a (sessions, event types) boolean matrix."""
    n = len(affinity)
    # Sessions on a better-matching item go deeper into the funnel; `interest` averages ~1.
    interest = 2.0 / (1.0 + np.exp(-(affinity - affinity.mean())))
    flags = np.zeros((n, len(EVENT_TYPES)), dtype=bool)
    flags[:, SEARCH] = rng.random(n) < P_SEARCH
    flags[:, VIEW] = True
    flags[:, CLICK] = rng.random(n) < np.minimum(0.95, P_CLICK * interest)
    flags[:, MESSAGE] = rng.random(n) < P_MESSAGE * interest
    flags[:, START] = flags[:, CLICK] & (rng.random(n) < np.minimum(0.95, P_START_AFTER_CLICK * interest))
    flags[:, BOOKING] = flags[:, START] & (rng.random(n) < P_BOOKING_AFTER_START)
    flags[:, RATING] = flags[:, BOOKING] & (rng.random(n) < P_RATING_AFTER_BOOKING)
    return flags


def _ratings(rng: np.random.Generator, affinity: np.ndarray) -> np.ndarray:
    spread = affinity.std() or 1.0
    score = 3.5 + 0.9 * (affinity - affinity.mean()) / spread + rng.normal(0.0, 0.7, size=len(affinity))
    return np.clip(np.rint(score), 1, 5).astype(np.int8)


def _sessions_to_events(rng: np.random.Generator, session_users: np.ndarray, users: _Users,
                        items: _Items, cells: _Cells, cdf: np.ndarray) -> _Events:
    """Events of the given sessions, grouped by session in input order (so by user if sorted)."""
    parts = []
    for begin in range(0, len(session_users), CHUNK_SESSIONS):
        chunk = session_users[begin:begin + CHUNK_SESSIONS]
        item, affinity = _pick_items(rng, chunk, users, items, cells, cdf)
        flags = _funnel(rng, affinity)
        rating = _ratings(rng, affinity)
        start = users.start[chunk]
        when = start + (rng.random(len(chunk)) * (END_TIMESTAMP - start)).astype(np.int64)
        session, kind = np.nonzero(flags)  # row-major: session by session, funnel order within
        low, high = EVENT_OFFSETS[kind, 0], EVENT_OFFSETS[kind, 1]
        offset = low + (rng.random(len(kind)) * (high - low)).astype(np.int64)
        timestamp = np.clip(when[session] + offset, END_TIMESTAMP - WINDOW_SECONDS, END_TIMESTAMP)
        parts.append(_Events(chunk[session], item[session], kind.astype(np.int8), timestamp,
                             np.where(kind == RATING, rating[session], 0).astype(np.int8)))
    return _Events.concat(parts)


def _first_per_user(events: _Events, quota: np.ndarray) -> _Events:
    """Each user's first `quota[user]` events; `events` must be grouped by user."""
    first = np.searchsorted(events.user, events.user, side="left")
    rank = np.arange(len(events.user)) - first
    return events.take(rank < quota[events.user])


def _simulate(rng: np.random.Generator, users: _Users, items: _Items,
              report: Callable[[str], None]) -> _Events:
    """Exactly `users.quota.sum()` events, sorted by time."""
    cells = _cells(items)
    cdf = _cell_cdf(users, cells)
    n_users = len(users.quota)
    # Sessions average about two events; a second round tops up the users left short.
    per_user = np.ceil(users.quota / 2.0).astype(np.int64)
    events = _sessions_to_events(rng, np.repeat(np.arange(n_users), per_user), users, items, cells, cdf)
    events = _first_per_user(events, users.quota)
    deficit = users.quota - np.bincount(events.user, minlength=n_users)
    if deficit.any():
        report(f"demo data: topping up {int(deficit.sum())} events")
        # Every session has a view, so `deficit` sessions always yield enough events.
        extra = _sessions_to_events(rng, np.repeat(np.arange(n_users), deficit), users, items, cells, cdf)
        events = _Events.concat([events, _first_per_user(extra, deficit)])
    return events.take(np.argsort(events.timestamp, kind="stable"))


# ---------------------------------------------------------------------------- writing


def _write_items(path: Path, items: _Items, text: list[tuple[str, str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title", "description", "category", "level", "tags", "price"])
        for i, label in enumerate(_item_labels(len(items.subject))):
            title, description, tags = text[i]
            writer.writerow([label, title, description, SUBJECTS[items.subject[i]], LEVELS[items.level[i]],
                             tags, f"{items.price[i]:.2f}"])


def _write_users(path: Path, users: _Users) -> None:
    order = np.argsort(-users.preference, axis=1)  # strongest first
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "preferred_subjects", "level"])
        for u, label in enumerate(_user_labels(len(users.level))):
            preferred = [SUBJECTS[s] for s in order[u, :users.n_preferred[u]]]
            writer.writerow([label, "|".join(preferred), LEVELS[users.level[u]]])


def _write_events(path: Path, events: _Events, n_users: int, n_items: int) -> None:
    users, items = np.asarray(_user_labels(n_users)), np.asarray(_item_labels(n_items))
    kinds, values = np.asarray(EVENT_TYPES), np.asarray(["", "1", "2", "3", "4", "5"])
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "event_type", "timestamp", "value"])
        # In slices: Python strings for millions of rows at once would cost gigabytes.
        for begin in range(0, len(events.user), WRITE_ROWS):
            part = events.take(slice(begin, begin + WRITE_ROWS))
            writer.writerows(zip(users[part.user].tolist(), items[part.item].tolist(),
                                 kinds[part.kind].tolist(), part.timestamp.tolist(),
                                 values[part.rating].tolist()))
