"""`evaluate` and `tune` run the serving pipelines in-process and report measured figures."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hybridrec.server.cli import main
from hybridrec.server.config import load_training_config
from hybridrec.server.errors import ConfigError, DataError
from hybridrec.server.app import load_state
from hybridrec.server.evaluation import Gathered, evaluate, mmr_stage, recommend_all
from hybridrec.server.pipeline import Pipeline, load_serving_config
from hybridrec.server.plugin_manager import Plugins
from hybridrec.server.service import RecommenderService
from hybridrec.server.tuning import (Journal, MIN_GAIN, MMR_LAMBDAS, MMR_PATIENCE, SEARCH_CONTENT_DIMS, SEARCH_DLAE_DROPOUT,
                                     SEARCH_MMR_SHAPES, SEARCH_NORMALISE, SEARCH_PRIOR, apply_tuned, mmr_pipelines_of, tune,
                                     weight_grid)

from .conftest import DEFAULT_CONFIG, REPO, shared_dataset

MOVIELENS_CONFIG = REPO / "server" / "configs" / "movielens-100k.yaml"
UNTUNED_CONFIG = REPO / "server" / "configs" / "movielens-100k-untuned.yaml"


@pytest.fixture(scope="module")
def demo_dir(demo_data: dict[str, Path]) -> Path:
    return demo_data["events"].parent


@pytest.fixture(scope="module")
def demo_report(demo_dir: Path) -> dict:
    return evaluate(demo_dir, DEFAULT_CONFIG, ks=(5, 10), lambdas=(1.0, 0.5, 0.2))


def test_report_has_every_pipeline_and_metric(demo_report: dict) -> None:
    assert list(demo_report["pipelines"]) == ["hybrid", "hybrid_no_mmr", "cf", "content", "popularity"]
    for entry in demo_report["pipelines"].values():
        m = entry["metrics"]
        for name in ("precision", "recall", "ndcg", "map", "hitrate", "mrr", "coverage", "ild", "category_ild"):
            for k in (5, 10):
                assert 0.0 <= m[f"{name}@{k}"] <= 1.0
        assert m["novelty@10"] > 0 and m["popularity_bias@10"] > 0
        assert m["hitrate@10"] >= m["hitrate@5"] and m["recall@10"] >= m["recall@5"]
    hybrid, popular = demo_report["pipelines"]["hybrid_no_mmr"]["metrics"], demo_report["pipelines"]["popularity"]["metrics"]
    assert hybrid["ndcg@10"] > popular["ndcg@10"]
    assert hybrid["coverage@10"] > popular["coverage@10"]
    assert popular["popularity_bias@10"] > hybrid["popularity_bias@10"]


def test_mmr_curve_trades_accuracy_for_diversity(demo_report: dict) -> None:
    curve = demo_report["mmr_curve"]
    assert curve["pipeline"] == "hybrid" and curve["default_lambda"] == 0.7
    assert curve["diversity"] == "ild@10" and demo_report["mmr_curves"] == [curve]  # content MMR, one curve
    points = {p["lambda"]: p for p in curve["points"]}
    assert list(points) == [1.0, 0.7, 0.5, 0.2]  # the configured 0.7 joins the asked lambdas, in order
    assert points[0.7]["ndcg@10"] == pytest.approx(demo_report["pipelines"]["hybrid"]["metrics"]["ndcg@10"])
    assert points[0.2]["ild@10"] > points[1.0]["ild@10"]
    assert points[0.7]["category_ild@10"] == pytest.approx(
        demo_report["pipelines"]["hybrid"]["metrics"]["category_ild@10"])
    assert points[1.0]["ndcg@10"] == pytest.approx(demo_report["pipelines"]["hybrid_no_mmr"]["metrics"]["ndcg@10"])


def test_cold_start_sections(demo_report: dict) -> None:
    cold = demo_report["cold_start_items"]
    assert cold["held_out_items"] > 0 and cold["users"] > 0
    assert cold["random_recall@10"] == pytest.approx(min(10, cold["held_out_items"]) / cold["held_out_items"])
    assert cold["recall@10"] > cold["random_recall@10"]  # content finds unseen items better than chance
    # each content-based source alone: content similarity, and CF over factors predicted from content
    # (default.yaml leaves new items without CF factors, so only content similarity can rank them)
    pipeline = load_serving_config(DEFAULT_CONFIG, Plugins()).pipelines[cold["pipeline"]]
    content_sources = {s.name for s in pipeline.sources if s.plugin_name == "faiss_content"}
    assert content_sources and {key for key in cold if key.endswith(" alone recall@10")} == {
        f"{s} alone recall@10" for s in content_sources}
    assert all(0.0 <= cold[f"{s} alone recall@10"] <= 1.0 for s in content_sources)
    users = demo_report["cold_start_users"]
    assert users["users"] > 0 and set(users["metrics"]) == set(demo_report["pipelines"])
    assert users["metrics"]["hybrid_no_mmr"]["ndcg@10"] > 0


def test_evaluation_runs_the_serving_pipelines(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = Pipeline.run

    def counting(self, ctx):
        calls.append(self.name)
        return original(self, ctx)

    monkeypatch.setattr(Pipeline, "run", counting)
    report = evaluate(demo_dir, DEFAULT_CONFIG, ks=(10,), pipelines=["cf"], lambdas=(), cold_start=False)
    assert set(calls) == {"cf"} and len(calls) == report["pipelines"]["cf"]["users"]


@pytest.mark.parametrize("split", ["temporal", "leave_last"])
def test_other_splits(demo_dir: Path, split: str) -> None:
    report = evaluate(demo_dir, DEFAULT_CONFIG, split=split, ks=(10,), pipelines=["hybrid_no_mmr", "popularity"],
                      lambdas=(), cold_start=False)
    assert report["split"].startswith(split)
    assert report["pipelines"]["hybrid_no_mmr"]["users"] > 0


def test_unknown_pipeline_and_dataset_errors(demo_dir: Path, tmp_path: Path) -> None:
    # the pipeline names are checked before the data is read (a missing dataset would be a DataError),
    # so a typo costs nothing on a catalogue that takes minutes to train
    for run in (lambda: evaluate(tmp_path / "absent", DEFAULT_CONFIG, pipelines=["hybrid", "nope"], cold_start=False),
                lambda: tune(tmp_path / "absent", DEFAULT_CONFIG, tmp_path / "t.yaml", pipeline="nope")):
        with pytest.raises(ConfigError, match=r"default\.yaml: pipeline 'nope' is not in this config; available: hybrid, "):
            run()
    assert not (tmp_path / "t.yaml").exists()
    with pytest.raises(DataError, match="no MovieLens data found"):
        evaluate(tmp_path, DEFAULT_CONFIG)


def test_cli_evaluate_writes_reports(demo_dir: Path, tmp_path: Path, capsys) -> None:
    code = main(["evaluate", "--data", str(demo_dir), "--k", "5", "10", "--pipelines", "hybrid", "popularity",
                 "--out", str(tmp_path / "rep")])
    assert code == 0
    out = capsys.readouterr().out
    assert "hybrid" in out and "cold-start items" in out
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(report["pipelines"]) == {"hybrid", "popularity"}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| hybrid |" in md and "mmr_tradeoff.png" in md
    for png in ("metrics.png", "mmr_tradeoff.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_evaluate_over_several_seeds_summarises_the_spread(demo_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "seeds"
    code = main(["evaluate", "--data", str(demo_dir), "--k", "10", "--pipelines", "hybrid", "popularity",
                 "--no-cold-start", "--seeds", "3", "5", "--out", str(out)])
    assert code == 0
    runs = {seed: json.loads((out / f"seed-{seed}" / "report.json").read_text()) for seed in (3, 5)}
    assert [runs[seed]["split"] for seed in (3, 5)] == ["random (test ratio 0.25, seed 3)", "random (test ratio 0.25, seed 5)"]
    assert (out / "seed-3" / "report.md").is_file() and (out / "seed-5" / "metrics.png").is_file()
    ndcg = {name: [runs[seed]["pipelines"][name]["metrics"]["ndcg@10"] for seed in (3, 5)] for name in ("hybrid", "popularity")}
    assert ndcg["hybrid"][0] != ndcg["hybrid"][1]  # two splits, two models
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [3, 5]
    for name, values in ndcg.items():
        assert summary["pipelines"][name]["ndcg@10"]["mean"] == pytest.approx(np.mean(values))
        assert summary["pipelines"][name]["ndcg@10"]["sd"] == pytest.approx(np.std(values, ddof=1))
    best = max(ndcg, key=lambda name: np.mean(ndcg[name]))
    other = "popularity" if best == "hybrid" else "hybrid"
    assert summary["best"] == best
    assert summary["gap_to_best"][other]["best_ahead"] == sum(b > o for b, o in zip(ndcg[best], ndcg[other]))
    (mmr,) = summary["mmr"]  # the demo hybrid's MMR, at its lambda 0.7, against lambda 1 on each seed
    curves = [{p["lambda"]: p for p in runs[seed]["mmr_curves"][0]["points"]} for seed in (3, 5)]
    assert mmr["ndcg_change_percent"]["values"] == pytest.approx(
        [100 * (c[0.7]["ndcg@10"] / c[1.0]["ndcg@10"] - 1) for c in curves])
    assert "cold_start_items" not in summary and "cold_start_users" not in summary
    printed = capsys.readouterr().out
    assert f"gap to {best}" in printed and "MMR hybrid at lambda 0.7 against lambda 1" in printed
    assert "## Against the best pipeline by mean ndcg@10" in (out / "seeds.md").read_text()


@pytest.mark.parametrize("seeds, message", [(["3"], "give at least two seeds"), (["3", "4", "3"], "seed 3 is given more than once")])
def test_evaluate_refuses_bad_seed_lists_before_reading_data(tmp_path: Path, seeds: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--data", str(tmp_path / "absent"), "--seeds", *seeds])
    assert exit_info.value.code == 2 and f"--seeds: {message}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", str(tmp_path / "absent"), "--seeds", "1", "2", "--seed", "3"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_weight_grid() -> None:
    grid = weight_grid(["a", "b"])
    assert len(grid) == 11 and all(sum(g.values()) == pytest.approx(1.0) for g in grid)
    assert {"a": 0.3, "b": 0.7} in grid


def test_tune_writes_a_config_train_and_serve_accept(demo_dir: Path, tmp_path: Path) -> None:
    out, journal = tmp_path / "tuned.yaml", tmp_path / "trials.jsonl"
    # a first run is interrupted after its third training trial ...
    printed: list[str] = []

    def interrupt_after_three(message: str) -> None:
        printed.append(message)
        if sum("validation ndcg@10" in m for m in printed) == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        tune(demo_dir, DEFAULT_CONFIG, out, pipeline="hybrid_no_mmr", folds=2, valid_ratio=0.2,
             progress=interrupt_after_three, journal=journal)
    assert not out.exists() and len(journal.read_text().splitlines()) == 3
    with journal.open("a") as handle:
        handle.write('{"key": "cut sh')  # the interruption may leave half a line
    # ... and the same call again resumes it: those three are read, not trained again
    result = tune(demo_dir, DEFAULT_CONFIG, out, pipeline="hybrid_no_mmr", folds=2, valid_ratio=0.2,
                  journal=journal)
    interrupted = [(m.split("validation ndcg@10")[0].strip(), float(m.split()[-1])) for m in printed
                   if "validation ndcg@10" in m]
    assert [t["trial"] for t in result["trials"][:3]] == [label for label, _ in interrupted]
    assert all(abs(t["ndcg@10"] - score) <= 6e-5 for t, (_, score) in zip(result["trials"], interrupted))
    assert all(t.get("journal") for t in result["trials"][:3])
    assert not any(t.get("journal") for t in result["trials"][3:])
    training_trials = [t for t in result["trials"] if t["trial"] == "base config" or " = " in t["trial"]]
    assert len(journal.read_text().splitlines()) == 1 + len(training_trials)  # with the half line
    assert result["trials"] and result["validation_ndcg@10"] > 0
    assert result["folds"] == 2 and len(result["validation_rows"]) == 2
    assert "2 folds of 0.2 of each user's training items" in out.read_text().splitlines()[0]
    scores = [t["ndcg@10"] for t in result["trials"] if "ild@10" not in t]
    assert result["trials"][0]["trial"] == "base config"
    # without `structure` the rating transform and the item-item method stay as configured
    assert not any(t["trial"].startswith(("events.transform", "item_item.method")) for t in result["trials"])
    # a prior may cost the main folds up to MIN_GAIN when it serves new users better
    assert scores[0] * (1 - MIN_GAIN) - 1e-4 <= result["validation_ndcg@10"] <= max(scores) + 1e-4
    priors = [t for t in result["trials"] if t["trial"].startswith("prior")]
    assert priors[0]["trial"].startswith("prior (config's own)")
    assert all("new_users_ndcg@10" in t for t in priors) and len(priors) >= len(SEARCH_PRIOR)
    config = load_training_config(out)
    serving = load_serving_config(out, Plugins())
    if result["weights"]:
        assert serving.pipelines["hybrid_no_mmr"].scorer.params.weights == result["weights"]
    assert config.collaborative.components == result["training"]["collaborative"]["components"]
    raw = yaml.safe_load(out.read_text())
    assert raw["pipelines"]["hybrid"]["rerankers"][0]["params"]["lambda_weight"] == result["mmr_lambda"]
    # the lambda sweep runs in order and stops MMR_PATIENCE lambdas after the last one within the bound
    swept = [float(t["trial"].split()[-1]) for t in result["trials"] if t["trial"].startswith("mmr lambda")]
    assert swept == list(MMR_LAMBDAS[:len(swept)])
    after = len(swept) - 1 - (swept.index(result["mmr_lambda"]) if result["mmr_lambda"] != 1.0 else -1)
    assert after == MMR_PATIENCE or (len(swept) == len(MMR_LAMBDAS) and after < MMR_PATIENCE)
    assert any(t["trial"].startswith("prior ") for t in result["trials"])
    if result["prior"]:
        scorer = serving.pipelines["hybrid_no_mmr"].scorer.params
        assert (scorer.prior_weight, scorer.prior_items, scorer.prior_power) == tuple(result["prior"])


def test_tune_with_structure_searches_the_transform_and_the_item_item_method(demo_dir: Path, tmp_path: Path,
                                                                             capsys) -> None:
    out = tmp_path / "tuned.yaml"
    code = main(["tune", "--data", str(demo_dir), "--config", str(DEFAULT_CONFIG), "--out", str(out),
                 "--pipeline", "hybrid_no_mmr", "--folds", "1", "--valid-ratio", "0.2", "--structure"])
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    # the progress lines (stderr) name each trial
    trials = [line.split("validation ndcg@10")[0].strip() for line in captured.err.splitlines() if " = " in line]
    base = load_training_config(DEFAULT_CONFIG)
    assert f"events.transform = {({'none', 'log1p'} - {base.events.transform}).pop()}" in trials
    # a config already measured is not trained again: each coordinate starts from a measured config,
    # so its own starting value never shows up as a trial, even after another value replaced it
    assert f"events.transform = {base.events.transform}" not in trials
    assert f"collaborative.components = {base.collaborative.components}" not in trials
    assert len(trials) == len(set(trials))
    journal = tmp_path / "tuned.yaml.trials.jsonl"  # the CLI keeps one by default: every training trial
    assert len(journal.read_text().splitlines()) == 1 + len(trials) and f"journal {journal}" in printed
    methods = [t for t in trials if t.startswith("item_item.method, dlae_dropout = ")]
    # the demo catalogue is small enough for the dense models: EASE and DLAE at every searched dropout
    assert len(methods) == 1 + len(SEARCH_DLAE_DROPOUT)
    assert trials.index(methods[0]) < trials.index(next(t for t in trials if t.startswith("collaborative.")))
    tuned = load_training_config(out)
    assert tuned.events.transform in ("none", "log1p") and tuned.item_item.method in ("auto", "ease", "dlae")
    assert f"events.transform {tuned.events.transform}, item_item.method {tuned.item_item.method}" in printed
    # content dimensions: every other searched size, after the item-item coordinates
    dims = [t for t in trials if t.startswith("content.dims = ")]
    assert {int(t.split("= ")[1]) for t in dims} >= set(SEARCH_CONTENT_DIMS) - {base.content.dims}
    assert trials.index(dims[0]) > trials.index(next(t for t in trials if t.startswith("item_item.session_weight")))
    assert tuned.content.dims in SEARCH_CONTENT_DIMS + (base.content.dims,)
    # the blend grid under each normalisation, and every MMR shape's lambda sweep
    lines = [line.strip() for line in captured.err.splitlines()]
    assert [h for h in SEARCH_NORMALISE if any(line.startswith(f"blend grid under normalise {h}:") for line in lines)] \
        == list(SEARCH_NORMALISE)
    swept = {line.split(":")[0] for line in lines if line.startswith(("MMR mean ", "MMR max "))}
    assert swept == {f"MMR {r} keep_top {k} {how}" for r, k, how in SEARCH_MMR_SHAPES}
    assert {how for _, _, how in SEARCH_MMR_SHAPES} == {"greedy", "swap"}
    serving = load_serving_config(out, Plugins())
    assert serving.pipelines["hybrid_no_mmr"].scorer.params.normalise in SEARCH_NORMALISE
    mmr = serving.pipelines["hybrid"].rerankers[0].params
    assert f"mmr lambda {mmr.lambda_weight}" in printed
    assert (mmr.redundancy, mmr.keep_top, mmr.search) in SEARCH_MMR_SHAPES


def test_tune_refuses_a_bad_validation_split_before_reading_data(tmp_path: Path, capsys) -> None:
    for kwargs, field in (({"valid_ratio": 0.0}, "valid_ratio"), ({"valid_ratio": 1.0}, "valid_ratio"),
                          ({"folds": 0}, "folds"), ({"folds": 1.5}, "folds"),
                          ({"mmr_max_loss": 0.0}, "mmr_max_loss"), ({"mmr_max_loss": 1.0}, "mmr_max_loss")):
        with pytest.raises(ValueError, match=field):
            tune(tmp_path / "absent", DEFAULT_CONFIG, tmp_path / "t.yaml", **kwargs)
    for flag, value in (("--valid-ratio", "1.5"), ("--valid-ratio", "nan"), ("--folds", "0")):
        with pytest.raises(SystemExit) as exit_info:
            main(["tune", "--data", str(tmp_path), "--out", str(tmp_path / "t.yaml"), flag, value])
        assert exit_info.value.code == 2
        assert f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "t.yaml").exists()


def test_a_tune_journal_key_changes_with_anything_a_score_depends_on() -> None:
    config = load_training_config(DEFAULT_CONFIG)
    other = load_training_config(DEFAULT_CONFIG)
    other.collaborative.components += 1
    context = {"data": "d", "config": "c", "seed": 42, "code": "x"}
    key = Journal(None, context).key(config)
    assert key == Journal(None, dict(context)).key(load_training_config(DEFAULT_CONFIG))
    assert key != Journal(None, context).key(other)
    for field in context:
        assert key != Journal(None, {**context, field: "changed"}).key(config), field


def test_tune_refuses_an_output_it_could_not_write_before_reading_data(tmp_path: Path) -> None:
    # tune's run takes minutes to an hour: a bad out_path must not wait for its end
    (tmp_path / "a-file").write_text("")
    for out, message in ((tmp_path, "is a folder"), (tmp_path / "a-file" / "t.yaml", "cannot create the folder")):
        with pytest.raises(DataError, match=f"out_path .*{message}"):
            tune(tmp_path / "absent", DEFAULT_CONFIG, out)
    with pytest.raises(DataError, match="absent does not exist"):  # a good out_path: on to the data
        tune(tmp_path / "absent", DEFAULT_CONFIG, tmp_path / "new" / "t.yaml")
    assert (tmp_path / "new").is_dir()


def test_tune_sets_the_lambda_of_each_mmr_pipeline_built_on_the_tuned_one(demo_dir: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    by_category = copy.deepcopy(raw["pipelines"]["hybrid"])  # the same base, diversified over categories
    by_category["rerankers"][0]["params"].update(similarity="category", redundancy="mean")
    cf_mmr = copy.deepcopy(raw["pipelines"]["cf"])  # another base: its scorer is not the tuned one's
    cf_mmr["rerankers"] = [{"plugin": "mmr", "params": {"lambda_weight": 0.55}}]
    raw["pipelines"].update(by_category=by_category, cf_mmr=cf_mmr)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(raw, sort_keys=False))
    pipelines = load_serving_config(base, Plugins()).pipelines
    assert mmr_pipelines_of(raw, "hybrid_no_mmr", pipelines) == ["hybrid", "by_category"]
    assert mmr_pipelines_of(raw, "cf", pipelines) == ["cf_mmr"]
    out = tmp_path / "tuned.yaml"
    result = tune(demo_dir, base, out, pipeline="hybrid_no_mmr", folds=1, valid_ratio=0.2, mmr_max_loss=0.1)
    assert set(result["mmr"]) == {"hybrid", "by_category"}
    assert result["mmr_max_loss"] == 0.1 and "MMR within 10.0% of no-MMR ndcg@10" in out.read_text().splitlines()[0]
    assert result["mmr_lambda"] == result["mmr"]["hybrid"]["lambda"]
    tuned = yaml.safe_load(out.read_text())
    for name in ("hybrid", "by_category"):
        params = tuned["pipelines"][name]["rerankers"][0]["params"]
        assert params["lambda_weight"] == result["mmr"][name]["lambda"]
        if result["weights"]:
            assert tuned["pipelines"][name]["scorer"]["params"]["weights"] == result["weights"]
    assert tuned["pipelines"]["by_category"]["rerankers"][0]["params"]["similarity"] == "category"
    assert tuned["pipelines"]["cf_mmr"] == raw["pipelines"]["cf_mmr"]  # left as configured
    # each sweep measures diversity in its own stage's space: content for one, categories for the other
    sweeps = [t for t in result["trials"] if "mmr lambda" in t["trial"]]
    by_content = [t for t in sweeps if t["trial"].startswith("hybrid: mmr lambda")]
    by_categories = [t for t in sweeps if t["trial"].startswith("by_category: mmr lambda")]
    assert by_content and by_categories and len(by_content) + len(by_categories) == len(sweeps)
    assert all("ild@10" in t and "category_ild@10" not in t for t in by_content)
    assert all("category_ild@10" in t and "ild@10" not in t for t in by_categories)
    assert by_categories[0]["trial"] == f"by_category: mmr lambda {MMR_LAMBDAS[0]}"
    # the budget: each chosen lambda keeps 90% of the no-MMR ndcg@10 (the tuned pipeline's, as it
    # has the same candidates and scorer) and the sweep's later lambdas, the more diverse, do not
    floor = 0.9 * result["validation_ndcg@10"]
    for name, sweep in (("hybrid", by_content), ("by_category", by_categories)):
        lambdas = [float(t["trial"].split()[-1]) for t in sweep]
        chosen = result["mmr"][name]["lambda"]
        if chosen != 1.0:
            assert sweep[lambdas.index(chosen)]["ndcg@10"] >= floor - 1e-4
        later = sweep[lambdas.index(chosen) + 1:] if chosen != 1.0 else sweep
        assert all(t["ndcg@10"] < floor + 1e-4 for t in later)


def test_the_movielens_config_is_the_untuned_one_with_only_the_searched_values_changed() -> None:
    # the README says movielens-100k.yaml is `tune`'s output from the untuned config: the two may
    # differ only where `tune` writes (searched training fields, blend, prior and MMR lambda)
    tuned_raw, untuned_raw = yaml.safe_load(MOVIELENS_CONFIG.read_text()), yaml.safe_load(UNTUNED_CONFIG.read_text())
    tuned, untuned = load_training_config(MOVIELENS_CONFIG), load_training_config(UNTUNED_CONFIG)
    for section, field in (("collaborative", "components"), ("item_item", "ease_lambda"),
                           ("item_item", "dlae_dropout"), ("item_item", "session_seconds"),
                           ("item_item", "session_weight"), ("events", "weights")):
        setattr(getattr(untuned, section), field, getattr(getattr(tuned, section), field))
    assert untuned == tuned
    scorer = tuned_raw["pipelines"]["hybrid"]["scorer"]["params"]
    pipelines = load_serving_config(UNTUNED_CONFIG, Plugins()).pipelines
    mmr = {name: (tuned_raw["pipelines"][name]["rerankers"][0]["params"]["lambda_weight"], None)
           for name in mmr_pipelines_of(untuned_raw, "hybrid", pipelines)}
    assert "hybrid_mmr" in mmr
    rebuilt = apply_tuned(untuned_raw, tuned, "hybrid", mmr, scorer["weights"],
                          (scorer["prior_weight"], scorer["prior_items"], scorer.get("prior_power", 1.0)))
    assert rebuilt["pipelines"] == tuned_raw["pipelines"] and rebuilt["server"] == tuned_raw["server"]
    for path in (MOVIELENS_CONFIG, UNTUNED_CONFIG):
        assert set(load_serving_config(path, Plugins()).pipelines) == set(tuned_raw["pipelines"])


def test_movielens_100k_hybrid_beats_its_baselines() -> None:
    data = shared_dataset("ml-100k")
    report = evaluate(data, MOVIELENS_CONFIG, ks=(10,), pipelines=["hybrid", "item_item", "cf", "popularity"],
                      lambdas=(), cold_start=True)
    ndcg = {name: entry["metrics"]["ndcg@10"] for name, entry in report["pipelines"].items()}
    cold = {name: m["ndcg@10"] for name, m in report["cold_start_users"]["metrics"].items()}
    print("ML-100K ndcg@10:", {k: round(v, 4) for k, v in ndcg.items()}, "cold-start users:",
          {k: round(v, 4) for k, v in cold.items()})
    assert report["pipelines"]["hybrid"]["users"] == 943
    assert ndcg["hybrid"] > max(ndcg["item_item"], ndcg["cf"]) > ndcg["popularity"]
    # new users with five context items: the popularity prior lets the hybrid beat popularity alone
    assert cold["hybrid"] > cold["popularity"] > cold["cf"]


def test_gathered_candidates_ranked_again_give_what_the_full_pipeline_gives(demo_model: Path) -> None:
    # tune gathers each request's candidates once and re-ranks them for every scorer and MMR setting:
    # that must be exactly what running the whole pipeline with those settings serves
    service = RecommenderService(load_state(demo_model, DEFAULT_CONFIG, precomputed=False))
    model = service.state.model
    users = [str(u) for u in model.user_ids[:60].tolist()] + ["someone-new"]
    contexts = [[]] * 60 + [[str(i) for i in model.item_ids[:3].tolist()]]
    batch = Gathered(service, "hybrid", users, 10, contexts)
    partly = Gathered(service, "hybrid", users, 10, contexts, max_held=20)  # the other 41 run whole each time
    assert len(partly.requests) == 20
    # held requests keep no memoised whole-catalogue arrays, only the history the prior reads
    assert all(set(ctx._cache) <= {"history"} for _, ctx, _, _ in batch.requests)
    pipe = service.state.config.pipelines["hybrid"]
    scorer, mmr = pipe.scorer.params, mmr_stage(pipe).params
    settings = [({"cf": 1.0, "content": 0.0}, "zscore", 0.0, 1.0), ({"cf": 0.2, "content": 0.8}, "rank", 0.6, 0.3),
                ({"cf": 0.5, "content": 0.5}, "minmax", 1.0, 0.7)]
    seen = set()
    for weights, how, prior, lam in settings:
        scorer.weights, scorer.normalise, scorer.prior_weight, mmr.lambda_weight = weights, how, prior, lam
        expected = recommend_all(service, "hybrid", users, 10, contexts)
        assert np.array_equal(batch.top(), expected)
        assert np.array_equal(batch.top(), expected)  # and again: nothing of one ranking stays for the next
        assert np.array_equal(partly.top(), expected)
        seen.add(expected.tobytes())
    assert len(seen) == len(settings)  # the settings do change the lists
