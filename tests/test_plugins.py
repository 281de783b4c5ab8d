"""Plugin loading, the contract every stage passes, and unit tests of each built-in stage."""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest

from hybridrec.server import hookspecs
from hybridrec.server.bundle import load_model
from hybridrec.server.errors import ConfigError
from hybridrec.server.hookspecs import hookimpl
from hybridrec.server.pipeline import build_pipeline, load_serving_config, top_positions
from hybridrec.server.plugin_manager import DISABLE_ENV, Plugins
from hybridrec.server.stages import (Candidates, CandidateSource, Filter, RequestContext, Reranker, Scorer,
                                     SourceResult)
from hybridrec.plugins.scorers import normalise

from .conftest import DEFAULT_CONFIG, REPO

ALL_PLUGINS = Plugins()
STAGE_CLASSES = [cls for kind in ALL_PLUGINS.registry.values() for cls in kind.values()]


def make_ctx(model, user: str = "", k: int = 10, context=(), exclude=()) -> RequestContext:
    idx = model.item_index
    return RequestContext(
        model=model, user_id=user, user=model.user_index.get(user, -1), k=k,
        context_items=np.array([idx[i] for i in context], dtype=np.int64),
        exclude_items=np.array([idx[i] for i in exclude], dtype=np.int64),
    )


@pytest.fixture(scope="module")
def model(demo_model: Path):
    return load_model(demo_model)


def heavy_user(model) -> str:
    counts = np.diff(model.history_indptr)
    return str(model.user_ids[int(np.argmax(counts))])


# --- loading ---------------------------------------------------------------------------

def test_builtins_come_from_entry_points() -> None:
    names = {name for name, _ in ALL_PLUGINS.pm.list_name_plugin()}
    assert {"candidates", "filters", "scorers", "rerankers"} <= names
    assert ALL_PLUGINS.choices("candidates") == ["faiss_cf", "faiss_content", "item_item", "popularity"]
    assert ALL_PLUGINS.choices("filter") == ["exclude_requested", "exclude_seen"]
    assert ALL_PLUGINS.choices("scorer") == ["weighted_hybrid"]
    assert ALL_PLUGINS.choices("reranker") == ["mmr"]


def test_disable_env_blocks_a_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_ENV, "rerankers")
    plugins = Plugins()
    assert plugins.choices("reranker") == []
    with pytest.raises(ConfigError, match="unknown reranker plugin 'mmr'; valid choices: none"):
        load_serving_config(DEFAULT_CONFIG, plugins)


class BoostNewItems(Scorer):
    """An external scorer, as a team would write one."""

    plugin_name = "boost_new"

    @dataclass
    class Params:
        boost: float = 1.0

    def score(self, ctx, candidates):
        candidates.final = (self.params.boost * (1.0 - ctx.model.popularity[candidates.items])).astype(np.float32)


class ExternalPlugin:
    @hookimpl
    def hybridrec_register_stages(self):
        return [BoostNewItems]


def test_external_plugin_is_usable_from_yaml(model, tmp_path: Path) -> None:
    plugins = Plugins(extra=[ExternalPlugin()])
    spec = {"candidates": ["popularity"], "scorer": {"plugin": "boost_new", "params": {"boost": 2.0}}}
    pipeline = build_pipeline(plugins, "p", spec, "test.yaml")
    result = pipeline.run(make_ctx(model, k=5))
    chosen = result.candidates.items[result.ranked]
    pops = model.popularity[chosen]
    assert np.all(np.diff(pops) >= 0)  # least popular first


def test_duplicate_stage_name_across_plugins_is_refused() -> None:
    class Clash(Scorer):
        plugin_name = "weighted_hybrid"

    class ClashPlugin:
        @hookimpl
        def hybridrec_register_stages(self):
            return [Clash]

    with pytest.raises(ConfigError, match="'weighted_hybrid' is already registered"):
        Plugins(extra=[ClashPlugin()])


def test_pipelines_built_hook_can_refuse(tmp_path: Path) -> None:
    class Refuser:
        @hookimpl
        def hybridrec_pipelines_built(self, pipelines):
            if "content" in pipelines:
                raise ConfigError("content pipelines are not allowed here")

    with pytest.raises(ConfigError, match="not allowed here"):
        load_serving_config(DEFAULT_CONFIG, Plugins(extra=[Refuser()]))


def test_every_hook_is_documented_and_tested() -> None:
    readme = (REPO / "README.md").read_text()
    tests = "".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    hooks = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("hybridrec_")]
    assert hooks
    for name in hooks:
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"
        assert name in readme, f"{name} is not documented in README.md"
        assert f"def {name}(" in tests, f"{name} has no test implementing it"


# --- the contract every stage plugin passes ---------------------------------------------

