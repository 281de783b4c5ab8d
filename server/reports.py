"""Writing an evaluation report (see `evaluation.evaluate`) as JSON, Markdown and PNG charts.

matplotlib is imported only when charts are drawn, so importing this module stays cheap.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import DataError

ACCURACY = ("precision", "recall", "ndcg", "map", "hitrate", "mrr")
BEYOND_ACCURACY = ("coverage", "ild", "category_ild", "novelty", "popularity_bias")
OPTIONAL_METRICS = ("category_ild",)  # shown only when some pipeline has them (the model has categories)
MAIN_METRICS = ACCURACY + BEYOND_ACCURACY
CHART_METRICS = ("precision", "recall", "ndcg", "map")
MAIN_K = 10
DPI = 120
MISSING = "–"


def prepare_output(path: str | Path, what: str, folder: bool) -> Path:
    """Make sure a run can write its output before it starts, not after minutes of work.

    `folder`: `path` is a folder to write into (created); else a file whose folder is
    created. `what` names the option in the error (e.g. `--out`)."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise DataError(f"{what} {path} is a file; give a folder for the reports")
    if not folder and path.is_dir():
        raise DataError(f"{what} {path} is a folder; give the path of the file to write")
    target = path if folder else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{what} {path}: cannot create the folder {target}: {exc.strerror}") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise DataError(f"{what} {path}: the folder {target} is not writable")
    if not folder and path.exists() and not os.access(path, os.W_OK):
        raise DataError(f"{what} {path}: the file is not writable")
    return path


def write_reports(out_dir: str | Path, report: dict) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and PNG charts into ``out_dir`` (created).

    Returns the written paths under the keys ``json``, ``markdown``, ``metrics_png`` and,
    for each MMR curve, ``mmr_png`` (the first) and ``mmr_tradeoff_<pipeline>_png`` (the others).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = main_k(report)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "metrics_png": out / "metrics.png"}
    curves = {key: curve for key, curve in mmr_curve_keys(report)}
    for key in curves:
        paths[key] = out / ("mmr_tradeoff.png" if key == "mmr_png" else f"{key[:-4]}.png")

    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=True, default=_json_default) + "\n",
                             encoding="utf-8")
    plot_metrics(report.get("pipelines") or {}, k, paths["metrics_png"])
    for key, curve in curves.items():
        plot_mmr_tradeoff(curve, paths[key])
    charts = {key: path.name for key, path in paths.items() if key.endswith("_png")}
    paths["markdown"].write_text(render_markdown(report, charts), encoding="utf-8")
    return paths


def mmr_curve_keys(report: dict) -> list[tuple[str, dict]]:
    """(chart key, curve) of each MMR curve with points: ``mmr_png`` for the first (the report's
    ``mmr_curve``), ``mmr_tradeoff_<pipeline>_png`` for the others in ``mmr_curves``."""
    curves = report.get("mmr_curves") or ([report["mmr_curve"]] if report.get("mmr_curve") else [])
    found = [curve for curve in curves if (curve or {}).get("points")]
    return [("mmr_png" if i == 0 else f"mmr_tradeoff_{re.sub(r'[^A-Za-z0-9.-]', '_', str(curve.get('pipeline', i)))}_png",
             curve) for i, curve in enumerate(found)]


def report_ks(report: dict) -> list[int]:
    """The report's cut-offs: its ``ks``, or else the k of every ``metric@k`` key present."""
    ks = report.get("ks")
    if ks is not None:
        return [int(k) for k in ks]
    found = {key.rpartition("@")[2] for entry in (report.get("pipelines") or {}).values()
             for key in (entry.get("metrics") or {})}
    return sorted(int(k) for k in found if k.isdigit())


