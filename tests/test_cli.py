"""The `hybridrec` command: exit codes, one-line errors, and the client commands' tables."""
from __future__ import annotations

from pathlib import Path

import pytest

from hybridrec.server.bundle import load_model
from hybridrec.server.cli import main

from .helpers import basic_events, write_events, write_items


def test_train_then_info(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    events = write_events(tmp_path / "events.csv", basic_events())
    items = write_items(tmp_path / "items.csv")
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  collaborative: {components: 3}\n  content: {dims: 4}\n")
    code = main(["train", "--events", str(events), "--items", str(items), "--config", str(config),
                 "--out", str(tmp_path / "m")])
    assert code == 0
    assert "12 users, 8 items" in capsys.readouterr().out
    assert load_model(tmp_path / "m").item_factors.shape[1] == 3


@pytest.mark.parametrize("argv,expected", [
    (["train", "--events", "missing.csv", "--items", "x.csv", "--out", "m"], "events file missing.csv"),
    (["serve", "--model", "no-model-here"], "does not exist"),
    (["evaluate", "--data", "no-dataset-here", "--out", "r"], "dataset no-dataset-here does not exist"),
    (["evaluate", "--data", "m.csv", "--out", "r"], "dataset m.csv is a file"),
    (["tune", "--data", "no-dataset-here", "--out", "t.yaml"], "dataset no-dataset-here does not exist"),
    # the output is checked before any work: these datasets do not even exist
    (["evaluate", "--data", "no-dataset-here", "--out", "m.csv"], "--out m.csv is a file"),
    (["evaluate", "--data", "no-dataset-here", "--out", "m.csv/r"], "--out m.csv/r: cannot create the folder m.csv"),
    (["tune", "--data", "no-dataset-here", "--out", "d"], "--out d is a folder"),
    (["tune", "--data", "no-dataset-here", "--out", "m.csv/t.yaml"], "--out m.csv/t.yaml: cannot create the folder"),
])
def test_errors_exit_nonzero_with_one_line(argv, expected, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text("user_id,item_id\n")
    (tmp_path / "d").mkdir()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and err[0].startswith(f"hybridrec {argv[0]}: error:")


def test_bad_config_names_the_file(tmp_path: Path, demo_model: Path, capsys) -> None:
    config = tmp_path / "p.yaml"
    config.write_text("pipelines:\n  p:\n    candidates: [nope]\n    scorer: weighted_hybrid\n")
    assert main(["serve", "--model", str(demo_model), "--config", str(config), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert str(config) in err and "unknown candidates plugin 'nope'" in err


def test_bad_k_is_refused_by_the_parser(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["recommend", "--user", "u", "-k", "0"])
    assert exc.value.code != 0


@pytest.mark.parametrize("argv,option", [
    (["serve", "--model", "m", "--port", "-5"], "--port"),  # gRPC would bind 65531
    (["serve", "--model", "m", "--port", "70000"], "--port"),  # and 4464 here
    (["demo", "--port", "99999"], "--port"),
    (["serve", "--model", "m", "--faiss-threads", "-3"], "--faiss-threads"),
    (["serve", "--model", "m", "--workers", "2", "--start-timeout", "-1"], "--start-timeout"),
    (["recommend", "--user", "u", "--timeout", "0"], "--timeout"),
    (["info", "--timeout", "nan"], "--timeout"),
    (["recommend", "--user", "u", "-k", "2147483648"], "-k"),  # protobuf's "Value out of range" named no option
    (["similar", "--item", "i", "-k", "99999999999"], "-k"),
])
def test_out_of_range_numbers_are_refused_by_the_parser(argv, option, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"hybridrec {argv[0]}: error: argument {option}") and "must be" in last


def test_recommend_and_similar_print_tables(running_server, demo_model: Path, capsys) -> None:
    model = load_model(demo_model)
    target = f"127.0.0.1:{running_server.port}"
    user = str(model.user_ids[0])
    assert main(["recommend", "--user", user, "-k", "4", "--explain", "--target", target]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["rank", "item_id", "score", "sources", "reason"]
    assert len(out) == 2 + 4 + 1 and "pipeline hybrid" in out[-1]
    item = str(model.item_ids[0])
    assert main(["similar", "--item", item, "-k", "3", "--target", target]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 + 3
    assert main(["similar", "--item", "nope", "--target", target]) == 1
    assert "NOT_FOUND: item_id: unknown item 'nope'" in capsys.readouterr().err
    assert main(["info", "--target", target]) == 0
    assert "hybrid (default)" in capsys.readouterr().out


def test_unreachable_server_is_a_one_line_error(capsys) -> None:
    assert main(["recommend", "--user", "u", "--target", "127.0.0.1:1", "--timeout", "0.5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "UNAVAILABLE" in err[0] or "DEADLINE_EXCEEDED" in err[0]