@pytest.mark.parametrize("cls", STAGE_CLASSES, ids=lambda c: c.plugin_name)
class TestStageContract:
    def test_declares_name_kind_and_params(self, cls) -> None:
        assert cls.plugin_name and cls.plugin_name.isidentifier()
        assert cls.kind in ("candidates", "filter", "scorer", "reranker")
        assert dataclasses.is_dataclass(cls.Params)
        assert cls.__doc__, "a stage documents what it does"

    def test_defaults_validate_and_describe(self, cls) -> None:
        stage = cls(cls.plugin_name, cls.Params())
        stage.validate()
        assert isinstance(stage.describe(), dict)

    def test_runs_on_known_unknown_and_context_requests(self, cls, model) -> None:
        stage = cls("x", cls.Params())
        user = heavy_user(model)
        contexts = [make_ctx(model, user), make_ctx(model, "stranger"),
                    make_ctx(model, "", context=[str(model.item_ids[0])])]
        for ctx in contexts:
            cands = Candidates.merge({"popularity": SourceResult(
                model.popular_order[:40].copy(), model.popularity[model.popular_order[:40]])})
            cands.scores["x"] = np.linspace(0, 1, len(cands), dtype=np.float32)
            if isinstance(stage, CandidateSource):
                result = stage.generate(ctx)
                if result is not None:
                    assert result.items.dtype == np.int64
                    assert result.items.shape == result.scores.shape
                    assert np.unique(result.items).shape == result.items.shape
                    assert ((result.items >= 0) & (result.items < model.num_items)).all()
                    assert np.isfinite(result.scores).all()
                scored = stage.score(ctx, cands.items)
                assert scored is None or scored.shape == cands.items.shape
            elif isinstance(stage, Filter):
                keep = stage.keep(ctx, cands)
                assert keep.dtype == bool and keep.shape == cands.items.shape
            elif isinstance(stage, Scorer):
                if hasattr(stage, "check_pipeline"):
                    stage.params.weights = {"popularity": 1.0}
                stage.score(ctx, cands)
                assert cands.final.shape == cands.items.shape and np.isfinite(cands.final).all()
            else:
                assert isinstance(stage, Reranker)
                cands.final = cands.scores["popularity"].copy()
                ranked = top_positions(cands.final, stage.window(ctx.k))
                out = stage.rerank(ctx, cands, ranked)
                assert sorted(out.tolist()) == sorted(ranked.tolist())  # a permutation, nothing lost


# --- built-in stages ---------------------------------------------------------------------

def test_faiss_cf_matches_exact_inner_product(model) -> None:
    from hybridrec.plugins.candidates import FaissCF

    user = heavy_user(model)
    ctx = make_ctx(model, user)
    result = FaissCF("cf", FaissCF.Params(n=20)).generate(ctx)
    exact = model.item_factors @ model.user_factors[model.user_index[user]]
    expected = np.argsort(-exact)[: len(result.items)]
    assert set(result.items.tolist()) == set(expected.tolist())
    assert result.scores == pytest.approx(exact[result.items], rel=1e-4, abs=1e-5)


def test_faiss_cf_folds_in_context_for_anonymous_users(model) -> None:
    from hybridrec.plugins.candidates import FaissCF

    stage = FaissCF("cf", FaissCF.Params(n=10))
    assert stage.generate(make_ctx(model, "stranger")) is None
    item = str(model.item_ids[model.popular_order[0]])
    result = stage.generate(make_ctx(model, "", context=[item]))
    assert result is not None and len(result.items) >= 10


def test_faiss_content_anchors_are_seeds_and_scores_are_consistent(model) -> None:
    from hybridrec.plugins.candidates import FaissContent

    user = heavy_user(model)
    ctx = make_ctx(model, user)
    stage = FaissContent("content", FaissContent.Params(n=30, seeds=5))
    result = stage.generate(ctx)
    seeds = stage.seeds(ctx)[0]
    assert 0 < len(seeds) <= 5
    assert set(result.anchors.tolist()) <= set(seeds.tolist())
    assert stage.score(ctx, result.items) == pytest.approx(result.scores, abs=1e-6)
    # seeds are the user's strongest items
    items, weights, _, _ = ctx.history()
    assert set(seeds.tolist()) <= set(items.tolist())


def test_content_reason_names_the_anchor_and_event(model) -> None:
    from hybridrec.plugins.candidates import FaissContent

    item = str(model.item_ids[0])
    ctx = make_ctx(model, "", context=[item])
    reason = FaissContent("content", FaissContent.Params()).reason(ctx, 1, 0)
    assert reason == f"similar to {model.item_titles[0]}, which you are looking at"
    user = heavy_user(model)
    ctx = make_ctx(model, user)
    items, _, _, events = ctx.history()
    reason = FaissContent("content", FaissContent.Params()).reason(ctx, 1, int(items[0]))
    assert str(model.item_titles[items[0]]) in reason and "which you" in reason