def main_k(report: dict) -> int:
    """The cut-off of the headline table: 10, or the report's first k when 10 was not evaluated."""
    ks = report_ks(report)
    return MAIN_K if MAIN_K in ks or not ks else ks[0]


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays expose item()/tolist(); anything else is an error as usual.
    for method in ("tolist", "item"):
        if hasattr(value, method):
            return getattr(value, method)()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def render_markdown(report: dict, charts: dict[str, str] | None = None) -> str:
    """The report as Markdown; ``charts`` maps chart keys (``metrics_png``...) to file names."""
    charts = charts or {}
    k = main_k(report)
    parts = [
        _overview(report, k),
        _main_table(report.get("pipelines") or {}, k, charts.get("metrics_png")),
        _all_metrics_table(report.get("pipelines") or {}, report_ks(report) or [k]),
        *(_mmr_section(curve, charts.get(key)) for key, curve in mmr_curve_keys(report)),
        _cold_items_section(report.get("cold_start_items")),
        _cold_users_section(report.get("cold_start_users"), k),
        _charts_section(charts),
    ]
    return "\n".join(part for part in parts if part)


def _fmt(value: Any) -> str:
    """A table cell: reals to 4 decimals, integers as they are, None as a dash."""
    if value is None:
        return MISSING
    if isinstance(value, (bool, str)) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return "nan" if math.isnan(value) else f"{float(value):.4f}"


def _fmt_metric(value: Any) -> str:
    """A metric cell: always 4 decimals, even when the value happens to be an int."""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return _fmt(float(value) if is_number else value)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _overview(report: dict, k: int) -> str:
    train = report.get("train") or {}
    lines = [f"# Evaluation report: {report.get('dataset', 'unknown dataset')}", "",
             f"- **Dataset:** {report.get('dataset', MISSING)}",
             f"- **Split:** {report.get('split', MISSING)}"]
    if train:
        lines.append(f"- **Train:** {train.get('users', MISSING)} users, {train.get('items', MISSING)} items, "
                     f"{train.get('events', MISSING)} events"
                     + (f", trained in {train['seconds']} s" if "seconds" in train else ""))
    if report_ks(report):
        lines.append(f"- **Cut-offs k:** {', '.join(str(x) for x in report_ks(report))}")
    if report.get("best"):
        lines.append(f"- **Best pipeline by ndcg@{k}:** {report['best']}")
    if "seconds" in report:
        lines.append(f"- **Total time:** {report['seconds']} s")
    return "\n".join(lines) + "\n"


def _best_values(pipelines: dict, keys: Sequence[str]) -> dict[str, float]:
    """The highest finite value of each key across pipelines."""
    best = {}
    for key in keys:
        values = [float(entry["metrics"][key]) for entry in pipelines.values()
                  if key in (entry.get("metrics") or {}) and not math.isnan(float(entry["metrics"][key]))]
        if values:
            best[key] = max(values)
    return best


def _main_table(pipelines: dict, k: int, chart: str | None) -> str:
    present = {key for entry in pipelines.values() for key in (entry.get("metrics") or {})}
    keys = [f"{name}@{k}" for name in MAIN_METRICS if name not in OPTIONAL_METRICS or f"{name}@{k}" in present]
    best = _best_values(pipelines, [f"{name}@{k}" for name in ACCURACY])
    rows = []
    for pipeline, entry in pipelines.items():
        found = entry.get("metrics") or {}
        cells = [_fmt_metric(found.get(key)) for key in keys]
        # Bold every pipeline that ties for the best value of an accuracy column.
        cells = [f"**{cell}**" if key in best and key in found and float(found[key]) == best[key] else cell
                 for key, cell in zip(keys, cells)]
        rows.append([pipeline, *cells])
    text = f"## Main metrics @{k}\n\nBest value of each accuracy column in bold.\n\n"
    text += _table(["pipeline", *keys], rows) if rows else "No pipelines were evaluated.\n"
    if chart:
        text += f"\n![precision, recall, NDCG and MAP @{k} per pipeline]({chart})\n"
    return text


def _metric_order(pipelines: dict, ks: Sequence[int]) -> list[str]:
    """Every metric key in the report: known metrics by k, then any others alphabetically."""
    present = {key for entry in pipelines.values() for key in (entry.get("metrics") or {})}
    ordered = [f"{name}@{k}" for k in ks for name in MAIN_METRICS if f"{name}@{k}" in present]
    return ordered + sorted(present - set(ordered))


def _all_metrics_table(pipelines: dict, ks: Sequence[int]) -> str:
    if not pipelines:
        return ""
    names = list(pipelines)
    rows = [[key, *(_fmt_metric((pipelines[p].get("metrics") or {}).get(key)) for p in names)]
            for key in _metric_order(pipelines, ks)]
    info = [["users evaluated", *(_fmt(pipelines[p].get("users")) for p in names)],
            ["seconds", *(str(pipelines[p].get("seconds", MISSING)) for p in names)]]
    return "## All metrics\n\n" + _table(["metric", *names], rows + info)


