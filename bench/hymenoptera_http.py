"""The full flow over HTTP against a real embedded server: create, upload train/, train, predict.

    .venv/bin/python bench/hymenoptera_http.py [--dataset hymenoptera]
        [--url http://HOST:PORT --key KEY] [--backbones auto|all|LIST] [--json FILE]

Without --url it starts `nanonet serve` on a free loopback port with a fresh data dir and
stops it afterwards. Prints val accuracy, the cross-validated accuracy the service reported,
upload and training wall time, and prediction throughput; --json writes them to a file.
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

from bench.server import embedded_server  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"


def split(dataset: Path, name: str) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.is_file())
            for d in sorted((dataset / name).iterdir()) if d.is_dir()}


def chunks(items: list[Path], size: int) -> list[list[Path]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def upload(client: httpx.Client, model_id: str, by_label: dict[str, list[Path]],
           batch: int) -> None:
    """Upload each category's files, `batch` per request."""
    for label, paths in by_label.items():
        for part in chunks(paths, batch):
            files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in part]
            client.post(f"/api/v1/models/{model_id}/images", data={"category": label},
                        files=files).raise_for_status()


def score(client: httpx.Client, model_id: str, by_label: dict[str, list[Path]],
          batch: int) -> tuple[int, int]:
    """Return (correct, total) of /predict on each category's files."""
    correct = total = 0
    for label, paths in by_label.items():
        for part in chunks(paths, batch):
            files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in part]
            response = client.post(f"/api/v1/models/{model_id}/predict", files=files)
            response.raise_for_status()
            for result in response.json()["results"]:
                correct += result["label"] == label
                total += 1
    return correct, total


def run(url: str, key: str, dataset: Path, *, batch: int) -> dict[str, object]:
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600)
    train, val = split(dataset, "train"), split(dataset, "val")
    model = client.post("/api/v1/models", json={"name": f"bench {dataset.name}",
                                                "categories": list(train)})
    model.raise_for_status()
    model_id = model.json()["id"]

    started = time.perf_counter()
    upload(client, model_id, train, batch)
    upload_s = time.perf_counter() - started

    started = time.perf_counter()
    job_id = client.post(f"/api/v1/models/{model_id}/train").json()["job_id"]
    while (job := client.get(f"/api/v1/jobs/{job_id}").json())["status"] not in (
            "succeeded", "failed"):
        time.sleep(0.25)
    train_s = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise SystemExit(f"training failed: {job['error']}")
    trained = client.get(f"/api/v1/models/{model_id}").json()
    metrics = trained["metrics"]

    started = time.perf_counter()
    correct, total = score(client, model_id, val, batch)
    predict_s = time.perf_counter() - started
    return {
        "dataset": dataset.name, "backbone": trained["backbone"],
        "train_images": sum(map(len, train.values())), "val_images": total,
        "val_accuracy": round(correct / total, 4),
        "cv_accuracy_reported": round(metrics["accuracy"], 4) if metrics else None,
        "upload_s": round(upload_s, 2), "train_s": round(train_s, 2),
        "predict_s": round(predict_s, 2), "predict_images_per_s": round(total / predict_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hymenoptera")
    parser.add_argument("--url", help="use this running server instead of starting one")
    parser.add_argument("--key", help="API key for --url")
    parser.add_argument("--backbones", help="NANONET_BACKBONES for the started server")
    parser.add_argument("--batch", type=int, default=16, help="files per request")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    dataset = DATASETS / args.dataset
    if args.url:
        result = run(args.url, args.key or "", dataset, batch=args.batch)
    else:
        env = {"NANONET_BACKBONES": args.backbones} if args.backbones else {}
        with embedded_server(env) as server:
            result = run(server.url, server.key, dataset, batch=args.batch)
    for name, value in result.items():
        print(f"{name:>22}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
