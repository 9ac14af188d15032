"""Does a webhook receiver change how long a training takes? It must not: deliveries are jobs of
their own, queued after the training's commit.

    .venv/bin/python bench/webhooks.py [--rounds 3] [--dataset customvision_trees]
        [--backbones mobilenet_v2]

One embedded `nanonet serve` (NANONET_URL_ALLOW_PRIVATE=true, so the receivers can sit on
loopback) and one model of the whole data set. Each round retrains it once per receiver, in
turn: none registered, one answering 200, one that never answers (each attempt waits out the
timeout), and a dead port (connection refused, retried). Only that condition's webhook is
enabled for its training. Per condition it prints the median seconds from POST /train to the
job's end (polled every 50 ms) and its ratio to the run without a webhook, measured side by
side; and how many training.succeeded deliveries reached the answering receiver.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.server import embedded_server  # noqa: E402
from tests.http_receiver import Receiver  # noqa: E402

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CONDITIONS = ("none", "answers 200", "hangs", "dead port")
# The answering receiver's deliveries run beside the hanging ones (NANONET_WEBHOOK_WORKERS
# threads), so they arrive within seconds of their training; this is only a bound.
DELIVERY_WAIT_S = 30


def delivered_to(receiver: Receiver) -> int:
    return sum(json.loads(request.body)["type"] == "training.succeeded"
               for request in receiver.requests)


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


def upload_dataset(client: httpx.Client, dataset: str) -> str:
    train = DATASETS / dataset / "train"
    categories = sorted(path.name for path in train.iterdir() if path.is_dir())
    model = client.post("/api/v1/models", json={"name": dataset, "categories": categories})
    model.raise_for_status()
    model_id = str(model.json()["id"])
    for category in categories:
        files = [("files", (path.name, path.read_bytes(), "image/jpeg"))
                 for path in sorted((train / category).glob("*.jpg"))]
        client.post(f"/api/v1/models/{model_id}/images", data={"category": category},
                    files=files).raise_for_status()
    return model_id


def timed_training(client: httpx.Client, model_id: str) -> float:
    started = time.monotonic()
    response = client.post(f"/api/v1/models/{model_id}/train")
    response.raise_for_status()
    job_id = response.json()["job_id"]
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            if job["status"] != "succeeded":
                raise SystemExit(f"training failed: {job['error']}")
            return time.monotonic() - started
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dataset", default="customvision_trees")
    parser.add_argument("--backbones", default="mobilenet_v2")
    args = parser.parse_args()

    env = {"NANONET_URL_ALLOW_PRIVATE": "true", "NANONET_BACKBONES": args.backbones,
           "NANONET_WEBHOOK_TIMEOUT": "60", "NANONET_WEBHOOK_RETRY_DELAYS": "[1,2,4]"}
    with (embedded_server(env) as server, Receiver() as answering,
          Receiver(default="hang") as hanging):
        client = httpx.Client(base_url=server.url, timeout=120,
                              headers={"Authorization": f"Bearer {server.key}"})
        model_id = upload_dataset(client, args.dataset)
        hooks: dict[str, str] = {}
        for condition, url in (("answers 200", answering.url()), ("hangs", hanging.url()),
                               ("dead port", dead_url())):
            made = client.post("/api/v1/webhooks", json={"url": url,
                                                          "events": ["training.succeeded"]})
            made.raise_for_status()
            hooks[condition] = made.json()["id"]
        timed_training(client, model_id)  # warm-up: features extracted, backbones loaded
        seconds: dict[str, list[float]] = {condition: [] for condition in CONDITIONS}
        for _ in range(args.rounds):
            for condition in CONDITIONS:
                for name, webhook_id in hooks.items():
                    client.patch(f"/api/v1/webhooks/{webhook_id}",
                                 json={"enabled": name == condition}).raise_for_status()
                seconds[condition].append(timed_training(client, model_id))
        deadline = time.monotonic() + DELIVERY_WAIT_S
        while delivered_to(answering) < args.rounds and time.monotonic() < deadline:
            time.sleep(0.1)
        delivered = delivered_to(answering)
        hanging.released.set()

    base = statistics.median(seconds["none"])
    print(f"{args.dataset}, backbones {args.backbones}, {args.rounds} rounds, conditions "
          "interleaved; seconds from POST /train to the job's end")
    print(f"{'receiver':<14}{'median s':>10}{'min s':>8}{'max s':>8}{'vs none':>9}")
    for condition in CONDITIONS:
        values = seconds[condition]
        median = statistics.median(values)
        print(f"{condition:<14}{median:>10.2f}{min(values):>8.2f}{max(values):>8.2f}"
              f"{median / base:>9.2f}")
    print(f"training.succeeded deliveries received by the answering receiver: {delivered} "
          f"(expected {args.rounds})")


if __name__ == "__main__":
    main()