def _mmr_section(curve: dict | None, chart: str | None) -> str:
    points = (curve or {}).get("points") or []
    if not points:
        return ""
    columns = [key for key in points[0] if key != "lambda"]
    default = curve.get("default_lambda")
    rows = [[_lambda_label(point.get("lambda")) + (" (default)" if point.get("lambda") == default else ""),
             *(_fmt(point.get(key)) for key in columns)] for point in points]
    text = (f"## MMR trade-off: {curve.get('pipeline', MISSING)}\n\n"
            "λ = 1 ranks by relevance only; lower λ trades relevance for diversity.\n\n")
    text += _table(["λ", *columns], rows)
    if chart:
        text += f"\n![NDCG against intra-list diversity for each λ]({chart})\n"
    return text


def _lambda_label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, numbers.Real) else str(value)


def _cold_items_section(section: dict | None) -> str:
    if not section:
        return ""
    text = "## Cold-start items\n\n"
    if "skipped" in section:
        return text + f"Skipped: {section['skipped']}\n"
    text += ("Whole items held out of training (with every event); the held-out items are ranked for "
             "each user by content alone and compared with a random ranking.\n\n")
    return text + _table(["measure", "value"], [[key, _fmt(value)] for key, value in section.items()])


def _cold_users_section(section: dict | None, k: int) -> str:
    if not section:
        return ""
    context = section.get("context_items")
    text = (f"## Cold-start users\n\n{_fmt(section.get('users'))} users held out of training entirely; "
            f"their first {context if context is not None else 'few'} items are given as request context.\n\n")
    by_pipeline = section.get("metrics") or {}
    keys = [f"{name}@{k}" for name in ACCURACY]
    rows = [[name, *(_fmt_metric((found or {}).get(key)) for key in keys)] for name, found in by_pipeline.items()]
    return text + (_table(["pipeline", *keys], rows) if rows else "No pipelines were evaluated.\n")


def _charts_section(charts: dict[str, str]) -> str:
    if not charts:
        return ""
    return "## Charts\n\n" + "\n".join(f"- [{name}]({name})" for name in charts.values()) + "\n"


def _new_figure(width: float, height: float):
    """A figure on the Agg canvas, independent of pyplot's global state and backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def plot_metrics(pipelines: dict, k: int, path: Path) -> Path:
    """Grouped bars of precision, recall, NDCG and MAP @k, one group per pipeline."""
    import numpy as np

    names = list(pipelines)
    figure = _new_figure(max(6.0, 1.3 * len(names) + 2.5), 4.5)
    axes = figure.add_subplot()
    width = 0.8 / len(CHART_METRICS)
    positions = np.arange(len(names))
    for offset, metric in enumerate(CHART_METRICS):
        key = f"{metric}@{k}"
        heights = [float((pipelines[n].get("metrics") or {}).get(key, float("nan"))) for n in names]
        axes.bar(positions + (offset - (len(CHART_METRICS) - 1) / 2) * width, heights, width, label=key)
    axes.set_xticks(positions, names, rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    axes.set_ylabel("score")
    axes.set_title(f"Accuracy @{k} per pipeline")
    axes.grid(axis="y", alpha=0.3)
    if names:
        axes.legend(ncols=len(CHART_METRICS), loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)
    else:
        axes.text(0.5, 0.5, "no pipelines evaluated", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_mmr_tradeoff(curve: dict, path: Path) -> Path:
    """NDCG (x) against intra-list diversity (y) for each MMR λ, points labelled with λ."""
    points = curve.get("points") or []
    ndcg_key = _curve_key(points, "ndcg@")
    ild_key = curve.get("diversity") or _curve_key(points, "ild@")  # the space the stage diversifies over
    x = [float(p.get(ndcg_key, float("nan"))) for p in points]
    y = [float(p.get(ild_key, float("nan"))) for p in points]
    figure = _new_figure(6.5, 4.8)
    axes = figure.add_subplot()
    axes.plot(x, y, marker="o", color="tab:blue")
    for point, px, py in zip(points, x, y):
        axes.annotate(f"λ={_lambda_label(point.get('lambda'))}", (px, py), textcoords="offset points", xytext=(6, 4), fontsize=9)
    axes.margins(0.15)  # room for the λ labels of the outermost points
    axes.set_xlabel(f"{ndcg_key} (accuracy)")
    axes.set_ylabel(f"{ild_key} (intra-list diversity)")
    axes.set_title(f"MMR relevance/diversity trade-off: {curve.get('pipeline', '')}")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _curve_key(points: list[dict], prefix: str) -> str:
    """The first key with ``prefix`` in the curve points, e.g. ``ndcg@10``."""
    for point in points:
        for key in point:
            if key.startswith(prefix):
                return key
    return f"{prefix}{MAIN_K}"


# ---- several seeds: how much of a difference between pipelines is the split's luck ----

SEED_METRICS = ("precision", "recall", "ndcg", "map", "hitrate", "coverage", "ild", "category_ild")


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of one figure over the seeds."""
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "sd": float(array.std(ddof=1)) if array.shape[0] > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max()), "values": array.tolist()}


