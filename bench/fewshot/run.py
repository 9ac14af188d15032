"""Few-shot benchmark: NanoNet over HTTP vs. the first version's logistic head vs. fine-tuning.

    .venv/bin/python bench/fewshot/run.py [--datasets hymenoptera,flower_photos_small]
        [--k 1,2,5,10,all] [--seeds 0,1,2] [--methods nanonet,baseline_lr,finetune]
        [--finetune-epochs 10] [--out bench/results/fewshot.json] [--markdown]

(`.venv/bin/python -m bench.fewshot` from the repo root is the same.) For every dataset, k and
seed, the same k images per class (drawn from train/) go to every method, and each method is
scored on the dataset's whole val/ split, which is never used for any choice. See README.md here.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `app` and `bench` importable
    sys.path.insert(0, str(ROOT))

from bench.fewshot.data import DATASETS, Dataset  # noqa: E402

METHODS = ("nanonet", "baseline_lr", "finetune")
WARMUP_DATASET = "customvision_trees"
DETERMINISTIC = {"nanonet"}  # same images -> same result; must match the classes' `deterministic`
DEFAULT_EPOCHS = 6


def parse_k(text: str) -> list[int | None]:
    values: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            values.append(None)
        elif part.isdigit() and int(part) > 0:
            values.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"k must be a positive integer or 'all', got {part!r}")
    return values


def k_label(k: int | None) -> str:
    return "all" if k is None else str(k)


def make_methods(args: argparse.Namespace, stack: ExitStack,
                 config_notes: dict[str, Any]) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    for name in args.methods:
        if name == "nanonet":
            from bench.fewshot.nanonet_http import NanoNetHTTP

            if args.url:
                url, key = args.url, args.key or ""
            else:
                from bench.server import embedded_server

                env = dict(item.split("=", 1) for item in args.server_env)
                log_path = args.out.with_name(args.out.stem + "-server.log")
                print(f"starting the embedded server (log: {log_path}) ...", flush=True)
                server = stack.enter_context(embedded_server(env, log_path=log_path))
                url, key, args.server_pid = server.url, server.key, server.pid
            client = NanoNetHTTP(url, key, batch=args.batch)
            stack.callback(client.close)
            if args.warmup:
                warm = args.datasets_dir / WARMUP_DATASET
                if (warm / "train").is_dir():
                    print(f"warm-up: one untimed model on {WARMUP_DATASET} (loads the backbones; "
                          "none of its images is a benchmark image) ...", flush=True)
                    config_notes["warmup_s"] = round(client.warm_up(warm / "train"), 1)
                else:
                    print(f"no {warm}/train: no warm-up, the first nanonet run pays the loading")
            methods[name] = client
        elif name == "baseline_lr":
            from bench.fewshot.baseline import BaselineLR

            methods[name] = BaselineLR(args.cache_dir)
        elif name == "finetune":
            from bench.fewshot.finetune import FineTune

            methods[name] = FineTune(args.finetune_epochs)
    return methods


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["k"], row["method"]), []).append(row)
    summary = []
    for (dataset, k, method), group in groups.items():
        ok = [r for r in group if r.get("error") is None]
        acc = [r["val_accuracy"] for r in ok]
        reported = [r for r in ok if r.get("reported_cv_accuracy") is not None]
        entry: dict[str, Any] = {
            "dataset": dataset, "k": k, "method": method, "runs": len(ok),
            "errors": len(group) - len(ok),
            "train_images": ok[0]["train_images"] if ok else None,
            "val_accuracy_mean": _mean(acc),
            "val_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else None,
            "val_accuracy_min": min(acc) if acc else None,
            "val_accuracy_max": max(acc) if acc else None,
            "train_s_mean": _mean([_train_time(r) for r in ok]),
            "predict_s_mean": _mean([r["predict_s"] for r in ok]),
            "wall_s_mean": _mean([r["wall_s"] for r in ok]),
            "cpu_s_mean": _mean([r.get("cpu_s_bench", 0.0) + r.get("cpu_s_server", 0.0)
                                 for r in ok]),
            "reported_cv_runs": len(reported),
            "reported_cv_accuracy_mean": _mean([r["reported_cv_accuracy"] for r in reported]),
            "reported_gap_mean": _mean([abs(r["reported_cv_accuracy"] - r["val_accuracy"])
                                        for r in reported]),
            "cache_cold_images_mean": _mean([r["cache_cold_images"] for r in ok
                                             if "cache_cold_images" in r]),
            "backbones": sorted({str(r.get("backbone")) for r in ok}),
        }
        heads = sorted({json.dumps(r["head"], sort_keys=True) if not isinstance(r["head"], str)
                        else r["head"] for r in ok if r.get("head") is not None})
        if heads:
            entry["heads"] = heads
        summary.append(entry)
    return summary


def _train_time(row: dict[str, Any]) -> float:
    # nanonet: upload + train (what a user waits for); the others: features/fine-tuning + fit.
    return row["upload_train_s"] if "upload_train_s" in row else row["train_s"]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _spread(entry: dict[str, Any]) -> str:
    if entry["runs"] < 2:
        return "(1 run)"
    return (f"±{_fmt(entry['val_accuracy_std'])} "
            f"[{_fmt(entry['val_accuracy_min'])}-{_fmt(entry['val_accuracy_max'])}]")


def text_table(summary: list[dict[str, Any]]) -> str:
    header = (f"{'dataset':<20} {'k':>4} {'method':<12} {'n':>2} {'val acc':>7} "
              f"{'spread (std [min-max])':<24} {'train s':>8} {'pred s':>7} "
              f"{'cpu s':>6} {'CV rep':>6} {'|gap|':>6} {'cold':>5}  backbone/head")
    lines = [header, "-" * len(header)]
    for e in summary:
        what = ",".join(e["backbones"])
        if e.get("heads"):
            what += " / " + ",".join(h[:40] for h in e["heads"][:2])
        lines.append(
            f"{e['dataset']:<20} {e['k']:>4} {e['method']:<12} {e['runs']:>2} "
            f"{_fmt(e['val_accuracy_mean']):>7} {_spread(e):<24} {_fmt(e['train_s_mean'], 1):>8} "
            f"{_fmt(e['predict_s_mean'], 1):>7} {_fmt(e['cpu_s_mean'], 0):>6} "
            f"{_fmt(e['reported_cv_accuracy_mean']):>6} "
            f"{_fmt(e['reported_gap_mean']):>6} {_fmt(e['cache_cold_images_mean'], 0):>5}  {what}"
            + (f"  ERRORS: {e['errors']}" if e["errors"] else ""))
    return "\n".join(lines)


def markdown_table(summary: list[dict[str, Any]], config: dict[str, Any]) -> str:
    lines = [
        ("| dataset | k/class | method | val accuracy, mean | spread: std [min–max] | runs "
         "| train s | predict val s | reported CV acc | mean \\|CV − val\\| | chosen model |"),
        "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for e in summary:
        spread = ("one run" if e["runs"] < 2 else
                  f"±{_fmt(e['val_accuracy_std'])} [{_fmt(e['val_accuracy_min'])}–"
                  f"{_fmt(e['val_accuracy_max'])}]")
        cv = _fmt(e["reported_cv_accuracy_mean"])
        if e["reported_cv_runs"] and e["reported_cv_runs"] < e["runs"]:
            cv += f" ({e['reported_cv_runs']} of {e['runs']} runs)"
        lines.append(
            f"| {e['dataset']} | {e['k']} | {e['method']} | {_fmt(e['val_accuracy_mean'])} "
            f"| {spread} | {e['runs']} | {_fmt(e['train_s_mean'], 1)} "
            f"| {_fmt(e['predict_s_mean'], 1)} | {cv} | {_fmt(e['reported_gap_mean'])} "
            f"| {_chosen(e)} |")
    lines.append("")
    lines.append(
        f"Seeds {','.join(map(str, config['seeds']))}; fine-tuning {config['finetune_epochs']} "
        "epochs. `train s` is upload + training for nanonet (features cached by content hash, "
        "so runs after the first reuse extractions), feature extraction (persistent cache) + "
        "head fit for baseline_lr, and the whole fine-tuning for finetune. Reported CV accuracy "
        "is the nested cross-validated figure the method reports on its training images (the "
        "service's `metrics.accuracy`; train_head's for baseline_lr; none with 1 image per "
        "class). Val images are never used for any choice.")
    return "\n".join(lines)


def _cpu_seconds(server_pid: int | None) -> tuple[float, float | None]:
    """(CPU seconds of this process, of the server process or None): user + system, all threads."""
    server = None
    if server_pid is not None:
        try:
            fields = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()
            server = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return time.process_time(), server


def _chosen(entry: dict[str, Any]) -> str:
    """What the service picked (backbones, heads) over the runs; blank for the fixed methods."""
    if entry["method"] != "nanonet":
        return ""
    heads = [h for h in entry.get("heads", []) if len(h) <= 40]
    return ", ".join(entry["backbones"]) + (" / " + ", ".join(heads) if heads else "")


def environment() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--datasets", default="hymenoptera,flower_photos_small",
                        help="comma-separated folders of --datasets-dir with train/ and val/")
    parser.add_argument("--datasets-dir", type=Path, default=DATASETS)
    parser.add_argument("--k", type=parse_k, default="1,2,5,10,all",
                        help="images per class drawn from train/; 'all' = the whole train split")
    parser.add_argument("--seeds", default="0,1,2", help="one draw (and fine-tune seed) each")
    parser.add_argument("--methods", default=",".join(METHODS), help="any of " + ", ".join(METHODS))
    parser.add_argument("--finetune-epochs", type=int, default=DEFAULT_EPOCHS,
                        help="fixed epochs of whole-network fine-tuning (the tutorial uses 25)")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/nanonet-feature-cache"),
                        help="persistent feature cache of baseline_lr")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fewshot.json",
                        help="raw rows + summary (rewritten after every run); the embedded "
                        "server's log goes next to it as <stem>-server.log")
    parser.add_argument("--markdown", action="store_true", help="also print the README table")
    parser.add_argument("--batch", type=int, default=16, help="files per upload/predict request")
    parser.add_argument("--url", help="use this running server instead of starting one")
    parser.add_argument("--key", help="API key for --url")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help=f"skip the untimed warm-up model on {WARMUP_DATASET}")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the embedded server (repeatable)")
    args = parser.parse_args(argv)
    args.server_pid = None
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        parser.error("--seeds needs at least one seed")
    datasets = [Dataset.load(args.datasets_dir / name.strip())
                for name in args.datasets.split(",") if name.strip()]
    config = {"datasets": [d.name for d in datasets], "k": [k_label(k) for k in args.k],
              "seeds": seeds, "methods": args.methods, "finetune_epochs": args.finetune_epochs,
              "cache_dir": str(args.cache_dir), "server": args.url or "embedded",
              "server_env": args.server_env}
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    rows: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(summary: list[dict[str, Any]] | None) -> None:
        doc = {"config": config, "environment": environment(), "started_at": started_at,
               "finished_at": datetime.now(UTC).isoformat(timespec="seconds")
               if summary is not None else None,
               "summary": summary, "rows": rows}
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        tmp.replace(args.out)

    plan = {m: sum(1 for d in datasets for k in args.k for i, _ in enumerate(seeds)
                   if not (k is None and m in DETERMINISTIC and i > 0)) for m in args.methods}
    passes = sum(len(d.draw(k, seed)) for d in datasets for k in args.k for seed in seeds)
    print("plan: " + ", ".join(f"{m} {n} runs" for m, n in plan.items())
          + (f"; fine-tuning {passes} images x {args.finetune_epochs} epochs"
             if "finetune" in plan else ""), flush=True)
    bench_started = time.perf_counter()
    with ExitStack() as stack:
        methods = make_methods(args, stack, config)
        server_pid = args.server_pid
        for dataset in datasets:
            for k in args.k:
                if k is not None and k >= min(map(len, dataset.train.values())):
                    print(f"note: {dataset.name} k={k} is at least the smallest class size "
                          f"({min(map(len, dataset.train.values()))}): such classes are used whole")
                for seed_index, seed in enumerate(seeds):
                    train = dataset.draw(k, seed)
                    for name, method in methods.items():
                        if k is None and method.deterministic and seed_index > 0:
                            continue  # same images, no randomness: one run is the answer
                        row: dict[str, Any] = {
                            "dataset": dataset.name, "k": k_label(k), "seed": seed,
                            "method": name, "train_images": len(train),
                            "train_sha256": sorted(s.sha256[:12] for s in train)
                            if k is not None else None,
                        }
                        t0, c0 = time.perf_counter(), _cpu_seconds(server_pid)
                        row["loadavg_before"] = round(os.getloadavg()[0], 2)
                        try:
                            row.update(method.run(dataset, train, seed=seed,
                                                  tag=f"k={k_label(k)}"))
                            row["error"] = None
                        except Exception as exc:  # noqa: BLE001 - record it, keep benchmarking
                            traceback.print_exc()
                            row["error"] = f"{type(exc).__name__}: {exc}"
                        row["wall_s"] = time.perf_counter() - t0
                        c1 = _cpu_seconds(server_pid)
                        row["cpu_s_bench"] = c1[0] - c0[0]
                        if c0[1] is not None and c1[1] is not None:
                            row["cpu_s_server"] = c1[1] - c0[1]
                        rows.append(row)
                        write(None)
                        print(f"{dataset.name:<20} k={k_label(k):>3} seed={seed} {name:<12} "
                              + (f"val={row['val_accuracy']:.3f} "
                                 f"cv={_fmt(row.get('reported_cv_accuracy'))} "
                                 f"train={_train_time(row):.1f}s "
                                 f"predict={row['predict_s']:.1f}s"
                                 if row["error"] is None else f"ERROR {row['error']}"),
                              flush=True)
    config["total_wall_s"] = round(time.perf_counter() - bench_started, 1)
    summary = summarise(rows)
    write(summary)
    print()
    print(text_table(summary))
    print(f"\ntotal {config['total_wall_s']:.0f} s; raw rows and summary in {args.out}")
    if args.markdown:
        print()
        print(markdown_table(summary, config))
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
