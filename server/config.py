"""Reading the YAML config file: a `training:` section for `hybridrec train`, and
`server:` plus `pipelines:` sections for `hybridrec serve`. One file may hold all three."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "booking": 1.0,
    "start_booking": 1.0,
    "click": 0.2,
    "view": 0.05,
    "message": 0.3,
    "search": 0.05,
    "rating": 0.5,
}

BUILTIN_CONFIG_DIR = Path(__file__).parent / "configs"
COLD_ITEMS = ("content", "none")  # training.collaborative.cold_items


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read config: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def fingerprint(obj: Any) -> str:
    """A stable sha256 of a JSON-able object."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass
class EventsConfig:
    """How raw events become interaction strengths."""

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    unknown_event_type: str = "default_weight"  # or "reject"
    default_weight: float = 0.1
    # Event types whose `value` column scales the weight: weight * value / scale.
    value_scaled: dict[str, float] = field(default_factory=lambda: {"rating": 5.0})
    # How summed weights become matrix entries: "none" or "log1p".
    transform: str = "none"


@dataclass
class CollaborativeConfig:
    """TruncatedSVD over the user x item matrix and the FAISS index over item factors."""

    components: int = 64
    n_iter: int = 7
    index: str = "Flat"  # a FAISS factory string, or auto (see indexes.py)
    # search-time nprobe / efSearch (applied at load; tuned to recall@100 >= 0.97 when absent)
    # and build-time efConstruction
    index_params: dict[str, int] = field(default_factory=dict)
    # > 0: store each training user's top N items by the CF index (history excluded), searched
    # once at training, so a request of a known user without context items reads them instead
    # of searching the index (the `faiss_cf` source's `lookup: auto`)
    user_candidates: int = 0
    # items no event reached have no factors of their own: `content` gives them the factors their
    # content embedding predicts (a ridge map fitted on the other items), so the CF source can
    # find and score new items; `none` leaves them at zero
    cold_items: str = "none"
    # those predicted factors times this (0 to 1]: a smaller scale ranks new items as before among
    # themselves but lets them displace fewer items with events in a user's CF list
    cold_item_scale: float = 1.0


@dataclass
class ContentConfig:
    """Item content embeddings: TF-IDF over text fields, or a column of given vectors."""

    text_fields: list[str] = field(default_factory=lambda: ["title", "description", "category", "tags"])
    embedding_column: str | None = None
    dims: int = 64
    max_features: int = 50000
    index: str = "Flat"
    index_params: dict[str, int] = field(default_factory=dict)
    # > 0: store each item's nearest content neighbours (searched once, in batch, at training)
    # so a request looks its seeds' neighbours up instead of searching the index per seed
    neighbours: int = 0
    # a column of '|'-separated categories (genres, departments), stored per item so MMR can
    # diversify over them (`similarity: category`) and `evaluate` can report their diversity;
    # null: none stored
    category_field: str | None = "category"


@dataclass
class ItemItemConfig:
    """An item-item model: EASE or DLAE (dense closed forms) or cosine item-kNN (sparse).

    `auto` picks EASE up to `max_dense_items` items and kNN above, where EASE's dense
    item x item inverse no longer fits the time and memory budget. DLAE (Steck, 2020) is
    EASE's denoising sibling: a dropout-shaped penalty on each item's weights instead of
    the zero-diagonal constraint.
    """

    method: str = "auto"  # auto, ease, dlae, knn or none
    ease_lambda: float = 500.0  # L2 penalty of EASE and DLAE
    dlae_dropout: float = 0.5  # DLAE's dropout probability, in [0, 1)
    # EASE/DLAE: add co-occurrence within this many seconds' time scale (null: off) ...
    session_seconds: float | None = None
    session_weight: float = 1.0  # ... with this weight relative to plain co-occurrence
    knn_neighbours: int = 100
    # kNN: only each user's this many strongest items count towards similarities (null: all)
    knn_max_user_items: int | None = None
    max_dense_items: int = 6000


@dataclass
class PopularityConfig:
    """Weighted popularity for cold start; decayed by age when half_life_days is set."""

    half_life_days: float | None = 30.0


