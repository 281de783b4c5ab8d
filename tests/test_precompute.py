"""`server.precomputed`: a pipeline's answers stored per user in the bundle, read instead of
running the pipeline for the calls they answer, and ignored when they no longer match."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from hybridrec.clients import RecommenderClient
from hybridrec.server.app import create_server, load_state
from hybridrec.server.cli import main
from hybridrec.server.errors import ConfigError
from hybridrec.server.hookspecs import hookimpl
from hybridrec.server.pipeline import load_serving_config
from hybridrec.server.plugin_manager import Plugins
from hybridrec.server.precompute import precompute, table_dir
from hybridrec.server.service import RecommenderService
from hybridrec.server.stages import CandidateSource
from hybridrec.v1 import recommender_pb2 as pb

from .conftest import DEFAULT_CONFIG
from .helpers import basic_events, write_events, write_items


def config_with(tmp_path: Path, precomputed: object, name: str = "pre.yaml", change=None) -> Path:
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data.setdefault("server", {})["precomputed"] = precomputed
    if change is not None:
        change(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture()
def bundle(demo_model: Path, tmp_path: Path) -> Path:
    """A copy of the demo bundle: precompute writes into it."""
    return Path(shutil.copytree(demo_model, tmp_path / "model"))


def answer(x) -> object:
    """A Recommend answer without the server's timing and pid."""
    return dataclasses.replace(x, server_time_us=None, worker_pid=None)


class NoDeadline:
    def time_remaining(self) -> None:
        return None


