"""A pipeline config that names an unknown plugin or a wrong parameter fails at start-up,
naming the file, the pipeline, the stage, the plugin and the valid choices."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from hybridrec.server.errors import ConfigError
from hybridrec.server.pipeline import load_serving_config
from hybridrec.server.plugin_manager import Plugins

from .conftest import DEFAULT_CONFIG


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipes.yaml"
    path.write_text(text)
    return path


def test_default_config_builds(plugins: Plugins) -> None:
    config = load_serving_config(DEFAULT_CONFIG, plugins)
    assert config.default_pipeline == "hybrid"
    hybrid = config.pipelines["hybrid"]
    assert [s.plugin_name for s in hybrid.stages()] == [
        "faiss_cf", "faiss_content", "popularity", "exclude_seen", "exclude_requested", "weighted_hybrid", "mmr"]
    assert hybrid.scorer.params.weights == {"cf": 0.6, "content": 0.4}


def test_unknown_plugin(plugins: Plugins, tmp_path: Path) -> None:
    path = write(tmp_path, "pipelines:\n  main:\n    candidates: [{plugin: faiss_cff}]\n    scorer: weighted_hybrid\n")
    with pytest.raises(ConfigError) as exc:
        load_serving_config(path, plugins)
    message = str(exc.value)
    assert str(path) in message
    assert "pipeline 'main'" in message and "candidates stage 1" in message
    assert "unknown candidates plugin 'faiss_cff'" in message
    assert "valid choices: faiss_cf, faiss_content, item_item, popularity" in message


def test_unknown_parameter(plugins: Plugins, tmp_path: Path) -> None:
    path = write(tmp_path, "pipelines:\n  p:\n    candidates: [popularity]\n"
                           "    scorer: {plugin: weighted_hybrid, params: {weights: {popularity: 1}}}\n"
                           "    rerankers: [{plugin: mmr, params: {lambda: 0.5}}]\n")
    with pytest.raises(ConfigError) as exc:
        load_serving_config(path, plugins)
    message = str(exc.value)
    assert "pipeline 'p', rerankers stage 1 ('mmr') (plugin 'mmr') params: unknown key 'lambda'" in message
    assert "valid keys: keep_top, lambda_weight, order, page, pool, redundancy, search, similarity" in message


def test_wrong_type_and_range(plugins: Plugins, tmp_path: Path) -> None:
    path = write(tmp_path, "pipelines:\n  p:\n    candidates: [{plugin: popularity, params: {n: lots}}]\n    scorer: weighted_hybrid\n")
    with pytest.raises(ConfigError, match=r"\(plugin 'popularity'\) params\.n: expected int, got 'lots'"):
        load_serving_config(path, plugins)
    path = write(tmp_path, "pipelines:\n  p:\n    candidates: [popularity]\n"
                           "    scorer: {plugin: weighted_hybrid, params: {weights: {popularity: 1}}}\n"
                           "    rerankers: [{plugin: mmr, params: {lambda_weight: 1.5}}]\n")
    with pytest.raises(ConfigError, match="lambda_weight must be between 0 and 1"):
        load_serving_config(path, plugins)


def test_scorer_weights_must_name_sources(plugins: Plugins, tmp_path: Path) -> None:
    path = write(tmp_path, "pipelines:\n  p:\n    candidates: [popularity]\n    scorer: weighted_hybrid\n")
    with pytest.raises(ConfigError) as exc:
        load_serving_config(path, plugins)
    assert "names source 'cf', which is not a candidates stage of this pipeline; valid choices: popularity" in str(exc.value)


def test_structure_errors(plugins: Plugins, tmp_path: Path) -> None:
    cases = {
        "pipelines: {}\n": "needs a `pipelines:` mapping",
        "pipelines:\n  p:\n    scorer: weighted_hybrid\n": "needs at least one candidates stage; valid choices: faiss_cf",
        "pipelines:\n  p:\n    candidates: [popularity]\n": "needs a scorer; valid choices: weighted_hybrid",
        "pipelines:\n  p:\n    candidates: [popularity]\n    scorers: x\n": "unknown section 'scorers'",
        "server: {default_pipeline: q}\npipelines:\n  p:\n    candidates: [popularity]\n"
        "    scorer: {plugin: weighted_hybrid, params: {weights: {popularity: 1}}}\n": "default_pipeline 'q' is not one of: p",
        "pipelines: [1, 2\n": "not valid YAML",
        "pipelines:\n  p:\n    candidates: [popularity, popularity]\n    scorer: weighted_hybrid\n": "two stages are named 'popularity'",
    }
    for text, expected in cases.items():
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("[", r"\[")):
            load_serving_config(write(tmp_path, text), plugins)


def test_missing_file(plugins: Plugins, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_serving_config(tmp_path / "absent.yaml", plugins)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00pipelines")  # a ValueError that named no file
    with pytest.raises(ConfigError, match=r"binary\.yaml: cannot read config: not UTF-8 text"):
        load_serving_config(binary, plugins)


def test_values_no_request_could_use_are_refused(plugins: Plugins, tmp_path: Path) -> None:
    """Each of these once started a server or failed with a TypeError (a list as `plugin:`, keys of
    mixed types): max_k past int32 failed every GetModelInfo, and NaN or infinity passed the range checks."""
    good = ("pipelines:\n  p:\n    candidates: [{plugin: popularity}]\n"
            "    scorer: {plugin: weighted_hybrid, params: {weights: {popularity: 1}}}\n")
    cases = {
        "server: {max_k: 2147483648}\n" + good: "server.max_k must be between 1 and 2147483647",
        good.replace("plugin: popularity", "plugin: [popularity]"): "each stage needs a `plugin:` name; valid choices",
        good.replace("popularity: 1", "popularity: .inf"): "weights.popularity must be a finite number >= 0",
        "server: {overload: {escalate_ms: .nan}}\n" + good: "server.overload.escalate_ms: expected a finite number, got nan",
        # an infinite sampling period would switch overload protection off without a word
        "server: {overload: {sample_ms: .inf}}\n" + good: "server.overload.sample_ms: expected a finite number, got inf",
        good.replace("params: {weights", "params: {prior_items: .inf, weights"): "prior_items: expected a finite number, got inf",
        "server: {5: 1, x: 2}\n" + good: "server: unknown key 5; valid keys: default_pipeline",
        good.replace("{plugin: popularity}", "{plugin: popularity, 5: 1, x: 2}"): "unknown key 5 in stage",
        good.replace("    scorer:", "    5: 1\n    x: 2\n    scorer:"): "unknown section 5",
    }
    for text, expected in cases.items():
        with pytest.raises(ConfigError, match=re.escape(expected)):
            load_serving_config(write(tmp_path, text), plugins)
    assert load_serving_config(write(tmp_path, "server: {max_k: 2147483647}\n" + good), plugins).max_k == 2**31 - 1
