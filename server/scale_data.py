"""A fast synthetic dataset for scale tests: `hybridrec scale-data`.

Millions of events are generated as whole numpy arrays (no Python loop per event or per
item) and written with pyarrow in chunks, in the formats `hybridrec train` reads:
`events.csv` (user_id,item_id,event_type,timestamp,value) and `items.csv`
(item_id,title,description,category,tags).

Structure, so that both collaborative filtering and content carry signal:

* items belong to clusters (categories) of skewed sizes; a cluster has its own words,
  which appear in the item's title, description, category and tags, plus words drawn
  from a global vocabulary, so items of a cluster share text but rarely all of it;
* clusters are grouped into "taste groups" that appear in no text field; a user prefers
  one to three clusters, mostly from one taste group, so only collaborative filtering
  can learn which clusters go together;
* user activity and item popularity are Zipf-like (a few heavy users and hit items, a
  long tail); every user has at least one event when events >= users;
* 15% of events are exploration: an item drawn by global popularity.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

# Fixed end date (2024-07-01 00:00 UTC): the output never depends on the clock.
END_TIMESTAMP = 1_719_792_000
WINDOW_SECONDS = 180 * 86_400
EVENT_TYPES = ("view", "click", "search", "message", "start_booking", "booking", "rating")
EVENT_SHARE = np.array([0.58, 0.20, 0.05, 0.03, 0.06, 0.05, 0.03])
ITEM_ZIPF = 0.9  # item popularity ~ rank ** -ITEM_ZIPF
USER_ZIPF = 0.75  # user activity ~ rank ** -USER_ZIPF
CLUSTER_ZIPF = 0.6
EXPLORE = 0.15
CLUSTER_WORDS = 40
CLUSTERS_PER_GROUP = 5
WRITE_ROWS = 1_000_000
ONSETS = ("b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "tr", "gl", "pl")
NUCLEI = ("a", "e", "i", "o", "u", "ai", "ou", "ea")
CODAS = ("", "n", "r", "s", "l", "x", "m", "nd")


def _vocabulary(rng: np.random.Generator, size: int) -> np.ndarray:
    """`size` distinct pronounceable pseudo-words (2-3 syllables), never English stop words."""
    n_syll = len(ONSETS) * len(NUCLEI)
    syllables = np.array([o + n for o in ONSETS for n in NUCLEI])
    codas = np.array(CODAS)
    need = int(size * 1.5) + 64
    parts = syllables[rng.integers(0, n_syll, (need, 3))]
    three = rng.random(need) < 0.5
    words = np.strings.add(np.strings.add(parts[:, 0], parts[:, 1]),
                           np.where(three, parts[:, 2], ""))
    words = np.strings.add(words, codas[rng.integers(0, codas.shape[0], need)])
    _, first = np.unique(words, return_index=True)
    words = words[np.sort(first)]
    if words.shape[0] < size:  # pragma: no cover - 20 x 8 x 20 x 8 ... combinations are plenty
        raise ValueError("vocabulary too small")
    return words[:size]


def _join(columns: list[np.ndarray], sep: str) -> np.ndarray:
    out = columns[0]
    for col in columns[1:]:
        out = np.strings.add(np.strings.add(out, sep), col)
    return out


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    text = pc.cast(pa.array(numbers, type=pa.int64()), pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(text, width=width, padding="0"), "")


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf weights assigned to a random permutation of n things, normalised to sum 1."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    w = w[rng.permutation(n)]
    return w / w.sum()


def generate(out_dir: str | Path, n_users: int = 10_000, n_items: int = 5_000, n_events: int = 200_000,
             seed: int = 1) -> dict[str, Path]:
    """Write events.csv and items.csv into `out_dir`; the same arguments give identical files."""
    if n_users < 1 or n_items < 1 or n_events < 1:
        raise ValueError("users, items and events must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    # --- items: clusters, popularity, text
    n_clusters = int(np.clip(round(np.sqrt(n_items) / 2), 4, 1000))
    n_groups = max(1, n_clusters // CLUSTERS_PER_GROUP)
    cluster_share = _zipf_weights(n_clusters, CLUSTER_ZIPF, rng)
    cluster_group = rng.permutation(np.arange(n_clusters) % n_groups)
    item_cluster = rng.choice(n_clusters, size=n_items, p=cluster_share)
    item_pop = _zipf_weights(n_items, ITEM_ZIPF, rng)

    vocab = _vocabulary(rng, n_clusters * (CLUSTER_WORDS + 1) + 4000)
    category_words = vocab[:n_clusters]
    cluster_words = vocab[n_clusters: n_clusters * (CLUSTER_WORDS + 1)].reshape(n_clusters, CLUSTER_WORDS)
    global_words = vocab[n_clusters * (CLUSTER_WORDS + 1):]
    global_p = _zipf_weights(global_words.shape[0], 1.0, rng)

    def cluster_word(k: int) -> list[np.ndarray]:
        # within a cluster, word j is chosen with a skew, so clusters have "typical" words
        picks = np.minimum((rng.random((n_items, k)) ** 2 * CLUSTER_WORDS).astype(np.int64), CLUSTER_WORDS - 1)
        return [cluster_words[item_cluster, picks[:, j]] for j in range(k)]

    def global_word(k: int) -> list[np.ndarray]:
        picks = rng.choice(global_words.shape[0], size=(n_items, k), p=global_p)
        return [global_words[picks[:, j]] for j in range(k)]

    title = _join(cluster_word(2) + global_word(1), " ")
    description = _join(cluster_word(4) + global_word(3), " ")
    category = category_words[item_cluster]
    tags = _join(cluster_word(2) + global_word(1), "|")
    item_width = max(6, len(str(n_items - 1)))
    items_table = pa.table({
        "item_id": _ids("i", np.arange(n_items), item_width),
        "title": pa.array(title.tolist(), type=pa.string()),
        "description": pa.array(description.tolist(), type=pa.string()),
        "category": pa.array(category.tolist(), type=pa.string()),
        "tags": pa.array(tags.tolist(), type=pa.string()),
    })
    del title, description, category, tags
    items_path = out / "items.csv"
    _write_csv(items_table, items_path)
    del items_table

    # --- users: activity and preferred clusters (mostly within one hidden taste group)
    activity = _zipf_weights(n_users, USER_ZIPF, rng)
    base = min(n_users, n_events)
    event_user = np.empty(n_events, dtype=np.int64)
    event_user[:base] = rng.permutation(n_users)[:base]
    event_user[base:] = rng.choice(n_users, size=n_events - base, p=activity)
    n_pref = rng.choice(np.array([1, 2, 3]), size=n_users, p=np.array([0.4, 0.4, 0.2]))
    # each group's clusters, by group, so a user's clusters can be drawn from their group
    by_group = np.argsort(cluster_group, kind="stable")
    group_start = np.searchsorted(cluster_group[by_group], np.arange(n_groups))
    group_size = np.bincount(cluster_group, minlength=n_groups)
    user_group = rng.choice(n_groups, size=n_users, p=np.bincount(cluster_group, weights=cluster_share,
                                                                  minlength=n_groups))
    prefs = by_group[group_start[user_group][:, None]
                     + (rng.random((n_users, 3)) * group_size[user_group][:, None]).astype(np.int64)]
    stray = rng.random((n_users, 3)) < 0.2  # some preferences come from other groups
    prefs = np.where(stray, rng.choice(n_clusters, size=(n_users, 3), p=cluster_share), prefs)

    # --- events: a preferred cluster (or exploration), then an item by popularity within it
    slot = (rng.random(n_events) * n_pref[event_user]).astype(np.int64)
    event_cluster = prefs[event_user, slot]
    by_cluster = np.argsort(item_cluster, kind="stable")
    cum = np.cumsum(item_pop[by_cluster])
    cluster_end = np.searchsorted(item_cluster[by_cluster], np.arange(n_clusters), side="right")
    cluster_begin = np.r_[0, cluster_end[:-1]]
    lo = np.where(cluster_begin > 0, cum[np.maximum(cluster_begin - 1, 0)], 0.0)[event_cluster]
    hi = np.where(cluster_end > 0, cum[np.maximum(cluster_end - 1, 0)], 0.0)[event_cluster]
    empty = hi <= lo  # a cluster without items: explore instead
    explore = (rng.random(n_events) < EXPLORE) | empty
    draw = lo + rng.random(n_events) * (hi - lo)
    event_item = by_cluster[np.minimum(np.searchsorted(cum, draw, side="right"), n_items - 1)]
    event_item[explore] = np.minimum(np.searchsorted(np.cumsum(item_pop), rng.random(int(explore.sum())),
                                                     side="right"), n_items - 1)
    del slot, event_cluster, lo, hi, draw, explore, empty
    kind = rng.choice(len(EVENT_TYPES), size=n_events, p=EVENT_SHARE).astype(np.int8)
    stamp = END_TIMESTAMP - (rng.random(n_events) ** 0.7 * WINDOW_SECONDS).astype(np.int64)
    rating = np.where(kind == EVENT_TYPES.index("rating"),
                      rng.choice(5, size=n_events, p=np.array([0.05, 0.07, 0.18, 0.35, 0.35])) + 1, 0)
    order = np.argsort(stamp, kind="stable")  # time order, ties in generation order
    user_width = max(6, len(str(n_users - 1)))
    types = pa.array(list(EVENT_TYPES), type=pa.string())
    events_path = out / "events.csv"
    with events_path.open("wb") as sink, \
            pacsv.CSVWriter(sink, _events_schema(), write_options=_write_options()) as writer:
        sink.write((",".join(_events_schema().names) + "\n").encode())
        for start in range(0, n_events, WRITE_ROWS):
            take = order[start: start + WRITE_ROWS]
            r = rating[take]
            writer.write_table(pa.table({
                "user_id": _ids("u", event_user[take], user_width),
                "item_id": _ids("i", event_item[take], item_width),
                "event_type": types.take(pa.array(kind[take].astype(np.int32))),
                "timestamp": pa.array(stamp[take], type=pa.int64()),
                "value": pa.array(r, type=pa.int64(), mask=r == 0),
            }, schema=_events_schema()))
    return {"events": events_path, "items": items_path}


def _events_schema() -> pa.Schema:
    return pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("event_type", pa.string()),
                      ("timestamp", pa.int64()), ("value", pa.int64())])


def _write_options() -> pacsv.WriteOptions:
    # No quoting: generated ids and words never hold commas, quotes or newlines.
    return pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=WRITE_ROWS)


def _write_csv(table: pa.Table, path: Path) -> None:
    with path.open("wb") as sink:
        sink.write((",".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, sink, write_options=_write_options())
