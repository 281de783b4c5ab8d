"""A pipeline config that names an unknown plugin or a wrong parameter fails at start-up,
naming the file, the pipeline, the stage, the plugin and the valid choices."""
from __future__ import annotations

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
    assert "valid keys: keep_top, lambda_weight, order, pool, redundancy, similarity" in message


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
