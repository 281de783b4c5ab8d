"""Shared fixtures: a small generated demo dataset, a model trained on it, a real server."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hybridrec.clients import RecommenderClient
from hybridrec.server.app import create_server, load_state
from hybridrec.server.config import BUILTIN_CONFIG_DIR, TrainingConfig
from hybridrec.server.demo_data import generate
from hybridrec.server.training import train

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_CONFIG = BUILTIN_CONFIG_DIR / "default.yaml"

logging.getLogger("faiss").setLevel(logging.WARNING)


def small_training_config() -> TrainingConfig:
    config = TrainingConfig()
    config.collaborative.components = 16
    config.content.dims = 24
    config.collaborative.cold_items = "content"  # the demo's new items get CF factors from their content
    return config


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A demo dataset of 300 users, 150 items, 6,000 events."""
    out = tmp_path_factory.mktemp("demo_data")
    return generate(out, n_users=300, n_items=150, n_events=6000, seed=3)


@pytest.fixture(scope="session")
def demo_model(demo_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "demo"
    train(demo_data["events"], demo_data["items"], small_training_config(), out)
    return out


@pytest.fixture(scope="session")
def running_server(demo_model: Path):
    state = load_state(demo_model, DEFAULT_CONFIG)
    running = create_server(state, "127.0.0.1:0", max_workers=4)
    yield running
    running.stop(grace=None)


@pytest.fixture()
def client(running_server) -> RecommenderClient:
    with RecommenderClient(f"127.0.0.1:{running_server.port}", timeout=10) as c:
        yield c


def shared_dataset(name: str) -> Path:
    """A dataset folder in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the real MovieLens data lives in ../shared/data beside the repo")
    return path