def test_stored_answers_are_the_pipelines_answers_over_grpc(bundle: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    config = config_with(tmp_path, {"hybrid": [5, 10], "cf": [5]})
    tables = precompute(bundle, config, jobs=2)
    assert sorted((t["pipeline"], t["k"], t["stored"], t["left_empty"]) for t in tables) == [
        ("cf", 5, 301, 0), ("hybrid", 5, 301, 0), ("hybrid", 10, 301, 0)]
    stored = load_state(bundle, config)
    assert sorted(stored.precomputed) == [("cf", 5), ("hybrid", 5), ("hybrid", 10)]
    live = dataclasses.replace(stored, precomputed={})
    users = stored.model.user_ids.tolist() + ["", "someone-new"]
    with_tables, without = create_server(stored, max_workers=2), create_server(live, max_workers=2)
    try:
        with RecommenderClient(f"127.0.0.1:{with_tables.port}", timeout=10) as a, \
                RecommenderClient(f"127.0.0.1:{without.port}", timeout=10) as b:
            for user in users:
                for k, pipeline in ((5, ""), (10, "hybrid"), (5, "cf")):
                    x, y = a.recommend(user, k=k, pipeline=pipeline), b.recommend(user, k=k, pipeline=pipeline)
                    # items, scores, model version, pipeline, degraded stages, cold start
                    assert answer(x) == answer(y), (user, k, pipeline)
                    assert len(x.items) == k
            assert with_tables.service.stored_calls == 3 * len(users)
            assert answer(a.recommend(users[0], k=7)) == answer(b.recommend(users[0], k=7))  # no table at k=7: the pipeline ran
            assert with_tables.service.stored_calls == 3 * len(users)
            stored_k = {p.name: list(p.precomputed_k) for p in a.model_info().pipelines}
            assert stored_k["hybrid"] == [5, 10] and stored_k["cf"] == [5] and stored_k["popularity"] == []
            assert all(not p.precomputed_k for p in b.model_info().pipelines)
        assert main(["info", "--target", f"127.0.0.1:{with_tables.port}"]) == 0
        shown = capsys.readouterr().out
        assert re.search(r"hybrid \(default\): .*\[stored answers at k=5, 10\]", shown)
        assert re.search(r"\n  cf: .*\[stored answers at k=5\]", shown)
    finally:
        with_tables.stop(grace=None)
        without.stop(grace=None)


def test_only_plain_requests_read_a_stored_row(bundle: Path, tmp_path: Path) -> None:
    config = config_with(tmp_path, {"hybrid": [5]})
    precompute(bundle, config, jobs=1)
    where = table_dir(bundle, "hybrid", 5)
    model = load_state(bundle, config).model
    user = str(model.user_ids[7])
    # a row that no pipeline would give: the five least popular items, so a call that reads it shows
    items = np.load(where / "items.npy", mmap_mode="r+")
    planted = model.popular_order[-5:].astype(np.int32)
    items[7] = planted
    items.flush()
    lengths = np.load(where / "lengths.npy", mmap_mode="r+")
    lengths[8] = -1  # and a row left to the live pipeline
    lengths.flush()
    del items, lengths
    service = RecommenderService(load_state(bundle, config))
    answer = lambda **kw: [i.item_id for i in service.Recommend(pb.RecommendRequest(k=5, **kw), NoDeadline()).items]
    planted_ids = model.item_ids[planted].tolist()
    assert answer(user_id=user) == planted_ids
    assert answer(user_id=user, pipeline="hybrid") == planted_ids
    other = str(model.item_ids[model.popular_order[0]])
    for kw in ({"context_item_ids": [other]}, {"exclude_item_ids": [other]}, {"explain": True},
               {"pipeline": "cf"}):
        assert answer(user_id=user, **kw) != planted_ids, kw
    calls = service.stored_calls
    live = RecommenderService(load_state(bundle, config, precomputed=False))
    row8 = pb.RecommendRequest(user_id=str(model.user_ids[8]), k=5)
    assert service.Recommend(row8, NoDeadline()) == live.Recommend(row8, NoDeadline())
    assert service.stored_calls == calls  # the empty row was not read


def test_a_table_that_no_longer_matches_is_ignored(bundle: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    config = config_with(tmp_path, {"hybrid": [5]})
    precompute(bundle, config, jobs=1)
    changed = config_with(tmp_path, {"hybrid": [5]}, "changed.yaml", lambda d: d["pipelines"]["hybrid"].update(
        rerankers=[{"plugin": "mmr", "params": {"lambda_weight": 0.2}}]))
    state = load_state(bundle, changed)
    assert state.precomputed == {}
    assert any(re.search(r"stored answers for pipeline 'hybrid' at k=5 are from another bundle, config", r.getMessage())
               for r in caplog.records)
    caplog.clear()
    state = load_state(bundle, config_with(tmp_path, {"hybrid": [3]}, "other_k.yaml"))
    assert state.precomputed == {}
    assert any("hybridrec precompute --model" in r.getMessage() for r in caplog.records)
    assert load_state(bundle, config).precomputed  # the matching config still reads it
    meta = json.loads((table_dir(bundle, "hybrid", 5) / "table.json").read_text())
    assert meta["rows"] == 301 and meta["stored"] == 301

    # damaged: an item index past the catalogue, then a truncated array
    items_file = table_dir(bundle, "hybrid", 5) / "items.npy"
    items = np.load(items_file, mmap_mode="r+")
    items[3, 2] = meta["rows"] + 10_000
    items.flush()
    del items
    caplog.clear()
    assert load_state(bundle, config).precomputed == {}
    assert any("holds values outside the bundle's items; ignored" in r.getMessage() for r in caplog.records)
    meta_file = table_dir(bundle, "hybrid", 5) / "table.json"
    meta_file.write_text("[1, 2]")
    caplog.clear()
    assert load_state(bundle, config).precomputed == {}
    assert any("table.json is not a JSON object" in r.getMessage() for r in caplog.records)
    meta_file.write_text(json.dumps(meta))
    items_file.write_bytes(items_file.read_bytes()[:-100])
    caplog.clear()
    assert load_state(bundle, config).precomputed == {}
    assert any(re.search(r"server\.precomputed: cannot read .*hybrid-k5", r.getMessage()) for r in caplog.records)


def test_rows_whose_answer_degraded_are_left_to_the_live_pipeline(bundle: Path, tmp_path: Path) -> None:
    class OddOnly(CandidateSource):
        """Fails for users in even rows: a source that is down for part of the precompute."""

        plugin_name = "odd_only"

        @dataclass
        class Params:
            pass

        def generate(self, ctx):
            if ctx.user >= 0 and ctx.user % 2 == 0:
                raise RuntimeError("shard down")
            return None

    class Plugin:
        @hookimpl
        def hybridrec_register_stages(self):
            return [OddOnly]

    def add_source(data: dict) -> None:
        data["pipelines"]["hybrid"]["candidates"].append("odd_only")

    config = config_with(tmp_path, {"hybrid": [5]}, change=add_source)
    plugins = Plugins(extra=[Plugin()])
    [meta] = precompute(bundle, config, jobs=2, plugins=plugins)
    assert meta["left_empty"] == 150 and meta["stored"] == 151
    lengths = np.load(table_dir(bundle, "hybrid", 5) / "lengths.npy")
    assert (lengths[0:300:2] == -1).all() and (lengths[1:300:2] == 5).all() and lengths[300] == 5
    service = RecommenderService(load_state(bundle, config, plugins=Plugins(extra=[Plugin()])))
    model = service.state.model
    even = service.Recommend(pb.RecommendRequest(user_id=str(model.user_ids[4]), k=5), NoDeadline())
    assert list(even.degraded_stages) == ["odd_only"]  # computed live, and it says so
    odd = service.Recommend(pb.RecommendRequest(user_id=str(model.user_ids[5]), k=5), NoDeadline())
    assert list(odd.degraded_stages) == [] and service.stored_calls == 1


@pytest.mark.parametrize("value,message", [
    ({"nope": [10]}, r"server\.precomputed: 'nope' is not a pipeline; valid: cf, content, hybrid, "),
    ({"hybrid": [0]}, r"server\.precomputed\.hybrid: k must be between 1 and 100 .*got 0"),
    ({"hybrid": [101]}, r"server\.precomputed\.hybrid: k must be between 1 and 100 .*got 101"),
    ({"hybrid": "ten"}, r"server\.precomputed\.hybrid: expected a list of k values"),
    ({"hybrid": [True]}, r"server\.precomputed\.hybrid: expected a list of k values"),
    ({"hybrid": []}, r"server\.precomputed\.hybrid: expected a list of k values"),
    ([10], r"server\.precomputed: expected dict"),
])
def test_precomputed_config_is_checked(tmp_path: Path, value: object, message: str) -> None:
    path = config_with(tmp_path, value)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": " + message):
        load_serving_config(path, Plugins())


def test_precompute_command_and_train_with_a_precomputed_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    events = write_events(tmp_path / "events.csv", basic_events())
    items = write_items(tmp_path / "items.csv")
    plain = config_with(tmp_path, {}, "plain.yaml",
                        lambda d: d.update(training={"collaborative": {"components": 3}, "content": {"dims": 4}}))
    assert main(["train", "--events", str(events), "--items", str(items), "--config", str(plain),
                 "--out", str(tmp_path / "m")]) == 0
    assert not (tmp_path / "m" / "precomputed").exists()
    capsys.readouterr()
    assert main(["precompute", "--model", str(tmp_path / "m"), "--config", str(plain)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "server.precomputed names no pipeline" in err[0]

    both = config_with(tmp_path, {"hybrid": [3]}, "both.yaml",
                       lambda d: d.update(training={"collaborative": {"components": 3}, "content": {"dims": 4}}))
    assert main(["train", "--events", str(events), "--items", str(items), "--config", str(both),
                 "--out", str(tmp_path / "m")]) == 0
    assert "precomputed hybrid k=3: 13 of 13 answers stored" in capsys.readouterr().out
    assert sorted(load_state(tmp_path / "m", both).precomputed) == [("hybrid", 3)]
    assert main(["precompute", "--model", str(tmp_path / "m"), "--config", str(both), "--jobs", "1"]) == 0

    bad = config_with(tmp_path, {"nope": [3]}, "bad.yaml",
                      lambda d: d.update(training={"collaborative": {"components": 3}, "content": {"dims": 4}}))
    assert main(["train", "--events", str(events), "--items", str(items), "--config", str(bad),
                 "--out", str(tmp_path / "m2")]) == 1  # refused before training
    assert "'nope' is not a pipeline" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()


def test_demo_with_a_precomputing_config_stores_the_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hybridrec.server.app as app

    served = []
    monkeypatch.setattr(app, "serve", lambda model_dir, config, **kw: served.append((model_dir, config)))
    config = config_with(tmp_path, {"hybrid": [10]}, "demo.yaml",
                         lambda d: d.update(training={"collaborative": {"components": 8}, "content": {"dims": 8}}))
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--config", str(config), "--port", "0"]) == 0
    model_dir = tmp_path / "demo" / "model"
    assert served == [(model_dir, config)]
    assert sorted(load_state(model_dir, config).precomputed) == [("hybrid", 10)]
