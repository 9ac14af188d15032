"""Training speed over HTTP: upload-start to ready, cold and after adding 10 images, beside
fine-tuning MobileNetV2 on the same images, in one run.

    .venv/bin/python bench/training.py [--dataset hymenoptera] [--finetune-epochs 5]

Starts `nanonet serve` (embedded default, default settings) on a fresh data dir. Cold: the
clock starts before the first upload of train/ and stops when the new version is ready, that
is active and answering predictions (uploads extract features in the background meanwhile, as
they do for a user); `*_job_s` is when the job ended, after it also measured the learning
curve.
Then 10 images of val/ (5 per class for two classes) are added and the model trained again:
only they need features. Val accuracy is scored on the val images not added, so the two runs
compare; the cold model is also scored on the whole val split (`cold_full_val_accuracy`: it
has seen none of it), the figure the issues' targets use. The fine-tuning
baseline (bench/fewshot/finetune.py, whole network, CPU) trains on the cold run's images.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench.hymenoptera_http import DATASETS, score, split, upload  # noqa: E402
from bench.server import embedded_server  # noqa: E402


def train(client: httpx.Client, model_id: str) -> tuple[dict[str, object], float, float]:
    """Train; return the model, and the seconds from the call until its new version was
    ready (active, answering predictions) and until the job ended."""
    started = time.perf_counter()
    job_id = client.post(f"/api/v1/models/{model_id}/train").json()["job_id"]
    ready_s = None
    while (job := client.get(f"/api/v1/jobs/{job_id}").json())["status"] not in (
            "succeeded", "failed"):
        number = (job.get("result") or {}).get("version")
        active = client.get(f"/api/v1/models/{model_id}").json().get("version") or {}
        if ready_s is None and number is not None and active.get("number") == number:
            ready_s = time.perf_counter() - started
        time.sleep(0.1)
    job_s = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise SystemExit(f"training failed: {job['error']}")
    return client.get(f"/api/v1/models/{model_id}").json(), ready_s or job_s, job_s


def val_accuracy(client: httpx.Client, model_id: str, by_label: dict[str, list[Path]],
                 batch: int) -> float:
    correct, total = score(client, model_id, by_label, batch)
    return correct / total


def run(url: str, key: str, dataset: Path, *, batch: int, added: int) -> dict[str, object]:
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600)
    train_set, val = split(dataset, "train"), split(dataset, "val")
    per_label = max(1, added // len(val))
    extra = {label: paths[:per_label] for label, paths in val.items()}
    held_out = {label: paths[per_label:] for label, paths in val.items()}
    model_id = client.post("/api/v1/models", json={"name": f"bench {dataset.name}",
                                                   "categories": list(train_set)}).json()["id"]
    started = time.perf_counter()
    upload(client, model_id, train_set, batch)
    uploaded = time.perf_counter() - started
    cold, ready_s, job_s = train(client, model_id)
    cold_s, cold_job_s = uploaded + ready_s, uploaded + job_s
    cold_val = val_accuracy(client, model_id, held_out, batch)
    cold_full_val = val_accuracy(client, model_id, val, batch)  # it saw none of val/ yet

    started = time.perf_counter()
    upload(client, model_id, extra, batch)
    added_upload = time.perf_counter() - started
    again, ready_s, job_s = train(client, model_id)
    again_s, again_job_s = added_upload + ready_s, added_upload + job_s
    return {
        "dataset": dataset.name, "train_images": sum(map(len, train_set.values())),
        "added_images": sum(map(len, extra.values())), "backbone": cold["backbone"],
        "cold_upload_s": round(uploaded, 2), "cold_ready_s": round(cold_s, 2),
        "cold_job_s": round(cold_job_s, 2),
        "cold_val_accuracy": round(cold_val, 4),
        "cold_full_val_accuracy": round(cold_full_val, 4),
        "cold_cv_accuracy": cold["metrics"]["accuracy"] if cold.get("metrics") else None,
        "added_ready_s": round(again_s, 2), "added_job_s": round(again_job_s, 2),
        "added_val_accuracy": round(val_accuracy(client, model_id, held_out, batch), 4),
        "added_backbone": again["backbone"],
    }


def finetune(dataset: Path, epochs: int) -> dict[str, object]:
    from bench.fewshot.data import Dataset
    from bench.fewshot.finetune import FineTune

    data = Dataset.load(dataset)
    result = FineTune(epochs).run(data, data.draw(None, 0), seed=0, tag="bench")
    return {"finetune_epochs": epochs, "finetune_train_s": round(result["train_s"], 2),
            "finetune_val_accuracy": round(float(result["val_accuracy"]), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hymenoptera")
    parser.add_argument("--batch", type=int, default=16, help="files per request")
    parser.add_argument("--added", type=int, default=10, help="images added before retraining")
    parser.add_argument("--finetune-epochs", type=int, default=5,
                        help="epochs of the fine-tuning baseline (0 skips it)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    dataset = DATASETS / args.dataset
    with embedded_server({}) as server:
        result = run(server.url, server.key, dataset, batch=args.batch, added=args.added)
    if args.finetune_epochs:
        result.update(finetune(dataset, args.finetune_epochs))
        result["finetune_vs_cold_time"] = round(
            float(result["finetune_train_s"]) / float(result["cold_ready_s"]), 2)
    for name, value in result.items():
        print(f"{name:>24}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
