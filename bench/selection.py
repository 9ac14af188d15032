"""Which model does selection choose, and how well does it do? A fingerprint across changes.

    .venv/bin/python bench/selection.py [--datasets hymenoptera,flower_photos_small]
        [--k all,5,10,20] [--seeds 0,1,2] [--backbones auto] [--augment-views 2]
        [--cache-dir /tmp/nanonet-feature-cache] [--json FILE] [--compare FILE]

In-process on cached features, as the training job runs it: `app.ml.select.fit_model` on the
train split (all of it, or k images per class drawn with numpy seed s), scored on the whole val
split. Per run it prints the chosen backbone, head and l2, val accuracy, the nested-CV accuracy
and log loss the service would report, and the fit time. `--compare` takes an earlier --json and
lists every run whose choice changed; the exit status is 1 if any did. A k larger than some
class of a data set is skipped for that data set.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.ml.augment import DEFAULT_VIEWS
from app.ml.cache import FeatureCache
from app.ml.registry import parse_backbones
from app.ml.select import fit_model

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def load(
    name: str, split: str, cache: FeatureCache, backbones: list[str], views: int
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    with (DATASETS / name / "manifest.csv").open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["split"] == split]
    names = sorted({row["label"] for row in rows})

    def loader(path: Path):  # type: ignore[no-untyped-def]
        def load_image() -> Image.Image:
            with Image.open(path) as image:
                return image.convert("RGB")

        return load_image

    items = [(row["sha256"], loader(DATASETS / name / row["path"])) for row in rows]
    features = cache.views_for(backbones, items, views=range(views))
    return features, np.array([names.index(row["label"]) for row in rows]), names


def run(
    train: dict[str, np.ndarray], labels: np.ndarray, names: list[str],
    val: dict[str, np.ndarray], val_labels: np.ndarray, rows: np.ndarray,
) -> dict[str, Any]:
    started = time.perf_counter()
    result = fit_model({b: f[rows] for b, f in train.items()}, labels[rows], names)
    seconds = time.perf_counter() - started
    probs = result.head.predict_proba(val[result.candidate.backbone][:, 0])
    metrics = result.metrics or {}
    return {
        "backbone": result.candidate.backbone,
        "head": result.candidate.head,
        "l2": result.candidate.l2,
        "val_accuracy": round(float((probs.argmax(axis=1) == val_labels).mean()), 4),
        "nested_cv_accuracy": round(metrics["accuracy"], 4) if metrics else None,
        "nested_cv_log_loss": round(metrics["log_loss"], 4) if metrics else None,
        "fit_s": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="hymenoptera,flower_photos_small")
    parser.add_argument("--k", default="all,5,10,20", help="images per class; `all` = train/")
    parser.add_argument("--seeds", default="0,1,2", help="one draw per seed for each k")
    parser.add_argument("--backbones", default="auto", help="as NANONET_BACKBONES")
    parser.add_argument("--augment-views", type=int, default=DEFAULT_VIEWS)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/nanonet-feature-cache"))
    parser.add_argument("--json", type=Path, help="write every run to this file")
    parser.add_argument("--compare", type=Path, help="an earlier --json to compare choices with")
    args = parser.parse_args()

    cache = FeatureCache(args.cache_dir)
    backbones = list(parse_backbones(args.backbones))
    seeds = [int(s) for s in args.seeds.split(",")]
    report: dict[str, dict[str, Any]] = {}
    for dataset in args.datasets.split(","):
        train, labels, names = load(dataset, "train", cache, backbones, 1 + args.augment_views)
        val, val_labels, _ = load(dataset, "val", cache, backbones, 1)
        smallest = int(np.bincount(labels).min())
        for k in args.k.split(","):
            if k == "all":
                draws = [("all", np.arange(len(labels)))]
            elif int(k) <= smallest:
                draws = []
                for seed in seeds:
                    rng = np.random.default_rng(seed)
                    rows = np.concatenate([
                        rng.choice(np.flatnonzero(labels == c), int(k), replace=False)
                        for c in range(len(names))
                    ])
                    draws.append((f"k{k}/seed{seed}", rows))
            else:
                continue
            for tag, rows in draws:
                key = f"{dataset}/{tag}"
                report[key] = run(train, labels, names, val, val_labels, rows)
                print(key, json.dumps(report[key]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        changed = [
            key for key in report
            if key in before
            and [before[key][f] for f in ("backbone", "head", "l2")]
            != [report[key][f] for f in ("backbone", "head", "l2")]
        ]
        for key in changed:
            old, new = before[key], report[key]
            print(f"changed {key}: {old['backbone']} {old['head']} {old['l2']} "
                  f"(val {old['val_accuracy']}) -> {new['backbone']} {new['head']} {new['l2']} "
                  f"(val {new['val_accuracy']})")
        print(f"{len(changed)} of {sum(key in before for key in report)} choices changed")
        sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