def test_popularity_returns_most_popular_first(model) -> None:
    from hybridrec.plugins.candidates import Popularity

    result = Popularity("popularity", Popularity.Params(n=5)).generate(make_ctx(model, "stranger"))
    assert result.items.tolist() == np.argsort(-model.popularity, kind="stable")[:5].tolist()


def test_filters_drop_seen_context_and_requested(model) -> None:
    from hybridrec.plugins.filters import ExcludeRequested, ExcludeSeen

    user = heavy_user(model)
    seen = model.history(model.user_index[user])[0]
    extra = [i for i in range(model.num_items) if i not in set(seen.tolist())][:3]
    ctx = make_ctx(model, user, context=[str(model.item_ids[extra[0]])], exclude=[str(model.item_ids[extra[1]])])
    items = np.concatenate([seen[:5], extra]).astype(np.int64)
    cands = Candidates(items=items, scores={})
    keep = ExcludeSeen("s", ExcludeSeen.Params()).keep(ctx, cands)
    assert keep.tolist() == [False] * 5 + [False, True, True]
    keep = ExcludeSeen("s", ExcludeSeen.Params(include_context=False)).keep(ctx, cands)
    assert keep.tolist() == [False] * 5 + [True, True, True]
    keep = ExcludeRequested("r", ExcludeRequested.Params()).keep(ctx, cands)
    assert keep.tolist() == [True] * 6 + [False, True]


def test_normalisers() -> None:
    col = np.array([2.0, np.nan, 4.0, 3.0], dtype=np.float32)
    assert normalise(col, "minmax").tolist() == pytest.approx([0.0, 0.0, 1.0, 0.5])
    assert normalise(col, "rank").tolist() == pytest.approx([1 / 3, 0.0, 1.0, 2 / 3])
    z = normalise(col, "zscore")
    assert z[1] == 0.0 and z[0] == pytest.approx(1.0) and z[2] > z[3] > z[0]
    assert normalise(np.array([np.nan, np.nan]), "minmax").tolist() == [0.0, 0.0]


def test_weighted_hybrid_blends_and_handles_a_missing_source(model) -> None:
    from hybridrec.plugins.scorers import WeightedHybrid

    stage = WeightedHybrid("h", WeightedHybrid.Params())
    cands = Candidates(items=np.arange(3, dtype=np.int64), scores={
        "cf": np.array([1.0, 2.0, 3.0], np.float32),
        "content": np.array([3.0, 1.0, 2.0], np.float32),
        "popularity": np.array([0.5, 0.1, 0.9], np.float32),
    })
    stage.score(make_ctx(model), cands)
    # cf normalised [0, .5, 1], content [1, 0, .5] -> 0.6*cf + 0.4*content
    assert cands.final.tolist() == pytest.approx([0.4, 0.3, 0.8])
    assert set(cands.contributions) == {"cf", "content"}
    # a new user: CF is missing; content takes the whole weight
    cands = Candidates(items=np.arange(3, dtype=np.int64), scores={
        "content": np.array([3.0, 1.0, 2.0], np.float32), "popularity": np.array([0.5, 0.1, 0.9], np.float32)})
    stage.score(make_ctx(model), cands)
    assert cands.final.tolist() == pytest.approx([1.0, 0.0, 0.5])
    # nothing weighted is present: popularity ranks alone
    cands = Candidates(items=np.arange(3, dtype=np.int64), scores={"popularity": np.array([0.5, 0.1, 0.9], np.float32)})
    stage.score(make_ctx(model), cands)
    assert cands.final.tolist() == pytest.approx([0.5, 0.0, 1.0])


