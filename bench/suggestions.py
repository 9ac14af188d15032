"""Does labelling the suggested pool images help more than labelling random ones?

    .venv/bin/python bench/suggestions.py [--dataset hymenoptera] [--start 10] [--label 20]
        [--seeds 0,1,2] [--random-draws 5] [--backbones auto] [--augment-views 2]
        [--cache-dir /tmp/nanonet-feature-cache] [--json FILE]

In-process on cached features, as the training job and the suggestions endpoint run it. Per
seed s: `--start` images per class of the train split (numpy seed s) are labelled, the rest of
train/ is the unlabelled pool. `app.ml.select.fit_model` trains on the start set;
`app.ml.suggest.suggestions` ranks the pool (the head's probabilities, MobileNetV2 eval-view
features for near-copies, centred with the start set as context), the top `--label` get their
true labels, and the model is trained again and scored on the whole val split. The baseline
labels `--label` pool images drawn at random instead (`--random-draws` draws per seed, seeds
1000 * s + d, their accuracies averaged). It prints a row per seed and the means.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.augment import DEFAULT_VIEWS
from app.ml.cache import FeatureCache
from app.ml.registry import parse_backbones
from app.ml.review import DUPLICATE_BACKBONE
from app.ml.select import fit_model
from app.ml.suggest import suggestions

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench.selection import load  # noqa: E402  (datasets read the way selection reads them)


def val_accuracy(
    train: dict[str, np.ndarray], labels: np.ndarray, names: list[str],
    val: dict[str, np.ndarray], val_labels: np.ndarray, rows: np.ndarray,
) -> float:
    result = fit_model({b: f[rows] for b, f in train.items()}, labels[rows], names)
    probs = result.head.predict_proba(val[result.candidate.backbone][:, 0])
    return float((probs.argmax(axis=1) == val_labels).mean())


def run_seed(
    args: argparse.Namespace, seed: int, train: dict[str, np.ndarray], labels: np.ndarray,
    names: list[str], val: dict[str, np.ndarray], val_labels: np.ndarray,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    start = np.concatenate([
        rng.choice(np.flatnonzero(labels == c), args.start, replace=False)
        for c in range(len(names))
    ])
    pool = np.setdiff1d(np.arange(len(labels)), start)
    first = fit_model({b: f[start] for b, f in train.items()}, labels[start], names)
    probs = first.head.predict_proba(train[first.candidate.backbone][pool, 0])
    copies = train[DUPLICATE_BACKBONE][:, 0]
    chosen = suggestions(probs, copies[pool], limit=args.label, context=copies[start])
    suggested = pool[[s.row for s in chosen]]
    base = float((first.head.predict_proba(val[first.candidate.backbone][:, 0]).argmax(axis=1)
                  == val_labels).mean())
    with_suggested = val_accuracy(train, labels, names, val, val_labels,
                                  np.concatenate([start, suggested]))
    random_scores = []
    for draw in range(args.random_draws):
        picked = np.random.default_rng(1000 * seed + draw).choice(pool, args.label, replace=False)
        random_scores.append(val_accuracy(train, labels, names, val, val_labels,
                                          np.concatenate([start, picked])))
    return {
        "seed": seed,
        "backbone": first.candidate.backbone,
        "pool": len(pool),
        "start_val_accuracy": round(base, 4),
        "suggested_val_accuracy": round(with_suggested, 4),
        "random_val_accuracy": round(float(np.mean(random_scores)), 4),
        "random_val_accuracies": [round(s, 4) for s in random_scores],
        "suggested_wrong_before": int((probs.argmax(axis=1)[[s.row for s in chosen]]
                                       != labels[suggested]).sum()),
        "suggested_per_class": np.bincount(labels[suggested], minlength=len(names)).tolist(),
        "suggested_max_margin": round(max(s.margin for s in chosen), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hymenoptera")
    parser.add_argument("--start", type=int, default=10, help="labelled images per class")
    parser.add_argument("--label", type=int, default=20, help="pool images labelled next")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--random-draws", type=int, default=5, help="random baselines per seed")
    parser.add_argument("--backbones", default="auto", help="as NANONET_BACKBONES")
    parser.add_argument("--augment-views", type=int, default=DEFAULT_VIEWS)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/nanonet-feature-cache"))
    parser.add_argument("--json", type=Path, help="write every run to this file")
    args = parser.parse_args()

    cache = FeatureCache(args.cache_dir)
    backbones = sorted(set(parse_backbones(args.backbones)) | {DUPLICATE_BACKBONE})
    train, labels, names = load(args.dataset, "train", cache, backbones, 1 + args.augment_views)
    val, val_labels, _ = load(args.dataset, "val", cache, backbones, 1)
    runs = []
    print(f"{args.dataset}: {args.start} labelled per class, label {args.label} more, "
          f"val n={len(val_labels)}")
    print("seed  backbone                        pool  start   suggested  random(mean of "
          f"{args.random_draws})  wrong-before  per-class")
    for seed in (int(s) for s in args.seeds.split(",")):
        run = run_seed(args, seed, train, labels, names, val, val_labels)
        runs.append(run)
        print(f"{seed:<5} {run['backbone']:<31} {run['pool']:<5} "
              f"{run['start_val_accuracy']:<7.4f} {run['suggested_val_accuracy']:<10.4f} "
              f"{run['random_val_accuracy']:<18.4f} {run['suggested_wrong_before']:<13} "
              f"{run['suggested_per_class']}", flush=True)
    means = {key: round(float(np.mean([r[key] for r in runs])), 4) for key in
             ("start_val_accuracy", "suggested_val_accuracy", "random_val_accuracy")}
    print(f"mean  start {means['start_val_accuracy']:.4f}  suggested "
          f"{means['suggested_val_accuracy']:.4f}  random {means['random_val_accuracy']:.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": runs, "mean": means}, indent=1) + "\n")


if __name__ == "__main__":
    main()