def summarise_seeds(reports: dict[int, dict]) -> dict:
    """One summary of `evaluate` reports that differ only in the split's seed (each seed draws its
    own test set and trains its own model): each pipeline's metrics @k as mean, sd, min and max;
    every pipeline's NDCG@k gap to the best one (by mean), seed by seed, and on how many seeds
    the best is ahead; each MMR pipeline's change at its configured lambda against lambda 1 (the
    same lists without diversification); the cold-start figures."""
    seeds = list(reports)
    runs = list(reports.values())
    k = main_k(runs[0])
    names = [p for p in runs[0].get("pipelines") or {} if all(p in r["pipelines"] for r in runs)]

    def figures(metrics_of) -> dict[str, dict[str, float]]:
        keys = [f"{m}@{k}" for m in SEED_METRICS if all(f"{m}@{k}" in metrics_of(r) for r in runs)]
        return {key: spread([metrics_of(r)[key] for r in runs]) for key in keys}

    ndcg = f"ndcg@{k}"
    pipelines = {name: figures(lambda r, n=name: r["pipelines"][n]["metrics"]) for name in names}
    best = max(names, key=lambda n: pipelines[n][ndcg]["mean"]) if names else None
    gaps = {}
    for name in names:
        if name != best:
            diffs = [b - o for b, o in zip(pipelines[best][ndcg]["values"], pipelines[name][ndcg]["values"])]
            gaps[name] = {**spread(diffs), "best_ahead": sum(d > 0 for d in diffs)}
    summary: dict[str, Any] = {"dataset": runs[0].get("dataset"), "seeds": seeds, "k": k,
                               "splits": [r.get("split") for r in runs], "pipelines": pipelines, "best": best,
                               "gap_to_best": gaps, "mmr": _mmr_changes(runs),
                               "seconds": round(sum(float(r.get("seconds", 0.0)) for r in runs), 1)}
    items = [r.get("cold_start_items") or {} for r in runs]
    if all("ratio" in section for section in items):
        summary["cold_start_items"] = {key: spread([section[key] for section in items])
                                       for key in (f"recall@{MAIN_K}", f"random_recall@{MAIN_K}", "ratio")}
    users = [((r.get("cold_start_users") or {}).get("metrics") or {}) for r in runs]
    if users[0]:
        summary["cold_start_users"] = {name: figures(lambda r, n=name: r["cold_start_users"]["metrics"][n])
                                       for name in users[0] if all(name in u for u in users)}
    return summary


def _mmr_changes(runs: list[dict]) -> list[dict]:
    """Per MMR pipeline: % change of NDCG@10 and of its diversity at the configured lambda against
    lambda 1, over the seeds (only for curves that have both points in every run)."""
    out = []
    first = runs[0].get("mmr_curves") or []
    for curve in first:
        name, default, space = curve.get("pipeline"), curve.get("default_lambda"), curve.get("diversity", "ild@10")
        ndcg_changes, diversity_changes = [], []
        for run in runs:
            found = next((c for c in run.get("mmr_curves") or [] if c.get("pipeline") == name), None)
            points = {p.get("lambda"): p for p in (found or {}).get("points") or []}
            if 1.0 not in points or default not in points or default == 1.0:
                break
            plain, served = points[1.0], points[default]
            ndcg_changes.append(100.0 * (served[f"ndcg@{MAIN_K}"] / plain[f"ndcg@{MAIN_K}"] - 1.0))
            diversity_changes.append(100.0 * (served[space] / plain[space] - 1.0))
        else:
            out.append({"pipeline": name, "lambda": default, "diversity": space,
                        "ndcg_change_percent": spread(ndcg_changes), "diversity_change_percent": spread(diversity_changes)})
    return out