def test_weighted_hybrid_prior_fades_as_evidence_grows(model) -> None:
    from hybridrec.plugins.scorers import WeightedHybrid

    def blend(stage, ctx) -> list[float]:
        cands = Candidates(items=np.arange(3, dtype=np.int64), scores={
            "cf": np.array([1.0, 2.0, 3.0], np.float32),             # minmax -> [0, .5, 1]
            "popularity": np.array([0.9, 0.5, 0.1], np.float32)})   # minmax -> [1, .5, 0]
        stage.score(ctx, cands)
        return cands.final.tolist()

    prior = WeightedHybrid("h", WeightedHybrid.Params(weights={"cf": 1.0}, prior_weight=0.9, prior_items=8.0))
    one_context_item = make_ctx(model, context=[str(model.item_ids[0])])
    share = 0.9 * np.exp(-1 / 8)
    assert prior.prior_share(one_context_item) == pytest.approx(share)
    assert blend(prior, one_context_item) == pytest.approx([share, 0.5, 1 - share])  # popularity leads
    heavy = make_ctx(model, user=heavy_user(model))
    n = int(np.diff(model.history_indptr).max())
    assert prior.prior_share(heavy) == pytest.approx(0.9 * np.exp(-n / 8))
    assert blend(prior, heavy)[2] > blend(prior, heavy)[0]  # a long history: the personal source leads
    plain = WeightedHybrid("h", WeightedHybrid.Params(weights={"cf": 1.0}))
    assert plain.prior_share(one_context_item) == 0.0
    assert blend(plain, one_context_item) == pytest.approx([0.0, 0.5, 1.0])
    # prior_power 2: the share stays near prior_weight for the first items, then falls faster
    squared = WeightedHybrid("h", WeightedHybrid.Params(weights={"cf": 1.0}, prior_weight=0.9, prior_items=8.0,
                                                        prior_power=2.0))
    assert squared.prior_share(one_context_item) == pytest.approx(0.9 * np.exp(-(1 / 8) ** 2))
    assert squared.prior_share(one_context_item) > prior.prior_share(one_context_item)
    assert squared.prior_share(heavy) == pytest.approx(0.9 * np.exp(-(n / 8) ** 2))
    assert n > 8 and squared.prior_share(heavy) < prior.prior_share(heavy)
    for bad in ({"prior_weight": 1.5}, {"prior_items": 0.0}, {"prior_power": 0.0}, {"prior_power": float("nan")},
                {"prior_power": 9.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            WeightedHybrid("h", WeightedHybrid.Params(**bad)).validate()


def ranked_candidates(model, seed: int) -> tuple[np.ndarray, Candidates, np.ndarray]:
    """40 random items with descending final scores, and their ranking."""
    rng = np.random.default_rng(seed)
    items = rng.choice(model.num_items, size=40, replace=False).astype(np.int64)
    cands = Candidates(items=items, scores={})
    cands.final = np.sort(rng.random(40).astype(np.float32))[::-1].copy()
    return items, cands, top_positions(cands.final, 40)


def test_mmr_diversifies_and_lambda_one_keeps_order(model) -> None:
    from hybridrec.plugins.rerankers import MMR

    items, cands, ranked = ranked_candidates(model, 0)
    ctx = make_ctx(model, k=10)
    keep = MMR("mmr", MMR.Params(lambda_weight=1.0, pool=40)).rerank(ctx, cands, ranked)
    assert keep[:10].tolist() == ranked[:10].tolist()
    diverse = MMR("mmr", MMR.Params(lambda_weight=0.3, pool=40)).rerank(ctx, cands, ranked)

    def intra_list_similarity(pos: np.ndarray) -> float:
        emb = model.item_content[items[pos[:10]]]
        sims = emb @ emb.T
        return float((sims.sum() - np.trace(sims)) / (10 * 9))

    assert intra_list_similarity(diverse) < intra_list_similarity(keep)
    assert sorted(diverse.tolist()) == sorted(ranked.tolist())


def test_mmr_category_similarity_spreads_the_categories(model) -> None:
    import dataclasses

    from hybridrec.plugins.rerankers import MMR
    from hybridrec.server import metrics

    assert model.item_categories is not None and model.category_names.shape[0] > 1
    items, cands, ranked = ranked_candidates(model, 2)
    ctx = make_ctx(model, k=10)

    def category_ild(pos: np.ndarray) -> float:
        return metrics.category_diversity(items[pos[:10]][None, :], model.item_categories, 10)

    params = dict(lambda_weight=0.3, pool=40, redundancy="mean")
    spread = MMR("mmr", MMR.Params(similarity="category", **params)).rerank(ctx, cands, ranked)
    assert sorted(spread.tolist()) == sorted(ranked.tolist())
    assert category_ild(spread) > category_ild(ranked)
    # the second pick, by hand: category cosine from the items' category names as sets
    names = [{str(model.category_names[c]) for c in row if c >= 0} for row in model.item_categories[items[ranked]]]
    cosine = np.array([len(names[0] & other) / np.sqrt(len(names[0]) * len(other)) if names[0] and other else 0.0
                       for other in names])
    relevance = (cands.final[ranked] - cands.final[ranked].min()) / np.ptp(cands.final[ranked])
    value = 0.3 * relevance - 0.7 * cosine
    value[0] = -np.inf
    assert spread[0] == ranked[0] and spread[1] == ranked[int(np.argmax(value))]
    # a model trained without categories diversifies over content instead
    bare = make_ctx(dataclasses.replace(model, item_categories=None, category_names=None), k=10)
    by_content = MMR("mmr", MMR.Params(similarity="content", **params)).rerank(ctx, cands, ranked)
    fallback = MMR("mmr", MMR.Params(similarity="category", **params)).rerank(bare, cands, ranked)
    assert fallback.tolist() == by_content.tolist()
    with pytest.raises(ValueError, match="similarity must be one of: content, cf, category"):
        MMR("mmr", MMR.Params(similarity="genre")).validate()


def test_content_vectors_are_stored_unit_length_or_zero(model) -> None:
    # MMR's content similarity takes the stored vectors as they are: cosine needs unit rows
    norms = np.linalg.norm(model.item_content, axis=1)
    assert ((np.abs(norms - 1.0) < 1e-4) | (norms == 0)).all()
    assert (norms > 0).sum() > 0.5 * norms.shape[0]


def test_mmr_mean_redundancy_and_keep_top(model) -> None:
    from hybridrec.plugins.rerankers import MMR

    items, cands, ranked = ranked_candidates(model, 1)
    ctx = make_ctx(model, k=10)
    emb = model.item_content[items]

    def mean_similarity(pos: np.ndarray) -> float:
        sims = emb[pos[:10]] @ emb[pos[:10]].T
        return float((sims.sum() - np.trace(sims)) / (10 * 9))

    mean = MMR("mmr", MMR.Params(lambda_weight=0.2, pool=40, redundancy="mean")).rerank(ctx, cands, ranked)
    assert sorted(mean.tolist()) == sorted(ranked.tolist())
    assert mean_similarity(mean) < mean_similarity(ranked)
    # the second pick is the one whose mean similarity to the first trades off best, by hand
    relevance = (cands.final[ranked] - cands.final[ranked].min()) / np.ptp(cands.final[ranked])
    unit = emb[ranked] / np.maximum(np.linalg.norm(emb[ranked], axis=1, keepdims=True), 1e-12)
    value = 0.2 * relevance - 0.8 * (unit @ unit[0])
    value[0] = -np.inf
    assert mean[0] == ranked[0] and mean[1] == ranked[int(np.argmax(value))]
    kept = MMR("mmr", MMR.Params(lambda_weight=0.2, pool=40, redundancy="mean", keep_top=3)).rerank(ctx, cands, ranked)
    assert kept[:3].tolist() == ranked[:3].tolist()
    assert kept[3:10].tolist() != ranked[3:10].tolist()
    by_relevance = MMR("mmr", MMR.Params(lambda_weight=0.2, pool=40, redundancy="mean",
                                         order="relevance")).rerank(ctx, cands, ranked)
    assert set(by_relevance[:10].tolist()) == set(mean[:10].tolist())  # the same picks ...
    assert by_relevance[:10].tolist() == sorted(mean[:10].tolist(), key=lambda p: -cands.final[p])  # ... best first
    with pytest.raises(ValueError, match="order must be one of: pick, relevance"):
        MMR("mmr", MMR.Params(order="score")).validate()
    with pytest.raises(ValueError, match="redundancy must be one of: max, mean"):
        MMR("mmr", MMR.Params(redundancy="sum")).validate()
    with pytest.raises(ValueError, match="keep_top must be >= 0"):
        MMR("mmr", MMR.Params(keep_top=-1)).validate()


def test_top_positions_is_deterministic_and_ignores_nan() -> None:
    scores = np.array([0.5, np.nan, 0.9, 0.5, 0.1], dtype=np.float32)
    assert top_positions(scores, 3).tolist() == [2, 0, 3]
    assert top_positions(scores, 10).tolist() == [2, 0, 3, 4, 1]


def test_a_failing_source_degrades_instead_of_failing(model) -> None:
    class Broken(CandidateSource):
        """Always fails."""

        plugin_name = "broken"

        @dataclass
        class Params:
            pass

        def generate(self, ctx):
            raise RuntimeError("index server on fire")

    class BrokenPlugin:
        @hookimpl
        def hybridrec_register_stages(self):
            return [Broken]

    plugins = Plugins(extra=[BrokenPlugin()])
    spec = {"candidates": ["broken", "popularity"], "filters": ["exclude_seen"],
            "scorer": {"plugin": "weighted_hybrid", "params": {"weights": {"broken": 0.5, "popularity": 0.5}}}}
    result = build_pipeline(plugins, "p", spec, "t.yaml").run(make_ctx(model, heavy_user(model), k=5))
    assert result.degraded == ["broken"]
    assert len(result.ranked) == 5


def test_filters_run_unless_every_source_left_the_excluded_items_out(model) -> None:
    class Seen(CandidateSource):
        """Offers the user's own history: items the filters must drop."""

        plugin_name = "seen"

        @dataclass
        class Params:
            claims_excluded: bool = False  # says it skipped ctx.excluded() (here falsely)

        def generate(self, ctx):
            items = ctx.history()[0][:20].astype(np.int64)
            return SourceResult(items, np.ones(items.shape[0], dtype=np.float32),
                                excluded_applied=self.params.claims_excluded)

    class SeenPlugin:
        @hookimpl
        def hybridrec_register_stages(self):
            return [Seen]

    plugins = Plugins(extra=[SeenPlugin()])
    user = heavy_user(model)
    seen = set(model.history(model.user_index[user])[0].tolist())

    def served(claims: bool) -> set[int]:
        spec = {"candidates": [{"plugin": "seen", "params": {"claims_excluded": claims}}, "popularity"],
                "filters": ["exclude_seen"],
                "scorer": {"plugin": "weighted_hybrid", "params": {"weights": {"seen": 1.0}}}}
        result = build_pipeline(plugins, "p", spec, "t.yaml").run(make_ctx(model, user, k=50))
        return set(result.candidates.items.tolist())

    # a source that does not say so is filtered: nothing seen survives, popular items remain
    assert served(False) and not served(False) & seen
    # one that says so is trusted (the built-in sources do): exclude_seen's pass is skipped
    assert served(True) & seen


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat", "Flat,RFlat"])
@pytest.mark.parametrize("step", [8, 2])  # 250 exclusions: over-fetched; 1000: an ID selector
def test_faiss_search_skips_excluded_items(factory: str, step: int) -> None:
    from hybridrec.plugins.candidates import OVERFETCH_MAX_EXCLUDED, faiss_search

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    index = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    if hasattr(index, "nprobe"):
        index.nprobe = 8
    excluded = np.arange(0, 2000, step, dtype=np.int64)
    assert (excluded.shape[0] > OVERFETCH_MAX_EXCLUDED) == (step == 2)
    _, labels = faiss_search(index, vectors[:3], 10, excluded[::-1].copy())  # any order
    assert labels.shape == (3, 10)
    found = labels[labels >= 0]
    assert found.shape[0] == 30 and not np.isin(found, excluded).any()
    for row in range(3):
        exact = vectors @ vectors[row]
        exact[excluded] = -np.inf
        best = np.argsort(-exact)[:10]
        recall = len(set(best.tolist()) & set(labels[row].tolist())) / 10
        assert recall >= 0.8, f"{factory} recall {recall}"
        if factory == "Flat":  # exact search: the same items in the same order
            assert labels[row].tolist() == best.tolist()
    _, one = faiss_search(index, vectors[0], 10, excluded)  # one query (the CF source's case)
    assert one.tolist() == labels[:1].tolist()


def test_item_item_scores_are_the_weighted_sum_of_rows(model) -> None:
    from hybridrec.plugins.candidates import ItemItem

    user = heavy_user(model)
    ctx = make_ctx(model, user)
    ctx._cache["excluded"] = np.sort(ctx.history()[0].astype(np.int64))
    stage = ItemItem("item_item", ItemItem.Params(n=15))
    result = stage.generate(ctx)
    items, weights, _, _ = ctx.history()
    dense = model.item_item.toarray()
    expected = weights @ dense[items]
    assert result.scores == pytest.approx(expected[result.items], rel=1e-4, abs=1e-6)
    assert not np.isin(result.items, items).any()
    allowed = np.setdiff1d(np.arange(model.num_items), items)
    best = allowed[np.argsort(-expected[allowed], kind="stable")[:15]]
    assert set(result.items.tolist()) == set(best.tolist())
    reason = stage.reason(ctx, int(result.items[0]), -1)
    assert reason.startswith("often chosen by people who also chose ")
    assert stage.generate(make_ctx(model, "stranger")) is None


def test_faiss_content_looks_up_stored_neighbours(model) -> None:
    from hybridrec.plugins.candidates import FaissContent
    from hybridrec.server.training import neighbour_table

    table = neighbour_table(model.content_index, model.item_content, 6)
    with_table = dataclasses.replace(model, content_neighbours=table)
    user = heavy_user(model)
    ctx = make_ctx(with_table, user)
    ctx._cache["excluded"] = np.sort(ctx.history()[0]).astype(np.int64)  # as the exclude_seen filter pushes
    stage = FaissContent("content", FaissContent.Params(n=12, seeds=5))
    result = stage.generate(ctx)
    seeds = stage.seeds(ctx)[0]
    reachable = set(table[seeds].ravel().tolist()) - set(ctx.excluded().tolist()) - {-1}
    assert 0 < len(result.items) <= 12
    assert set(result.items.tolist()) <= reachable
    assert stage.score(ctx, result.items) == pytest.approx(result.scores, abs=1e-6)
    # the kept candidates are the best-scored of all the seeds' neighbours
    everything = np.array(sorted(reachable), dtype=np.int64)
    if everything.shape[0] > 12:
        assert result.scores.min() >= np.sort(stage.score(ctx, everything))[-12] - 1e-6
    # lookup: index ignores the table and searches
    searched = FaissContent("content", FaissContent.Params(n=12, seeds=5, lookup="index")).generate(ctx)
    assert not set(searched.items.tolist()) & set(ctx.excluded().tolist())
    with pytest.raises(ValueError, match="lookup must be one of: auto, index"):
        FaissContent("content", FaissContent.Params(lookup="table")).validate()


def test_sorted_unique_in_sorted_and_merge_match_numpy() -> None:
    from hybridrec.server.stages import Candidates, SourceResult, in_sorted, sorted_unique

    rng = np.random.default_rng(5)
    for size in (0, 1, 2, 7, 300):
        values = rng.integers(0, 50, size=size).astype(np.int64)
        assert sorted_unique(values).tolist() == np.unique(values).tolist()
        probe = rng.integers(-5, 60, size=40)
        assert in_sorted(probe, np.unique(values)).tolist() == np.isin(probe, values).tolist()
    # two sources that share items: one row per item, each source's score where it found it
    a = SourceResult(np.array([9, 3, 5], dtype=np.int64), np.array([0.9, 0.3, 0.5], dtype=np.float32),
                     np.array([1, 1, 2], dtype=np.int64))
    b = SourceResult(np.array([5, 1], dtype=np.int64), np.array([0.55, 0.1], dtype=np.float32))
    merged = Candidates.merge({"a": a, "b": b})
    assert merged.items.tolist() == [1, 3, 5, 9]
    assert np.allclose(merged.scores["a"], [np.nan, 0.3, 0.5, 0.9], equal_nan=True)
    assert np.allclose(merged.scores["b"], [0.1, np.nan, 0.55, np.nan], equal_nan=True)
    assert merged.anchors["a"].tolist() == [-1, 1, 2, 1] and "b" not in merged.anchors


def test_faiss_cf_reads_stored_user_candidates(model) -> None:
    from hybridrec.plugins.candidates import FaissCF
    from hybridrec.server.training import user_candidate_table

    table, scores = user_candidate_table(model.cf_index, model.user_factors, model.history_indptr,
                                         model.history_items, 20)
    stored_model = dataclasses.replace(model, cf_user_items=table, cf_user_scores=scores)
    stage = FaissCF("cf", FaissCF.Params(n=15))
    searching = FaissCF("cf", FaissCF.Params(n=15, lookup="index"))

    def ctx_for(user: str, **kwargs) -> RequestContext:
        ctx = make_ctx(stored_model, user, **kwargs)
        pushed = [ctx.history()[0], ctx.context_items, ctx.exclude_items]  # as exclude_seen + exclude_requested push
        ctx._cache["excluded"] = np.unique(np.concatenate(pushed)).astype(np.int64)
        return ctx

    used = 0
    for user in model.user_ids[:60].tolist():  # the first 15 of the stored 20 are what the search finds
        ctx = ctx_for(user)
        found = stage.stored(ctx)
        searched = searching.generate(ctx_for(user))
        if found is None:
            assert searched is None or searched.items.shape[0] == 0
            continue
        used += 1
        assert found.items.tolist() == searched.items.tolist()
        assert found.scores == pytest.approx(searched.scores, rel=1e-5)
        assert stage.generate(ctx).items.tolist() == found.items.tolist()
    assert used >= 50
    user = heavy_user(model)
    item = str(model.item_ids[int(np.setdiff1d(np.arange(model.num_items), model.history(0)[0])[0])])
    # requests the table cannot answer search the index
    assert stage.stored(ctx_for(user, context=[item])) is None  # context items move the CF vector
    assert stage.stored(ctx_for(user, exclude=[item])) is None  # other exclusions than the history
    assert stage.stored(ctx_for("stranger", context=[item])) is None
    no_filter = make_ctx(stored_model, user)  # a pipeline without exclude_seen: nothing excluded
    assert stage.stored(no_filter) is None
    assert FaissCF("cf", FaissCF.Params(n=25)).stored(ctx_for(user)) is None  # wider than stored
    assert FaissCF("cf", FaissCF.Params(n=15)).stored(make_ctx(model, user)) is None  # no table
    with pytest.raises(ValueError, match="lookup must be one of: auto, index"):
        FaissCF("cf", FaissCF.Params(lookup="table")).validate()


def test_mmr_swap_search_reaches_a_set_no_single_swap_improves(model) -> None:
    from hybridrec.plugins.rerankers import MMR, swap_search

    items, cands, ranked = ranked_candidates(model, 3)
    ctx = make_ctx(model, k=10)
    lam = 0.5
    relevance = (cands.final[ranked] - cands.final[ranked].min()) / np.ptp(cands.final[ranked])
    unit = model.item_content[items[ranked]].astype(np.float64)
    sims = unit @ unit.T
    discount = 1.0 / np.log2(np.arange(2, 12))

    def page_objective(positions) -> float:  # written out: DCG-weighted relevance best first, then ILD
        chosen = sorted(positions)
        gain = sum(relevance[p] * d for p, d in zip(chosen, discount)) / discount.sum()
        similarity = sum(sims[a, b] for a in chosen for b in chosen if a != b) / 90
        return lam * gain + (1 - lam) * (1 - similarity)


    greedy = MMR("mmr", MMR.Params(lambda_weight=lam, pool=40, redundancy="mean", keep_top=2))
    swapped = MMR("mmr", MMR.Params(lambda_weight=lam, pool=40, redundancy="mean", keep_top=2, search="swap"))
    start = greedy.rerank(ctx, cands, ranked)[:10]
    out = swapped.rerank(ctx, cands, ranked)
    assert sorted(out.tolist()) == sorted(ranked.tolist())
    top = out[:10]
    assert top.tolist() == sorted(top.tolist(), key=lambda p: -cands.final[p])  # relevance order
    assert set(ranked[:2].tolist()) <= set(top.tolist())  # the keep_top picks stay
    position = {int(p): i for i, p in enumerate(ranked)}
    found = [position[int(p)] for p in top]
    assert page_objective(found) > page_objective([position[int(p)] for p in start])
    # each listed item's stage score: lambda x relevance - (1 - lambda) x mean similarity to the others
    scores = cands.stage_scores["mmr"]
    for p in found:
        mean_sim = sum(sims[p, q] for q in found if q != p) / 9
        assert scores[ranked[p]] == pytest.approx(lam * relevance[p] - (1 - lam) * mean_sim, abs=1e-5)
    assert np.isnan(scores[out[10:]]).all()
    for drop in [p for p in found if p not in (0, 1)]:
        for add in set(range(40)) - set(found):
            assert page_objective([p for p in found if p != drop] + [add]) <= page_objective(found) + 1e-9
    # lambda 1 keeps the top of the pool; the function alone matches the stage
    assert swap_search(relevance, sims, np.arange(10), 0, 1.0).tolist() == list(range(10))
    greedy_positions = np.array([position[int(p)] for p in start])
    assert swap_search(relevance, sims, greedy_positions, 2, lam).tolist() == sorted(found)
    # a longer list is pages in turn: its first page is the k=10 list, its second the best set of what is left
    longer = swapped.rerank(make_ctx(model, k=20), cands, ranked)
    assert longer[:10].tolist() == top.tolist()
    second = [position[int(p)] for p in longer[10:20]]
    assert second == sorted(second) and not set(second) & set(found)
    left = [p for p in range(40) if p not in found]
    for drop in second:
        for add in set(left) - set(second):
            assert page_objective([q for q in second if q != drop] + [add]) <= page_objective(second) + 1e-9
    with pytest.raises(ValueError, match="search must be one of: greedy, swap"):
        MMR("mmr", MMR.Params(search="exhaustive")).validate()
    with pytest.raises(ValueError, match="page must be >= 2"):
        MMR("mmr", MMR.Params(page=1)).validate()


def test_mmr_swap_search_on_random_shapes_returns_every_candidate_once(model) -> None:
    """Pools shorter than a page, k above the pool, keep_top above k, tied scores: the swap
    search always returns a permutation of the ranking, its pages in the scorer's order."""
    from hybridrec.plugins.rerankers import MMR

    rng = np.random.default_rng(5)
    for trial in range(300):
        n, k, pool = (int(v) for v in rng.integers(1, 40, size=3))
        keep_top, page = int(rng.integers(0, 12)), int(rng.integers(2, 12))
        items = rng.choice(model.num_items, size=n, replace=False).astype(np.int64)
        cands = Candidates(items=items, scores={})
        cands.final = (np.ones(n) if trial % 7 == 0 else rng.random(n)).astype(np.float32)
        ranked = top_positions(cands.final, n)
        stage = MMR("mmr", MMR.Params(lambda_weight=float(rng.random()), pool=pool, redundancy="mean",
                                      keep_top=keep_top, search="swap", page=page,
                                      similarity=("content", "cf", "category")[trial % 3]))
        out = stage.rerank(make_ctx(model, k=k), cands, ranked)
        assert sorted(out.tolist()) == sorted(ranked.tolist())
        listed = min(k, n, max(k, pool))
        for start in range(0, listed, page):
            scores = cands.final[out[start:min(start + page, listed)]]
            assert (np.diff(scores) <= 0).all()
        assert out[:min(keep_top, listed)].tolist() == ranked[:min(keep_top, listed)].tolist()