@dataclass
class TrainingConfig:
    """The `training:` section."""

    seed: int = 42
    events: EventsConfig = field(default_factory=EventsConfig)
    collaborative: CollaborativeConfig = field(default_factory=CollaborativeConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    item_item: ItemItemConfig = field(default_factory=ItemItemConfig)
    popularity: PopularityConfig = field(default_factory=PopularityConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(value: Any, annotation: Any) -> bool:
    text = str(annotation)
    if value is None:
        return "None" in text
    if text.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if text.startswith("float"):  # YAML's .nan and .inf would pass range checks after this one
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if text.startswith("str"):
        return isinstance(value, str)
    if text.startswith("bool"):
        return isinstance(value, bool)
    if text.startswith("list"):
        return isinstance(value, list)
    if text.startswith("dict"):
        return isinstance(value, dict)
    return True


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, naming `where` and the valid keys on error.

    Nested dataclass fields are built recursively; scalar types are checked.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys need not all be strings
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}"
        )
    required = [
        f.name for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    absent = [name for name in required if name not in data]
    if absent:
        raise ConfigError(f"{where}: missing required key {absent[0]!r}")
    kwargs: dict[str, Any] = {}
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for name, value in data.items():
        annotation = hints[name]
        nested = _nested_dataclass(cls, name)
        if nested is not None:
            kwargs[name] = build_dataclass(nested, value, f"{where}.{name}")
            continue
        if not _check_type(value, annotation):
            finite = "a finite number" if isinstance(value, float) and str(annotation).startswith("float") else annotation
            raise ConfigError(f"{where}.{name}: expected {finite}, got {value!r}")
        if str(annotation).startswith("float") and isinstance(value, int):
            value = float(value)
        kwargs[name] = value
    return cls(**kwargs)


def _nested_dataclass(cls: type, name: str) -> type | None:
    default = next(f for f in dataclasses.fields(cls) if f.name == name).default_factory
    if default is dataclasses.MISSING:
        return None
    sample = default()
    return type(sample) if dataclasses.is_dataclass(sample) else None


def load_training_config(path: str | Path | None) -> TrainingConfig:
    """The `training:` section of `path` (defaults when absent), validated."""
    if path is None:
        return TrainingConfig()
    data = load_yaml(path)
    config = build_dataclass(TrainingConfig, data.get("training"), f"{path}: training")
    events = config.events
    if events.unknown_event_type not in ("default_weight", "reject"):
        raise ConfigError(
            f"{path}: training.events.unknown_event_type: {events.unknown_event_type!r} is not one "
            "of: default_weight, reject"
        )
    if not 0 < config.collaborative.cold_item_scale <= 1:
        raise ConfigError(f"{path}: training.collaborative.cold_item_scale: must be > 0 and <= 1, "
                          f"got {config.collaborative.cold_item_scale!r}")
    if config.collaborative.cold_items not in COLD_ITEMS:
        raise ConfigError(f"{path}: training.collaborative.cold_items: {config.collaborative.cold_items!r} is not one "
                          f"of: {', '.join(COLD_ITEMS)}")
    if events.transform not in ("none", "log1p"):
        raise ConfigError(f"{path}: training.events.transform: {events.transform!r} is not one of: none, log1p")
    for name, weight in events.weights.items():
        if not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            raise ConfigError(f"{path}: training.events.weights.{name}: must be a finite number >= 0, got {weight!r}")
    if not 0 <= events.default_weight < math.inf:
        raise ConfigError(f"{path}: training.events.default_weight: must be a finite number >= 0, "
                          f"got {events.default_weight!r}")
    for name, scale in events.value_scaled.items():
        if not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
            raise ConfigError(f"{path}: training.events.value_scaled.{name}: must be a finite number > 0 "
                              f"(the value that keeps the weight), got {scale!r}")
    if not 0 <= config.seed < 2**32:
        raise ConfigError(f"{path}: training.seed: must be between 0 and {2**32 - 1}, got {config.seed!r}")
    if config.item_item.method not in ("auto", "ease", "dlae", "knn", "none"):
        raise ConfigError(f"{path}: training.item_item.method: {config.item_item.method!r} is not one of: "
                          "auto, ease, dlae, knn, none")
    if config.item_item.session_seconds is not None and config.item_item.session_seconds <= 0:
        raise ConfigError(f"{path}: training.item_item.session_seconds: must be > 0 or null, "
                          f"got {config.item_item.session_seconds!r}")
    if config.item_item.session_weight < 0:
        raise ConfigError(f"{path}: training.item_item.session_weight: must be >= 0, "
                          f"got {config.item_item.session_weight!r}")
    if not 0.0 <= config.item_item.dlae_dropout < 1.0:
        raise ConfigError(f"{path}: training.item_item.dlae_dropout: must be in [0, 1), "
                          f"got {config.item_item.dlae_dropout!r}")
    if config.item_item.ease_lambda <= 0 or config.item_item.knn_neighbours < 1:
        raise ConfigError(f"{path}: training.item_item: ease_lambda must be > 0 and knn_neighbours >= 1")
    if config.item_item.knn_max_user_items is not None and config.item_item.knn_max_user_items < 1:
        raise ConfigError(f"{path}: training.item_item.knn_max_user_items: must be >= 1 or null")
    for section in ("collaborative", "content"):
        for name, value in getattr(config, section).index_params.items():
            if name not in ("nprobe", "efSearch", "efConstruction") or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{path}: training.{section}.index_params.{name}: expected one of nprobe, "
                                  f"efSearch, efConstruction with an integer >= 1, got {value!r}")
    if config.collaborative.components < 1:
        raise ConfigError(f"{path}: training.collaborative.components: must be >= 1")
    if config.collaborative.n_iter < 0:
        raise ConfigError(f"{path}: training.collaborative.n_iter: must be >= 0")
    if config.content.dims < 1:
        raise ConfigError(f"{path}: training.content.dims: must be >= 1")
    if config.content.max_features < 1:
        raise ConfigError(f"{path}: training.content.max_features: must be >= 1")
    if not all(isinstance(name, str) for name in config.content.text_fields):
        raise ConfigError(f"{path}: training.content.text_fields: must be a list of column names, "
                          f"got {config.content.text_fields!r}")
    if config.content.category_field is not None and (not isinstance(config.content.category_field, str)
                                                      or not config.content.category_field):
        raise ConfigError(f"{path}: training.content.category_field: must be a column name or null, "
                          f"got {config.content.category_field!r}")
    half_life = config.popularity.half_life_days
    if half_life is not None and not half_life > 0:
        raise ConfigError(f"{path}: training.popularity.half_life_days: must be > 0 or null (no decay), "
                          f"got {half_life!r}")
    candidates = config.collaborative.user_candidates
    if not isinstance(candidates, int) or isinstance(candidates, bool) or candidates < 0:
        raise ConfigError(f"{path}: training.collaborative.user_candidates: must be an integer >= 0 (0: none stored), "
                          f"got {candidates!r}")
    if not isinstance(config.content.neighbours, int) or config.content.neighbours < 0:
        raise ConfigError(f"{path}: training.content.neighbours: must be an integer >= 0 (0: none stored), "
                          f"got {config.content.neighbours!r}")
    return config
