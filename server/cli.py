"""The `hybridrec` command: train, precompute, serve, demo, recommend, similar, info, evaluate, tune,
demo-data, convert-movielens."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from .config import BUILTIN_CONFIG_DIR
from .errors import HybridrecError

DEFAULT_CONFIG = BUILTIN_CONFIG_DIR / "default.yaml"
DEFAULT_TARGET = "127.0.0.1:50051"


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_training_config
    from .training import train

    config = load_training_config(args.config)
    serving = _precomputed_in(args.config)  # checked before training: a bad section fails now, not after
    manifest = train(args.events, args.items, config, args.out, args.config)
    counts = manifest["counts"]
    print(f"trained model {manifest['model_version']}: {counts['users']} users, {counts['items']} items, "
          f"{counts['interactions']} interactions -> {args.out}")
    if serving:
        from .precompute import precompute

        _report_precomputed(precompute(args.out, args.config))
    return 0


def _precomputed_in(config_path: Path) -> bool:
    """Whether a config file's `server.precomputed` names tables (its server and pipelines valid)."""
    from .config import load_yaml
    from .pipeline import load_serving_config
    from .plugin_manager import Plugins

    server = load_yaml(config_path).get("server")
    if not isinstance(server, dict) or not server.get("precomputed"):
        return False
    return bool(load_serving_config(config_path, Plugins()).precomputed)


def _report_precomputed(tables: list[dict]) -> None:
    for t in tables:
        print(f"precomputed {t['pipeline']} k={t['k']}: {t['stored']} of {t['rows']} answers stored "
              f"({t['left_empty']} left to the live pipeline) in {t['seconds']} s")


def _cmd_precompute(args: argparse.Namespace) -> int:
    from .precompute import precompute

    _report_precomputed(precompute(args.model, args.config, jobs=args.jobs))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .app import resolve_workers, serve, serve_workers

    workers = resolve_workers(args.workers)
    if workers == 1:
        serve(args.model, args.config, host=args.host, port=args.port, max_workers=args.threads,
              faiss_threads=args.faiss_threads, io=args.io)
        return 0
    for handler in logging.getLogger().handlers:  # several processes share stderr: name each line's
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [pid %(process)d] %(message)s"))
    serve_workers(args.model, args.config, host=args.host, port=args.port, workers=workers,
                  max_workers=args.threads, faiss_threads=args.faiss_threads, start_timeout=args.start_timeout,
                  io=args.io)
    return 0


def _workers(text: str) -> int:
    if text == "auto":
        return 0
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 or 'auto', got {value}")
    return value


def _cmd_demo(args: argparse.Namespace) -> int:
    """Build the demo dataset and model if absent, then serve it."""
    from .app import serve
    from .bundle import MANIFEST
    from .config import load_training_config
    from .demo_data import generate
    from .training import train

    root = Path(args.dir)
    data_dir, model_dir = root / "data", root / "model"
    if not (data_dir / "events.csv").is_file():
        logging.getLogger("hybridrec").info("writing demo data to %s", data_dir)
        generate(data_dir)
    if not (model_dir / MANIFEST).is_file():
        precomputed = _precomputed_in(args.config)
        train(data_dir / "events.csv", data_dir / "items.csv", load_training_config(args.config), model_dir, args.config)
        if precomputed:
            from .precompute import precompute

            _report_precomputed(precompute(model_dir, args.config))
    print(f"demo model in {model_dir}; serving on {args.host}:{args.port} "
          f"(try: hybridrec recommend --user u-00001 -k 10 --explain)", flush=True)
    serve(model_dir, args.config, host=args.host, port=args.port, max_workers=args.threads)
    return 0


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _cmd_recommend(args: argparse.Namespace) -> int:
    from hybridrec.clients import RecommenderClient

    with RecommenderClient(args.target, timeout=args.timeout) as client:
        result = client.recommend(args.user, args.k, context_items=args.context or (), exclude=args.exclude or (),
                                  pipeline=args.pipeline, explain=args.explain)
    header = ["rank", "item_id", "score"] + (["sources", "reason"] if args.explain else [])
    rows = []
    for rank, item in enumerate(result.items, start=1):
        row = [str(rank), item.item_id, f"{item.score:.4f}"]
        if args.explain:
            row += [" ".join(f"{k}={v:.2f}" for k, v in sorted(item.source_scores.items())), item.reason]
        rows.append(row)
    print(_table(rows, header))
    notes = [f"model {result.model_version}", f"pipeline {result.pipeline}"]
    if result.cold_start:
        notes.append("cold start (unknown user)")
    if result.degraded_stages:
        notes.append("degraded: " + ", ".join(result.degraded_stages))
    print("; ".join(notes))
    return 0