def _spread_cell(found: dict | None) -> str:
    if not found:
        return MISSING
    return f"{found['mean']:.4f} ± {found['sd']:.4f} ({found['min']:.4f} to {found['max']:.4f})"


def percent_range(found: dict) -> str:
    """A % change over the seeds: its mean, then its range."""
    return f"{found['mean']:+.1f}% ({found['min']:+.1f}% to {found['max']:+.1f}%)"


def render_seeds_markdown(summary: dict) -> str:
    k, seeds, best = summary["k"], summary["seeds"], summary.get("best")
    lines = [f"# Evaluation over {len(seeds)} seeds: {summary.get('dataset') or MISSING}", "",
             f"- **Seeds:** {', '.join(str(s) for s in seeds)}. Each seed draws its own test set and trains its "
             "own model; each seed's full report is in its folder: "
             + ", ".join(f"[seed-{s}](seed-{s}/report.md)" for s in seeds) + ".",
             f"- **Splits:** {'; '.join(str(s) for s in summary.get('splits') or [])}",
             f"- **Total time:** {summary.get('seconds', MISSING)} s", "",
             f"## Metrics @{k}: mean ± sd (min to max) over the seeds", ""]
    pipelines = summary.get("pipelines") or {}
    keys = [f"{m}@{k}" for m in SEED_METRICS if any(f"{m}@{k}" in found for found in pipelines.values())]
    lines.append(_table(["pipeline", *keys], [[name, *(_spread_cell(found.get(key)) for key in keys)]
                                              for name, found in pipelines.items()]))
    gaps = summary.get("gap_to_best") or {}
    if gaps:
        lines += [f"## Against the best pipeline by mean ndcg@{k}: {best}", "",
                  f"The gap is {best}'s ndcg@{k} minus the pipeline's, seed by seed (paired: the same test set).", "",
                  _table(["pipeline", f"ndcg@{k} gap, mean ± sd (min to max)", f"{best} ahead on"],
                         [[name, _spread_cell(gap), f"{gap['best_ahead']} of {len(seeds)} seeds"]
                          for name, gap in gaps.items()])]
    if summary.get("mmr"):
        lines += ["## MMR at the configured λ, against λ = 1 (the same lists without MMR)", "",
                  _table(["pipeline", "λ", "diversity", f"ndcg@{MAIN_K} change, mean (min to max)",
                          "diversity change, mean (min to max)"],
                         [[m["pipeline"], _lambda_label(m["lambda"]), m["diversity"], percent_range(m["ndcg_change_percent"]),
                           percent_range(m["diversity_change_percent"])] for m in summary["mmr"]])]
    if summary.get("cold_start_items"):
        items = summary["cold_start_items"]
        lines += ["## Cold-start items", "",
                  _table(["measure", "mean ± sd (min to max)"], [[key, _spread_cell(found)] for key, found in items.items()])]
    if summary.get("cold_start_users"):
        lines += [f"## Cold-start users: ndcg@{k}", "",
                  _table(["pipeline", f"ndcg@{k}, mean ± sd (min to max)"],
                         [[name, _spread_cell(found.get(f"ndcg@{k}"))] for name, found in summary["cold_start_users"].items()])]
    return "\n".join(lines).rstrip() + "\n"


def write_seed_summary(out_dir: str | Path, summary: dict) -> dict[str, Path]:
    """Write ``seeds.json`` and ``seeds.md`` into ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "seeds.json", "markdown": out / "seeds.md"}
    paths["json"].write_text(json.dumps(summary, indent=2, sort_keys=True, default=_json_default) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_seeds_markdown(summary), encoding="utf-8")
    return paths
