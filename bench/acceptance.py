"""Checks over /api/v1 that a unit test cannot make cheaply: learning-curve projection and unknown.

    .venv/bin/python bench/acceptance.py [--seeds 0,1,2] [--json bench/results/acceptance.json]

1. Learning curve: train ants/bees on 10 images per class, read the projection for 40 per class
   (4x) from GET /metrics, then train on 40 per class and measure val accuracy; per seed.
2. Unknown: train ants/bees on all train images; predict hymenoptera val and flower_photos_small
   (train + val) with ?reject_unknown=true; report the share called `unknown` in each.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench.hymenoptera_http import DATASETS, split  # noqa: E402
from bench.server import embedded_server  # noqa: E402

HYMENOPTERA = DATASETS / "hymenoptera"
FLOWERS = DATASETS / "flower_photos_small"


def train(client: httpx.Client, name: str, images: dict[str, list[Path]]) -> str:
    model = client.post("/api/v1/models", json={"name": name, "categories": list(images)})
    model.raise_for_status()
    model_id = model.json()["id"]
    for label, paths in images.items():
        for start in range(0, len(paths), 32):
            files = [("files", (p.name, p.read_bytes(), "application/octet-stream"))
                     for p in paths[start:start + 32]]
            client.post(f"/api/v1/models/{model_id}/images", data={"category": label},
                        files=files).raise_for_status()
    job_id = client.post(f"/api/v1/models/{model_id}/train").json()["job_id"]
    while (job := client.get(f"/api/v1/jobs/{job_id}").json())["status"] not in (
            "succeeded", "failed"):
        time.sleep(0.25)
    if job["status"] != "succeeded":
        raise SystemExit(f"training failed: {job['error']}")
    return model_id


def predict(client: httpx.Client, model_id: str, paths: list[Path],
            reject_unknown: bool = False) -> list[str]:
    labels = []
    for start in range(0, len(paths), 32):
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream"))
                 for p in paths[start:start + 32]]
        response = client.post(f"/api/v1/models/{model_id}/predict", files=files,
                               params={"reject_unknown": str(reject_unknown).lower()})
        response.raise_for_status()
        labels.extend(result["label"] for result in response.json()["results"])
    return labels


def accuracy(client: httpx.Client, model_id: str, val: dict[str, list[Path]]) -> float:
    correct = total = 0
    for label, paths in val.items():
        predicted = predict(client, model_id, paths)
        correct += sum(p == label for p in predicted)
        total += len(predicted)
    return correct / total


def subsample(images: dict[str, list[Path]], k: int, seed: int) -> dict[str, list[Path]]:
    rng = random.Random(seed)
    return {label: rng.sample(paths, k) for label, paths in images.items()}


def learning_curve_check(client: httpx.Client, seeds: list[int]) -> list[dict[str, float]]:
    train_set, val = split(HYMENOPTERA, "train"), split(HYMENOPTERA, "val")
    rows = []
    for seed in seeds:
        small = subsample(train_set, 10, seed)
        model_id = train(client, f"curve 10 seed {seed}", small)
        curve = client.get(f"/api/v1/models/{model_id}/metrics").json()["learning_curve"]
        projected = next(p["accuracy"] for p in curve["projection"]
                         if p["images_per_class"] == 40)
        # the 40-image set contains the 10-image one: "add 30 more images per class"
        rest = {label: [p for p in paths if p not in small[label]]
                for label, paths in train_set.items()}
        more = {label: small[label] + random.Random(seed).sample(rest[label], 30)
                for label in train_set}
        measured = accuracy(client, train(client, f"curve 40 seed {seed}", more), val)
        rows.append({"seed": seed, "projected_40": round(projected, 4),
                     "measured_40": round(measured, 4),
                     "gap": round(abs(projected - measured), 4), "advice": curve["advice"]})
        print(rows[-1], flush=True)
    return rows


def unknown_check(client: httpx.Client) -> dict[str, float]:
    train_set, val = split(HYMENOPTERA, "train"), split(HYMENOPTERA, "val")
    model_id = train(client, "ants vs bees", train_set)
    own = [p for paths in val.values() for p in paths]
    flowers = [p for part in ("train", "val") for paths in split(FLOWERS, part).values()
               for p in paths]
    own_labels = predict(client, model_id, own, reject_unknown=True)
    flower_labels = predict(client, model_id, flowers, reject_unknown=True)
    result = {
        "own_val_unknown": round(own_labels.count("unknown") / len(own_labels), 4),
        "flowers_unknown": round(flower_labels.count("unknown") / len(flower_labels), 4),
        "own_val_accuracy_with_reject": round(sum(
            label == truth for truth, paths in val.items()
            for label in predict(client, model_id, paths, reject_unknown=True)) / len(own), 4),
    }
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--skip", default="", help="comma list of checks to skip: curve,unknown")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    skip = set(args.skip.split(","))
    report: dict[str, object] = {}
    with embedded_server() as server:
        client = httpx.Client(base_url=server.url,
                              headers={"Authorization": f"Bearer {server.key}"},
                              timeout=1200)
        if "unknown" not in skip:
            report["unknown"] = unknown_check(client)
        if "curve" not in skip:
            rows = learning_curve_check(client, seeds)
            report["learning_curve"] = {"runs": rows,
                                        "max_gap": max(r["gap"] for r in rows),
                                        "mean_gap": round(sum(r["gap"] for r in rows) / len(rows),
                                                          4)}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
