"""How well the review finds what is wrong with a data set: flipped labels, and duplicate photos.

    .venv/bin/python bench/review.py mislabels [--dataset hymenoptera] [--flips 6]
        [--seeds 0,1,2] [--top 20] [--backbones auto] [--augment-views 2] [--cache-dir DIR]
    .venv/bin/python bench/review.py duplicates [--datasets hymenoptera,flower_photos_small,
        customvision_trees] [--backbones mobilenet_v2,efficientnet_lite2,...] [--copies 40]

In-process on cached features, as the training job runs it. `mislabels`: on the train split,
`--flips` images of each class get the next class's label (numpy seed s picks them), then
`app.ml.select.fit_model` runs as in training and `app.ml.review.suspected_mislabels` ranks its
out-of-fold probabilities; per seed it prints how many flipped images are in the top `--top`
(recall) and how many of the top are flipped (precision), and how many images cleanlab flagged.
`duplicates`: the cosine (centred features, as `review.duplicate_groups` measures it) between
every two different photos of each data set (all splits), against the cosine between a photo
and its copies (`variants`: re-encoded as JPEG quality 85 or 50, scaled to 3/4 or 1/2, shrunk to
256 px), for `--copies` photos per data set; per backbone it prints the extremes of both, centred
and raw, how many copies of each kind reach `--threshold`, and the closest different photos.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from app.ml.augment import DEFAULT_VIEWS
from app.ml.cache import FeatureCache
from app.ml.registry import parse_backbones
from app.ml.review import DUPLICATE_COSINE, cosine_matrix_rows, suspected_mislabels
from app.ml.select import fit_model

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def rows_of(name: str, splits: tuple[str, ...]) -> list[dict[str, str]]:
    with (DATASETS / name / "manifest.csv").open(newline="") as f:
        return [row for row in csv.DictReader(f) if row["split"] in splits]


def file_loader(path: Path) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(path) as image:
            return image.convert("RGB")

    return load


def bytes_loader(data: bytes) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")

    return load


def flip(labels: np.ndarray, n_classes: int, per_class: int, seed: int) -> np.ndarray:
    """Return the rows whose label moves to the next class (per_class of each class)."""
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
            for c in range(n_classes)
        ]
    )


def mislabels(args: argparse.Namespace, cache: FeatureCache) -> None:
    rows = rows_of(args.dataset, ("train",))
    names = sorted({row["label"] for row in rows})
    items = [(row["sha256"], file_loader(DATASETS / args.dataset / row["path"])) for row in rows]
    backbones = list(parse_backbones(args.backbones))
    features = cache.views_for(backbones, items, views=range(1 + args.augment_views))
    labels = np.array([names.index(row["label"]) for row in rows])
    recalls = []
    for seed in (int(s) for s in args.seeds.split(",")):
        flipped = flip(labels, len(names), args.flips, seed)
        noisy = labels.copy()
        noisy[flipped] = (labels[flipped] + 1) % len(names)
        result = fit_model(features, noisy, names)
        assert result.out_of_fold is not None
        issues = suspected_mislabels(noisy, result.out_of_fold)
        top = {issue.row for issue in issues[: args.top]}
        found = len(top & {int(r) for r in flipped})
        recalls.append(found / len(flipped))
        print(
            json.dumps(
                {
                    "dataset": args.dataset,
                    "seed": seed,
                    "backbone": result.candidate.backbone,
                    "flipped": len(flipped),
                    "flagged": len(issues),
                    f"found_in_top_{args.top}": found,
                    f"recall_at_{args.top}": round(found / len(flipped), 3),
                    f"precision_at_{args.top}": round(found / max(1, len(top)), 3),
                }
            ),
            flush=True,
        )
    print(f"mean recall at {args.top}: {np.mean(recalls):.3f}")


def encoded(image: Image.Image, kind: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def variants(data: bytes) -> dict[str, bytes]:
    """Return copies of an image that a person could upload twice without noticing."""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")

    def scaled(share: float) -> Image.Image:
        size = (max(1, round(image.width * share)), max(1, round(image.height * share)))
        return image.resize(size, Image.LANCZOS)

    small = image.copy()
    small.thumbnail((256, 256), Image.LANCZOS)
    return {
        "jpeg_q85": encoded(image, "JPEG", quality=85),
        "jpeg_q50": encoded(image, "JPEG", quality=50),
        "scale0.75_q90": encoded(scaled(0.75), "JPEG", quality=90),
        "scale0.5_png": encoded(scaled(0.5), "PNG"),
        "thumb256_q75": encoded(small, "JPEG", quality=75),
    }


def unit_rows(x: np.ndarray, *, centred: bool) -> np.ndarray:
    if centred:
        return cosine_matrix_rows(x)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def duplicates(args: argparse.Namespace, cache: FeatureCache) -> None:
    backbones = list(parse_backbones(args.backbones))
    for dataset in args.datasets.split(","):
        rows = rows_of(dataset, ("train", "val", "test"))
        paths = [DATASETS / dataset / row["path"] for row in rows]
        items = [(row["sha256"], file_loader(path)) for row, path in zip(rows, paths, strict=True)]
        rng = np.random.default_rng(0)
        picked = rng.choice(len(rows), min(args.copies, len(rows)), replace=False)
        copies: list[tuple[int, str, bytes]] = [
            (int(i), kind, data)
            for i in picked
            for kind, data in variants(paths[int(i)].read_bytes()).items()
        ]
        kinds = list(dict.fromkeys(kind for _, kind, _ in copies))
        copy_items = [(hashlib.sha256(d).hexdigest(), bytes_loader(d)) for _, _, d in copies]
        originals = cache.views_for(backbones, items, views=[0])
        copied = cache.views_for(backbones, copy_items, views=[0])
        for backbone in backbones:
            x = originals[backbone][:, 0]
            report: dict[str, object] = {
                "dataset": dataset,
                "backbone": backbone,
                "photos": len(x),
                "copied": len(picked),
            }
            for centred in (True, False):
                # Centred on the originals and copies together, as the review centres on a
                # model's own images.
                unit = unit_rows(np.concatenate([x, copied[backbone][:, 0]]), centred=centred)
                base, extra = unit[: len(x)], unit[len(x) :]
                upper = np.triu_indices(len(x), k=1)
                different = (base @ base.T)[upper]
                same = np.array([float(base[i] @ extra[k]) for k, (i, _, _) in enumerate(copies)])
                of_kind = {
                    kind: same[[k for k, c in enumerate(copies) if c[1] == kind]] for kind in kinds
                }
                tag = "centred" if centred else "raw"
                report[f"{tag}_different_max"] = round(float(different.max()), 3)
                report[f"{tag}_copy_min"] = {
                    k: round(float(v.min()), 3) for k, v in of_kind.items()
                }
                if centred:
                    report[f"caught_at_{args.threshold}"] = {
                        k: f"{int((v >= args.threshold).sum())}/{len(v)}"
                        for k, v in of_kind.items()
                    }
                    report["different_over_threshold"] = int((different >= args.threshold).sum())
                    closest = np.argsort(different)[::-1][:3]
                    report["closest_different"] = [
                        (
                            rows[upper[0][k]]["path"],
                            rows[upper[1][k]]["path"],
                            round(float(different[k]), 3),
                        )
                        for k in closest
                    ]
            print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/nanonet-feature-cache"))
    sub = parser.add_subparsers(dest="command", required=True)
    found = sub.add_parser("mislabels", help="recall and precision of flipped labels")
    found.add_argument("--dataset", default="hymenoptera")
    found.add_argument("--flips", type=int, default=6, help="flipped images per class")
    found.add_argument("--seeds", default="0,1,2")
    found.add_argument("--top", type=int, default=20)
    found.add_argument("--backbones", default="auto", help="as NANONET_BACKBONES")
    found.add_argument("--augment-views", type=int, default=DEFAULT_VIEWS)
    same = sub.add_parser("duplicates", help="cosine of copies against different photos")
    same.add_argument("--datasets", default="hymenoptera,flower_photos_small,customvision_trees")
    same.add_argument("--backbones", default="auto", help="as NANONET_BACKBONES")
    same.add_argument("--copies", type=int, default=40, help="photos per data set to copy")
    same.add_argument("--threshold", type=float, default=DUPLICATE_COSINE)
    args = parser.parse_args()
    cache = FeatureCache(args.cache_dir)
    if args.command == "mislabels":
        mislabels(args, cache)
    else:
        duplicates(args, cache)


if __name__ == "__main__":
    main()
