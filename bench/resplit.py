"""Is the accuracy NanoNet reports honest on a data set, or only on one lucky split?

    .venv/bin/python bench/resplit.py [--dataset flower_photos_small] [--splits 10]
        [--augment-views 2]
        [--cache-dir /tmp/nanonet-feature-cache] [--json bench/results/resplit.json]

A data set's fixed val split is one draw: with 50 val images one image is 2 points, and a split
can be easier or harder than the training images. This pools train + val, draws `--splits`
random stratified splits of the same sizes, and for each runs the service's selection
(`app.ml.select.fit_model` with the default candidates and augmented views, in-process on
cached features) on the train part, then measures the held-out part. It reports, per split
and on average, the nested-CV accuracy the service would report, the held-out accuracy, and
their gap. If the mean gap is small while the fixed split's is large, the fixed split is the
outlier, not the estimate.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.ml.augment import DEFAULT_VIEWS  # noqa: E402
from app.ml.cache import FeatureCache  # noqa: E402
from app.ml.registry import default_candidates  # noqa: E402
from app.ml.select import fit_model  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"


def load(name: str, cache: FeatureCache, views: int):  # type: ignore[no-untyped-def]
    from PIL import Image

    manifest = DATASETS / name / "manifest.csv"
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    names = sorted({row["label"] for row in rows})

    def loader(path: Path):  # type: ignore[no-untyped-def]
        return lambda: Image.open(path).convert("RGB")

    items = [(row["sha256"], loader(DATASETS / name / row["path"])) for row in rows]
    features = cache.views_for(list(default_candidates()), items, views=range(views))
    labels = np.array([names.index(row["label"]) for row in rows])
    is_train = np.array([row["split"] == "train" for row in rows])
    return features, labels, names, is_train


def split_like(labels: np.ndarray, is_train: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return a random train mask with as many train images per class as the dataset's split."""
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_train = int(is_train[members].sum())
        mask[rng.choice(members, n_train, replace=False)] = True
    return mask


def run_split(features, labels, names, train) -> dict[str, float]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fit_model({b: f[train] for b, f in features.items()}, labels[train], names)
    held_out = ~train
    probs = result.head.predict_proba(features[result.candidate.backbone][held_out, 0])
    measured = float((probs.argmax(axis=1) == labels[held_out]).mean())
    reported = float(result.metrics["accuracy"])
    return {"reported_cv": round(reported, 4), "held_out": round(measured, 4),
            "gap": round(reported - measured, 4), "backbone": result.candidate.backbone,
            "head": result.candidate.head, "fit_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="flower_photos_small")
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/nanonet-feature-cache"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--augment-views", type=int, default=DEFAULT_VIEWS)
    args = parser.parse_args()

    cache = FeatureCache(args.cache_dir)
    features, labels, names, is_train = load(args.dataset, cache, args.augment_views + 1)
    rows = [{"split": "fixed (the dataset's val)", **run_split(features, labels, names, is_train)}]
    print(rows[-1], flush=True)
    for seed in range(args.splits):
        train = split_like(labels, is_train, np.random.default_rng(seed))
        rows.append({"split": f"random seed {seed}", **run_split(features, labels, names, train)})
        print(rows[-1], flush=True)
    random_rows = rows[1:]
    summary = {
        "dataset": args.dataset,
        "train_images": int(is_train.sum()),
        "held_out_images": int((~is_train).sum()),
        "random_splits": len(random_rows),
        "mean_reported_cv": round(statistics.mean(r["reported_cv"] for r in random_rows), 4),
        "mean_held_out": round(statistics.mean(r["held_out"] for r in random_rows), 4),
        "mean_gap": round(statistics.mean(r["gap"] for r in random_rows), 4),
        "mean_abs_gap": round(statistics.mean(abs(r["gap"]) for r in random_rows), 4),
        "sd_held_out": round(statistics.stdev(r["held_out"] for r in random_rows), 4),
        "fixed_split": rows[0],
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