def _cmd_similar(args: argparse.Namespace) -> int:
    from hybridrec.clients import RecommenderClient

    with RecommenderClient(args.target, timeout=args.timeout) as client:
        items = client.similar_items(args.item, args.k)
    print(_table([[str(i), it.item_id, f"{it.score:.4f}"] for i, it in enumerate(items, 1)], ["rank", "item_id", "score"]))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from hybridrec.clients import RecommenderClient

    with RecommenderClient(args.target, timeout=args.timeout) as client:
        info = client.model_info()
    print(f"model {info.model_version} (created {info.created_at}, format {info.format_version}): "
          f"{info.num_users} users, {info.num_items} items, {info.num_interactions} interactions; max_k {info.max_k}")
    for p in info.pipelines:
        stages = " -> ".join(f"{s.kind}:{s.name}" + (f"[{s.plugin}]" if s.plugin != s.name else "") for s in p.stages)
        stored = f" [stored answers at k={', '.join(map(str, p.precomputed_k))}]" if p.precomputed_k else ""
        print(f"  {p.name}{' (default)' if p.is_default else ''}: {stages}{stored}")
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from .demo_data import generate

    paths = generate(args.out, n_users=args.users, n_items=args.items, n_events=args.events, seed=args.seed)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_scale_data(args: argparse.Namespace) -> int:
    from .scale_data import generate

    paths = generate(args.out, n_users=args.users, n_items=args.items, n_events=args.events, seed=args.seed)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_convert_movielens(args: argparse.Namespace) -> int:
    from .movielens import convert

    paths = convert(args.src, args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet_training(args: argparse.Namespace) -> None:
    """Evaluation and tuning train several bundles: their step logs would drown the progress."""
    if not args.verbose:
        logging.getLogger("hybridrec").setLevel(logging.WARNING)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate
    from .reports import prepare_output, summarise_seeds, write_reports, write_seed_summary

    _quiet_training(args)
    prepare_output(args.out, "--out", folder=True)
    options = dict(split=args.split, test_ratio=args.test_ratio, ks=args.k, pipelines=args.pipelines,
                   cold_start=not args.no_cold_start, progress=_progress)
    if args.seeds:
        reports = {}
        for seed in args.seeds:  # each seed's reports are written as it finishes: an interrupted run keeps them
            _progress(f"seed {seed} ({len(reports) + 1} of {len(args.seeds)})")
            reports[seed] = evaluate(args.data, args.config, seed=seed, **options)
            write_reports(args.out / f"seed-{seed}", reports[seed])
        summary = summarise_seeds(reports)
        paths = write_seed_summary(args.out, summary)
        _print_seed_summary(summary)
        print(f"evaluated {len(reports)} seeds in {summary['seconds']} s; reports: "
              f"{', '.join(str(p) for p in paths.values())} and seed-*/ beside them")
        return 0
    report = evaluate(args.data, args.config, seed=args.seed, **options)
    paths = write_reports(args.out, report)
    ks = report["ks"]
    k = 10 if 10 in ks else ks[0]
    cols = ["precision", "recall", "ndcg", "map", "hitrate", "mrr", "coverage", "ild", "category_ild", "novelty"]
    cols = [c for c in cols if all(f"{c}@{k}" in entry["metrics"] for entry in report["pipelines"].values())]
    rows = [[name] + [f"{entry['metrics'][f'{c}@{k}']:.4f}" for c in cols]
            for name, entry in report["pipelines"].items()]
    print(_table(rows, ["pipeline"] + [f"{c}@{k}" for c in cols]))
    cold = report.get("cold_start_items")
    if cold and "ratio" in cold:
        print(f"cold-start items: {cold['pipeline']} recall@10 {cold['recall@10']:.4f} vs random "
              f"{cold['random_recall@10']:.4f} ({cold['ratio']:.1f}x) over {cold['held_out_items']} held-out items")
    print(f"evaluated in {report['seconds']} s; reports: {', '.join(str(p) for p in paths.values())}")
    return 0


def _print_seed_summary(summary: dict) -> None:
    from .reports import percent_range

    k, best, n = summary["k"], summary["best"], len(summary["seeds"])
    ndcg, precision = f"ndcg@{k}", f"precision@{k}"
    rows = []
    for name, found in summary["pipelines"].items():
        gap = summary["gap_to_best"].get(name)
        rows.append([name, *(f"{found[key]['mean']:.4f} ± {found[key]['sd']:.4f}" for key in (ndcg, precision)),
                     f"{found[ndcg]['min']:.4f} to {found[ndcg]['max']:.4f}",
                     "best" if gap is None else f"{gap['mean']:+.4f} ± {gap['sd']:.4f}, behind on {gap['best_ahead']} of {n}"])
    print(_table(rows, ["pipeline", f"{ndcg} mean ± sd", f"{precision} mean ± sd", f"{ndcg} min to max", f"gap to {best}"]))
    for mmr in summary["mmr"]:
        ndcg_change, diversity_change = mmr["ndcg_change_percent"], mmr["diversity_change_percent"]
        print(f"MMR {mmr['pipeline']} at lambda {mmr['lambda']:g} against lambda 1: "
              f"ndcg@10 {percent_range(ndcg_change)}, {mmr['diversity']} {percent_range(diversity_change)}")
    cold = summary.get("cold_start_items")
    if cold:
        print(f"cold-start items: recall@10 {cold['ratio']['mean']:.1f}x random "
              f"({cold['ratio']['min']:.1f}x-{cold['ratio']['max']:.1f}x)")


def _cmd_tune(args: argparse.Namespace) -> int:
    from .reports import prepare_output
    from .tuning import tune

    _quiet_training(args)
    prepare_output(args.out, "--out", folder=False)  # tune checks it too, but names its own argument
    journal = None if args.no_journal else args.journal or args.out.with_name(args.out.name + ".trials.jsonl")
    if journal is not None:
        prepare_output(journal, "--journal", folder=False)
    chosen = {name: value for name, value in (("valid_ratio", args.valid_ratio), ("folds", args.folds),
                                                        ("mmr_max_loss", args.mmr_max_loss)) if value is not None}  # else tune's defaults
    result = tune(args.data, args.config, args.out, pipeline=args.pipeline, seed=args.seed, progress=_progress,
                  structure=args.structure, journal=journal, **chosen)
    print(f"validation ndcg@10 {result['validation_ndcg@10']:.4f} after {len(result['trials'])} trials "
          f"in {result['seconds']} s")
    training = result["training"]
    print(f"chosen: collaborative.components {training['collaborative']['components']}, "
          f"item_item.ease_lambda {training['item_item']['ease_lambda']}, "
          + (f"events.transform {training['events']['transform']}, item_item.method {training['item_item']['method']}, "
             f"content.dims {training['content']['dims']}, normalise {result['normalise'] or 'unchanged'}, "
             f"mmr shape {result['mmr_shape'] or 'unchanged'}, "
             if result["structure"] else "") +
          f"events.weights {training['events']['weights']}, weights {result['weights']}, "
          + (f"mmr lambda {result['mmr_lambda']}" if len(result["mmr"]) <= 1 else
             "mmr lambda " + ", ".join(f"{name} {entry['lambda']}" for name, entry in result["mmr"].items())))
    print(f"wrote {args.out}")
    if journal is not None:
        reused = sum(bool(t.get("journal")) for t in result["trials"])
        print(f"journal {journal}" + (f": {reused} training trials read from it, not trained again" if reused else ""))
    return 0


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum` (and <= `maximum`, when given)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names it in "invalid ... value"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
request_k = int_at_least(1, 2**31 - 1)  # k is an int32 in the request


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535 (0: any free port), got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (seconds, rates)."""
    value = float(text)
    if not 0.0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def open_fraction(text: str) -> float:
    """argparse type: a share strictly between 0 and 1 (a holdout ratio)."""
    value = float(text)
    if not 0.0 < value < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (seconds that may be none, e.g. a warm-up)."""
    value = float(text)
    if not 0.0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


class _DistinctSeeds(argparse.Action):
    """`--seeds`: two or more, none repeated (a repeated seed would count one split twice)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if len(values) < 2:
            parser.error(f"{option_string}: give at least two seeds (--seed for one)")
        repeated = sorted({seed for seed in values if values.count(seed) > 1})
        if repeated:
            parser.error(f"{option_string}: seed {repeated[0]} is given more than once")
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridrec", description="Hybrid recommendation model server.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model bundle from events and items")
    p.add_argument("--events", required=True, type=Path, help="events CSV: user_id,item_id,event_type,timestamp[,value]")
    p.add_argument("--items", required=True, type=Path, help="items CSV: item_id plus text fields")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (its training: section)")
    p.add_argument("--out", required=True, type=Path, help="model bundle directory to write")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("precompute", help="store a pipeline's answers for every known user in a bundle "
                                          "(the config's server.precomputed)")
    p.add_argument("--model", required=True, type=Path, help="model bundle directory")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="YAML config whose server.precomputed names the pipelines and k values")
    p.add_argument("--jobs", type=non_negative_int, default=0, metavar="N",
                   help="worker processes (default 0: one per CPU)")
    p.set_defaults(func=_cmd_precompute)

    def server_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (server: and pipelines:)")
        p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)")
        p.add_argument("--port", type=port_number, default=50051, help="0: any free port")
        p.add_argument("--threads", type=positive_int, default=8, help="request handler threads per process (with --io threads)")

    p = sub.add_parser("serve", help="serve a model bundle over gRPC")
    p.add_argument("--model", required=True, type=Path)
    server_args(p)
    p.add_argument("--workers", type=_workers, default=1, metavar="N",
                   help="server processes sharing the port with SO_REUSEPORT, under a supervisor that "
                        "forwards SIGTERM/SIGINT; 0 or 'auto': one per CPU (default 1: a single process)")
    p.add_argument("--faiss-threads", type=non_negative_int, default=1, metavar="N",
                   help="OpenMP threads per FAISS search in each process (default 1; 0: FAISS's default)")
    p.add_argument("--io", choices=("threads", "asyncio"), default="threads",
                   help="threads: a pool of --threads handler threads per process; asyncio: handlers run inline "
                        "on one event loop per process (less CPU per request under load; use with --workers)")
    p.add_argument("--start-timeout", type=positive_float, default=600.0, metavar="SECONDS",
                   help="with --workers: fail if the workers are not all serving by then")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("demo", help="build the demo data and model if absent, then serve them")
    p.add_argument("--dir", type=Path, default=Path(".hybridrec/demo"), help="where demo data and model live")
    server_args(p)
    p.set_defaults(func=_cmd_demo)

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target", default=DEFAULT_TARGET, help="server address host:port")
        p.add_argument("--timeout", type=positive_float, default=5.0, help="seconds")
        p.add_argument("-k", type=request_k, default=10, help="how many items")

    p = sub.add_parser("recommend", help="ask a running server for recommendations")
    p.add_argument("--user", default="", help="user id (empty or unknown: cold start)")
    p.add_argument("--context", nargs="*", metavar="ITEM", help="items the user is looking at now")
    p.add_argument("--exclude", nargs="*", metavar="ITEM", help="items not to return")
    p.add_argument("--pipeline", default="", help="pipeline name (default: the server's default)")
    p.add_argument("--explain", action="store_true", help="show per-source scores and reasons")
    client_args(p)
    p.set_defaults(func=_cmd_recommend)

    p = sub.add_parser("similar", help="items similar to an item, from a running server")
    p.add_argument("--item", required=True)
    client_args(p)
    p.set_defaults(func=_cmd_similar)

    p = sub.add_parser("info", help="what a running server serves")
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--timeout", type=positive_float, default=5.0, help="seconds")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("evaluate", help="offline evaluation of every pipeline of a config on a dataset")
    p.add_argument("--data", required=True, type=Path,
                   help="a MovieLens 100K or latest-small folder, or a folder with events.csv and items.csv")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--split", default="random", choices=["random", "temporal", "leave_last"])
    p.add_argument("--test-ratio", type=float, default=0.25)
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=42, help="the split's seed")
    seeds.add_argument("--seeds", type=int, nargs="+", action=_DistinctSeeds, default=None,
                       help="evaluate once per seed (each its own split and model) and summarise the spread: "
                            "OUT/seeds.md and .json, each seed's reports in OUT/seed-S/")
    p.add_argument("-k", "--k", type=positive_int, nargs="+", default=[5, 10, 20], help="cut-offs")
    p.add_argument("--pipelines", nargs="+", default=None, help="default: every pipeline of the config")
    p.add_argument("--no-cold-start", action="store_true", help="skip the cold-start item and user runs")
    p.add_argument("--out", type=Path, default=Path("reports"), help="where report.md/json and PNGs go")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("tune", help="tune hyperparameters on a validation split; write the tuned config")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the config to start from")
    p.add_argument("--out", required=True, type=Path, help="tuned config YAML to write")
    p.add_argument("--pipeline", default="hybrid", help="the pipeline whose ndcg@10 is maximised")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--valid-ratio", type=open_fraction, default=None,
                   help="share of each user's training items held out in a validation fold (default 0.1)")
    p.add_argument("--folds", type=positive_int, default=None, help="validation folds averaged per trial (default 4)")
    p.add_argument("--structure", action="store_true",
                   help="also search the rating transform (none, log1p), the dense item-item method (EASE, "
                        "or DLAE with each dropout), the content dimensions, the scorer's normalisation and the "
                        "MMR stage's redundancy, keep_top and search; otherwise the config's own are kept")
    p.add_argument("--mmr-max-loss", type=open_fraction, default=None,
                   help="share of validation ndcg@10 each MMR pipeline may give up for diversity: its lambda is "
                        "the most diverse within it (default 0.04)")
    journal = p.add_mutually_exclusive_group()
    journal.add_argument("--journal", type=Path, default=None,
                         help="file of the training trials' scores, appended as they are measured; the same "
                              "command run again skips the trials on record, so an interrupted run resumes "
                              "(default: OUT.trials.jsonl)")
    journal.add_argument("--no-journal", action="store_true", help="keep no journal")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("demo-data", help="write a synthetic learning-marketplace dataset")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--users", type=positive_int, default=1000)
    p.add_argument("--items", type=positive_int, default=500)
    p.add_argument("--events", type=positive_int, default=20000)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser("scale-data", help="write a large synthetic dataset fast (scale tests and benchmarks)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--users", type=positive_int, default=10_000)
    p.add_argument("--items", type=positive_int, default=5_000)
    p.add_argument("--events", type=positive_int, default=200_000)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=_cmd_scale_data)

    p = sub.add_parser("convert-movielens", help="convert MovieLens 100K or latest-small to events/items CSV")
    p.add_argument("--src", required=True, type=Path, help="folder with u.data or ratings.csv")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_cmd_convert_movielens)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 on success, 1 with a one-line reason on any error."""
    import grpc

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its import logs which SIMD build loaded
    try:
        return args.func(args)
    except HybridrecError as exc:
        print(f"hybridrec {args.command}: error: {exc}", file=sys.stderr)
    except grpc.RpcError as exc:
        print(f"hybridrec {args.command}: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
    except (ValueError, OSError) as exc:
        print(f"hybridrec {args.command}: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"hybridrec {args.command}: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
