"""Evaluation reports: the files written, the Markdown tables, valid PNG charts, JSON round trip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hybridrec.server.reports import render_markdown, summarise_seeds, write_reports, write_seed_summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ("precision", "recall", "ndcg", "map", "hitrate", "mrr", "coverage", "ild", "novelty", "popularity_bias")


def metrics_dict(base: float) -> dict[str, float]:
    """Every metric at k = 5, 10, 20, distinct per metric so table cells can be told apart."""
    return {f"{name}@{k}": round(base + 0.01 * i + 0.001 * k, 4) for i, name in enumerate(NAMES) for k in (5, 10, 20)}


def minimal_report() -> dict:
    return {
        "dataset": "tiny", "split": "random 75/25 seed 42",
        "pipelines": {
            "popularity": {"metrics": metrics_dict(0.1), "users": 50, "seconds": 0.1},
            "hybrid": {"metrics": metrics_dict(0.3), "users": 50, "seconds": 0.2},
        },
    }


def full_report() -> dict:
    report = minimal_report()
    report.update({
        "ks": [5, 10, 20],
        "train": {"users": 50, "items": 30, "events": 900, "seconds": 0.5},
        "best": "hybrid",
        "mmr_curve": {"pipeline": "hybrid_mmr", "default_lambda": 0.7, "points": [
            {"lambda": 1.0, "ndcg@10": 0.49, "ild@10": 0.50},
            {"lambda": 0.7, "ndcg@10": 0.47, "ild@10": 0.58},
            {"lambda": 0.3, "ndcg@10": 0.40, "ild@10": 0.71},
        ]},
        "cold_start_items": {"held_out_items": 3, "users": 20, "recall@10": 0.05, "random_recall@10": 0.006,
                             "ratio": 8.3},
        "cold_start_users": {"users": 5, "context_items": 5,
                             "metrics": {"hybrid": metrics_dict(0.2), "popularity": metrics_dict(0.15)}},
        "seconds": 3.2,
    })
    return report


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000  # a real chart, not an empty canvas


def test_full_report_writes_every_file(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "reports"
    paths = write_reports(out, full_report())
    assert set(paths) == {"json", "markdown", "metrics_png", "mmr_png"}
    assert paths["json"] == out / "report.json" and paths["markdown"] == out / "report.md"
    assert all(path.is_file() and path.parent == out for path in paths.values())
    assert_png(paths["metrics_png"])
    assert_png(paths["mmr_png"])


def test_a_curve_per_mmr_pipeline(tmp_path: Path) -> None:
    report = full_report()
    by_genre = {"pipeline": "hybrid mmr/genres", "default_lambda": 0.4, "points": [
        {"lambda": 1.0, "ndcg@10": 0.49, "ild@10": 0.50, "category_ild@10": 0.61},
        {"lambda": 0.4, "ndcg@10": 0.46, "ild@10": 0.55, "category_ild@10": 0.73}]}
    report["mmr_curves"] = [report["mmr_curve"], by_genre]
    paths = write_reports(tmp_path, report)
    # the first keeps its file name; another's is named after its pipeline, made safe for a path
    assert paths["mmr_png"] == tmp_path / "mmr_tradeoff.png"
    assert paths["mmr_tradeoff_hybrid_mmr_genres_png"] == tmp_path / "mmr_tradeoff_hybrid_mmr_genres.png"
    assert_png(paths["mmr_tradeoff_hybrid_mmr_genres_png"])
    text = paths["markdown"].read_text(encoding="utf-8")
    assert "## MMR trade-off: hybrid_mmr" in text and "## MMR trade-off: hybrid mmr/genres" in text
    assert "| 0.4 (default) | 0.4600 | 0.5500 | 0.7300 |" in text
    assert "](mmr_tradeoff_hybrid_mmr_genres.png)" in text


def test_minimal_report_has_no_mmr_chart(tmp_path: Path) -> None:
    paths = write_reports(tmp_path, minimal_report())
    assert set(paths) == {"json", "markdown", "metrics_png"}
    assert not (tmp_path / "mmr_tradeoff.png").exists()
    assert_png(paths["metrics_png"])
    text = paths["markdown"].read_text(encoding="utf-8")
    assert "popularity" in text and "hybrid" in text
    for section in ("MMR", "Cold-start items", "Cold-start users"):
        assert section not in text


def test_markdown_names_pipelines_and_bolds_the_best(tmp_path: Path) -> None:
    text = write_reports(tmp_path, full_report())["markdown"].read_text(encoding="utf-8")
    assert text.startswith("# ")
    for expected in ("tiny", "random 75/25 seed 42", "50 users, 30 items, 900 events", "popularity", "hybrid",
                     "hybrid_mmr", "metrics.png", "mmr_tradeoff.png", "Cold-start items", "Cold-start users"):
        assert expected in text, expected
    # hybrid's ndcg@10 = 0.3 + 0.02 + 0.01 = 0.33 is the best and bold; popularity's 0.13 is not
    assert "**0.3300**" in text
    assert "0.1300" in text and "**0.1300**" not in text


def test_main_table_layout() -> None:
    text = render_markdown(full_report())
    header = next(line for line in text.splitlines() if line.startswith("| pipeline | precision@10"))
    assert header.split(" | ")[1:] == ["precision@10", "recall@10", "ndcg@10", "map@10", "hitrate@10", "mrr@10",
                                       "coverage@10", "ild@10", "novelty@10", "popularity_bias@10 |"]
    hybrid_row = next(line for line in text.splitlines() if line.startswith("| hybrid | "))
    cells = hybrid_row.strip("| ").split(" | ")
    # the six accuracy columns are bold (hybrid is best everywhere), the four others are not
    assert all(cell.startswith("**") for cell in cells[1:7])
    assert not any(cell.startswith("**") for cell in cells[7:])


def test_ties_are_all_bold_and_missing_values_show_a_dash() -> None:
    report = minimal_report()
    report["pipelines"]["hybrid"]["metrics"]["precision@10"] = report["pipelines"]["popularity"]["metrics"][
        "precision@10"]
    del report["pipelines"]["popularity"]["metrics"]["ild@10"]
    text = render_markdown(report)
    # precision@10 = 0.1 + 0.01 = 0.11 for both pipelines now
    assert text.count("**0.1100**") == 2
    popularity_row = next(line for line in text.splitlines() if line.startswith("| popularity | "))
    assert "| – |" in popularity_row


@pytest.mark.parametrize("report", [full_report(), minimal_report()], ids=["ks given", "ks inferred"])
def test_all_metrics_table_lists_every_k_in_order(report: dict) -> None:
    text = render_markdown(report)
    expected = [f"{name}@{k}" for k in (5, 10, 20) for name in NAMES]
    section = text[text.index("## All metrics"):].split("\n## ")[0]
    rows = [line.split(" | ")[0].lstrip("| ") for line in section.splitlines() if "@" in line.split(" | ")[0]]
    assert rows == expected


def test_mmr_and_cold_start_sections() -> None:
    text = render_markdown(full_report())
    assert "| 0.7 (default) | 0.4700 | 0.5800 |" in text
    assert "| ratio | 8.3000 |" in text
    assert "| held_out_items | 3 |" in text
    assert "5 users held out" in text


def test_json_round_trips(tmp_path: Path) -> None:
    report = full_report()
    path = write_reports(tmp_path, report)["json"]
    assert json.loads(path.read_text(encoding="utf-8")) == report
    # sorted keys, indented
    raw = path.read_text(encoding="utf-8")
    assert raw.index('"best"') < raw.index('"dataset"') < raw.index('"pipelines"')
    assert raw.startswith("{\n  ")


def test_numpy_values_are_written_as_json(tmp_path: Path) -> None:
    report = minimal_report()
    report["pipelines"]["hybrid"]["metrics"]["ndcg@10"] = np.float64(0.5)
    report["pipelines"]["hybrid"]["users"] = np.int64(50)
    report["ks"] = np.array([5, 10])
    loaded = json.loads(write_reports(tmp_path, report)["json"].read_text(encoding="utf-8"))
    assert loaded["pipelines"]["hybrid"]["metrics"]["ndcg@10"] == 0.5
    assert loaded["ks"] == [5, 10]


def test_empty_pipelines_still_write_a_chart(tmp_path: Path) -> None:
    paths = write_reports(tmp_path, {"dataset": "empty", "split": "none", "pipelines": {}})
    assert paths["metrics_png"].read_bytes()[:8] == PNG_SIGNATURE
    assert "No pipelines were evaluated" in paths["markdown"].read_text(encoding="utf-8")


@pytest.mark.parametrize("skip", ["No faiss_content source"])
def test_skipped_cold_start_items(skip: str) -> None:
    report = minimal_report()
    report["cold_start_items"] = {"skipped": skip}
    assert f"Skipped: {skip}" in render_markdown(report)


def test_importing_reports_does_not_import_matplotlib() -> None:
    import subprocess
    import sys

    code = "import sys, hybridrec.server.reports; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def seed_report(hybrid_ndcg: float, popularity_ndcg: float, mmr_ndcg: float, mmr_ild: float, ratio: float) -> dict:
    """A full report whose headline figures are set by hand, for the several-seeds summary."""
    report = full_report()
    report["pipelines"]["hybrid"]["metrics"]["ndcg@10"] = hybrid_ndcg
    report["pipelines"]["popularity"]["metrics"]["ndcg@10"] = popularity_ndcg
    report["mmr_curves"] = [{"pipeline": "hybrid_mmr", "default_lambda": 0.7, "diversity": "ild@10", "points": [
        {"lambda": 1.0, "ndcg@10": 0.50, "ild@10": 0.60}, {"lambda": 0.7, "ndcg@10": mmr_ndcg, "ild@10": mmr_ild}]}]
    report["cold_start_items"]["ratio"] = ratio
    return report


def test_the_seed_summary_by_hand(tmp_path: Path) -> None:
    reports = {42: seed_report(0.50, 0.20, 0.48, 0.72, 4.0), 1: seed_report(0.46, 0.21, 0.45, 0.69, 2.0),
               2: seed_report(0.42, 0.44, 0.40, 0.66, 3.0)}
    summary = summarise_seeds(reports)
    assert summary["seeds"] == [42, 1, 2] and summary["k"] == 10
    ndcg = summary["pipelines"]["hybrid"]["ndcg@10"]
    assert ndcg["mean"] == pytest.approx(0.46) and ndcg["sd"] == pytest.approx(0.04)  # sample sd of .50 .46 .42
    assert (ndcg["min"], ndcg["max"]) == (0.42, 0.50)
    assert summary["best"] == "hybrid"  # 0.46 against popularity's 0.2833 on average, though behind on seed 2
    gap = summary["gap_to_best"]["popularity"]
    assert gap["values"] == pytest.approx([0.30, 0.25, -0.02]) and gap["best_ahead"] == 2
    assert set(summary["gap_to_best"]) == {"popularity"}
    (mmr,) = summary["mmr"]
    assert (mmr["pipeline"], mmr["lambda"], mmr["diversity"]) == ("hybrid_mmr", 0.7, "ild@10")
    assert mmr["ndcg_change_percent"]["values"] == pytest.approx([-4.0, -10.0, -20.0])
    assert mmr["diversity_change_percent"]["values"] == pytest.approx([20.0, 15.0, 10.0])
    assert summary["cold_start_items"]["ratio"]["mean"] == pytest.approx(3.0)
    assert summary["cold_start_users"]["hybrid"]["ndcg@10"]["sd"] == 0.0  # the same in every run here
    paths = write_seed_summary(tmp_path, summary)
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["gap_to_best"]["popularity"]["best_ahead"] == 2
    text = paths["markdown"].read_text(encoding="utf-8")
    hybrid_row = next(line for line in text.splitlines() if line.startswith("| hybrid |"))
    assert "| 0.4600 ± 0.0400 (0.4200 to 0.5000) |" in hybrid_row  # its ndcg@10 cell
    assert "| popularity | 0.1767 ± 0.1721 (-0.0200 to 0.3000) | 2 of 3 seeds |" in text
    assert "| hybrid_mmr | 0.7 | ild@10 | -11.3% (-20.0% to -4.0%) | +15.0% (+10.0% to +20.0%) |" in text
    assert "[seed-42](seed-42/report.md)" in text


def test_a_seed_summary_skips_an_mmr_curve_without_its_lambda_1_point() -> None:
    reports = {1: seed_report(0.5, 0.2, 0.48, 0.72, 4.0), 2: seed_report(0.5, 0.2, 0.48, 0.72, 4.0)}
    reports[2]["mmr_curves"][0]["points"] = reports[2]["mmr_curves"][0]["points"][1:]
    assert summarise_seeds(reports)["mmr"] == []
