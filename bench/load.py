"""A bounded load test with a loss audit, against one real `nanonet serve` on loopback.

    .venv/bin/python bench/load.py [--clients 8] [--duration 60] [--grace 240]

`--clients` threads, each with its own connection, for `--duration` seconds: uploads of real
photos (customvision_trees and flower_photos_small, 1 to 3 per request, about a third of them
bytes already sent, so duplicates race each other), trainings, predictions, job polls and image
listings, spread over four models of one account. Then, once every job has ended (at most
`--grace` seconds), the audit:

- every image the server answered `accepted` is listed by GET .../images exactly once, with its
  sha256, and no model holds one photo twice in one category;
- the blob store holds exactly the distinct sha256 of the rows: each once, with those bytes; no
  file no row refers to, no temporary file left;
- every job the server handed out ended (`succeeded` or `failed`), none `queued` or `running`;
- no 5xx and no request left unanswered. 429s (rate limits) are counted, not errors.

It prints the counts per operation and status, the throughput and the p50/p99 latency per
operation, and exits 1 when the audit fails.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.server import Server, embedded_server  # noqa: E402

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TREES = DATASETS / "customvision_trees" / "train"
FLOWERS = DATASETS / "flower_photos_small" / "train"
MODELS = {  # name: {category: photo folder}
    "trees": {name: TREES / name for name in ("hemlock", "japanese_cherry")},
    "flowers": {name: FLOWERS / name for name in
                ("daisy", "dandelion", "roses", "sunflowers", "tulips")},
    "warm flowers": {name: FLOWERS / name for name in ("roses", "sunflowers", "tulips")},
    "round flowers": {name: FLOWERS / name for name in ("daisy", "dandelion", "sunflowers")},
}
# operation: weight. Uploads dominate; trainings are rare (each one queues a real job).
MIX = {"upload": 10, "predict": 6, "poll_job": 3, "list_images": 2, "train": 1}
SERVER_ENV = {
    "NANONET_BACKBONES": "mobilenet_v2",
    "NANONET_AUGMENT_VIEWS": "0",
    # generous: this measures loss and errors under load, not the limiter
    "NANONET_PREDICTIONS_PER_MINUTE": "100000",
    "NANONET_UPLOADS_PER_MINUTE": "100000",
    "NANONET_MIN_FREE_DISK_BYTES": "0",
}
REQUEST_TIMEOUT_S = 120
SEED_PHOTOS = 4  # per category, trained on before the load starts
ENDED = ("succeeded", "failed")


@dataclass
class Model:
    id: str
    photos: dict[str, list[Path]]
    sent: list[tuple[str, Path]] = field(default_factory=list)  # (category, photo) sent once


@dataclass
class Tally:
    """What every client saw; one lock for all of it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    unanswered: Counter[str] = field(default_factory=Counter)
    accepted: list[tuple[str, int, str, str]] = field(default_factory=list)  # model, id, sha, cat
    duplicates: int = 0
    job_ids: set[str] = field(default_factory=set)
    server_errors: list[str] = field(default_factory=list)
    rows: int = 0  # found by the audit
    blobs: int = 0

    def record(self, operation: str, seconds: float, response: httpx.Response) -> None:
        with self.lock:
            self.latencies[operation].append(seconds)
            self.statuses[operation][_status(response)] += 1
            if response.status_code >= 500:
                self.server_errors.append(
                    f"{operation} {response.status_code}: {response.text[:300]}")


def _status(response: httpx.Response) -> str:
    """The status code, and for an error the error's code: `409 model_not_ready`."""
    if response.status_code < 400:
        return str(response.status_code)
    try:
        return f"{response.status_code} {response.json()['error']['code']}"
    except (ValueError, KeyError, TypeError):
        return str(response.status_code)


@dataclass
class Result:
    ok: bool
    problems: list[str]
    requests: int
    seconds: float
    accepted: int
    server_errors: int
    jobs: Counter[str]


class Client(threading.Thread):
    def __init__(self, server: Server, models: list[Model], tally: Tally, deadline: float,
                 seed: int) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S,
                                 headers={"Authorization": f"Bearer {server.key}"})
        self.models, self.tally, self.deadline = models, tally, deadline
        self.random = random.Random(seed)
        self.crash: str | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # the audit reports it; a thread's traceback is easy to miss
            self.crash = f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        operations, weights = zip(*MIX.items(), strict=True)
        with self.http:
            while time.monotonic() < self.deadline:
                operation = self.random.choices(operations, weights)[0]
                model = self.random.choice(self.models)
                try:
                    getattr(self, operation)(model)
                except httpx.TransportError as exc:
                    with self.tally.lock:
                        self.tally.unanswered[f"{operation}: {type(exc).__name__}"] += 1

    def _send(self, operation: str, method: str, url: str, **kwargs: object) -> httpx.Response:
        started = time.perf_counter()
        response = self.http.request(method, url, **kwargs)  # type: ignore[arg-type]
        self.tally.record(operation, time.perf_counter() - started, response)
        return response

    def upload(self, model: Model) -> None:
        with self.tally.lock:
            resend = model.sent and self.random.random() < 0.35
            if resend:
                category, first = self.random.choice(model.sent)
                chosen = [first]
            else:
                category = self.random.choice(sorted(model.photos))
                chosen = []
        pool = model.photos[category]
        chosen += self.random.sample(pool, k=min(len(pool), self.random.randint(1, 3)))
        files = [("files", (path.name, path.read_bytes(), "image/jpeg")) for path in chosen]
        response = self._send("upload", "POST", f"/api/v1/models/{model.id}/images",
                              data={"category": category}, files=files)
        if response.status_code != 200:
            return
        with self.tally.lock:
            for path, result in zip(chosen, response.json()["results"], strict=True):
                if result["status"] == "accepted":
                    self.tally.accepted.append(
                        (model.id, result["image_id"], result["sha256"], category))
                    model.sent.append((category, path))
                elif result["status"] == "duplicate":
                    self.tally.duplicates += 1

    def train(self, model: Model) -> None:
        response = self._send("train", "POST", f"/api/v1/models/{model.id}/train")
        if response.status_code == 202:
            with self.tally.lock:
                self.tally.job_ids.add(response.json()["job_id"])

    def poll_job(self, model: Model) -> None:
        with self.tally.lock:
            jobs = sorted(self.tally.job_ids)
        if not jobs:
            return
        self._send("poll_job", "GET", f"/api/v1/jobs/{self.random.choice(jobs)}")

    def predict(self, model: Model) -> None:
        category = self.random.choice(sorted(model.photos))
        photos = self.random.sample(model.photos[category], k=self.random.randint(1, 2))
        self._send("predict", "POST", f"/api/v1/models/{model.id}/predict",
                   files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos])

    def list_images(self, model: Model) -> None:
        self._send("list_images", "GET", f"/api/v1/models/{model.id}/images",
                   params={"per_page": 50, "page": self.random.randint(1, 3)})


def run_load(server: Server, *, clients: int, duration: float, grace: float,
             seed: int = 0) -> Result:
    """Drive `server` with `clients` threads for `duration` seconds, then audit what it kept."""
    tally = Tally()
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S,
                      headers={"Authorization": f"Bearer {server.key}"}) as http:
        models = []
        for name, folders in MODELS.items():
            created = http.post("/api/v1/models", json={"name": name, "categories": list(folders)})
            created.raise_for_status()
            models.append(Model(created.json()["id"],
                                {c: sorted(d.glob("*.jpg")) for c, d in folders.items()}))
        _train_first_versions(http, models, tally)
        started = time.monotonic()
        threads = [Client(server, models, tally, started + duration, seed * 1000 + n)
                   for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(duration + REQUEST_TIMEOUT_S + 30)
        seconds = time.monotonic() - started
        problems = [f"client {n} still running" for n, t in enumerate(threads) if t.is_alive()]
        problems += [f"client {n} crashed: {t.crash}" for n, t in enumerate(threads) if t.crash]
        # a last training per model, so every model's final images were trained on once
        for model in models:
            response = http.post(f"/api/v1/models/{model.id}/train")
            if response.status_code == 202:
                tally.job_ids.add(response.json()["job_id"])
        jobs = _wait_for_jobs(http, tally.job_ids, grace)
        problems += _audit(http, server, models, tally, jobs)
    result = Result(ok=not problems, problems=problems,
                    requests=sum(len(v) for v in tally.latencies.values()), seconds=seconds,
                    accepted=len(tally.accepted), server_errors=len(tally.server_errors),
                    jobs=Counter(job["status"] for job in jobs.values()))
    _report(tally, result, clients=clients, duration=duration)
    return result


def _train_first_versions(http: httpx.Client, models: list[Model], tally: Tally) -> None:
    """Before the load: SEED_PHOTOS per category and a first training, so predictions meet a
    ready version from the start."""
    for model in models:
        for category, photos in model.photos.items():
            response = http.post(f"/api/v1/models/{model.id}/images", data={"category": category},
                                 files=[("files", (p.name, p.read_bytes(), "image/jpeg"))
                                        for p in photos[:SEED_PHOTOS]])
            response.raise_for_status()
            for path, result in zip(photos, response.json()["results"], strict=False):
                tally.accepted.append((model.id, result["image_id"], result["sha256"], category))
                model.sent.append((category, path))
        tally.job_ids.add(http.post(f"/api/v1/models/{model.id}/train").json()["job_id"])
    jobs = _wait_for_jobs(http, tally.job_ids, grace=REQUEST_TIMEOUT_S * 2)
    failed = {job_id: job for job_id, job in jobs.items() if job["status"] != "succeeded"}
    if failed:
        raise RuntimeError(f"the first trainings did not succeed: {failed}")


def _wait_for_jobs(http: httpx.Client, job_ids: set[str], grace: float) -> dict[str, dict]:
    deadline = time.monotonic() + grace
    jobs: dict[str, dict] = {}
    while True:
        for job_id in sorted(job_ids):
            if jobs.get(job_id, {}).get("status") not in ENDED:
                jobs[job_id] = http.get(f"/api/v1/jobs/{job_id}").json()
        if all(job["status"] in ENDED for job in jobs.values()) or time.monotonic() > deadline:
            return jobs
        time.sleep(1)


def _audit(http: httpx.Client, server: Server, models: list[Model], tally: Tally,
           jobs: dict[str, dict]) -> list[str]:
    problems = [f"server error: {line}" for line in tally.server_errors[:20]]
    problems += [f"unanswered: {what} x{n}" for what, n in tally.unanswered.items()]
    problems += [f"job {job_id} still {job['status']} after the grace period"
                 for job_id, job in jobs.items() if job["status"] not in ENDED]

    rows: list[dict] = []
    for model in models:
        page = 1
        while True:
            listed = http.get(f"/api/v1/models/{model.id}/images",
                              params={"page": page, "per_page": 200}).json()
            rows += [{**item, "model_id": model.id} for item in listed["items"]]
            if page * 200 >= listed["total"]:
                break
            page += 1
    by_id = Counter((row["model_id"], row["id"]) for row in rows)
    problems += [f"image {key} listed {n} times" for key, n in by_id.items() if n > 1]
    same_photo = Counter((row["model_id"], row["category"], row["sha256"]) for row in rows)
    problems += [f"one photo stored {n} times in one category: {key}"
                 for key, n in same_photo.items() if n > 1]
    listed_sha = {(row["model_id"], row["id"]): row["sha256"] for row in rows}
    accepted_ids = Counter((model_id, image_id) for model_id, image_id, _, _ in tally.accepted)
    problems += [f"image {key} answered accepted {n} times" for key, n in accepted_ids.items()
                 if n > 1]
    for model_id, image_id, sha, _ in tally.accepted:
        if listed_sha.get((model_id, image_id)) != sha:
            problems.append(f"accepted image {image_id} of {model_id} ({sha[:12]}) not listed")
    unaccounted = set(listed_sha) - set(accepted_ids)
    if unaccounted and not tally.unanswered:
        problems.append(f"{len(unaccounted)} rows no answer accepted, e.g. {min(unaccounted)}")

    store = server.data_dir / "images"
    blobs = [path for path in store.rglob("*") if path.is_file()]
    leftovers = [path.name for path in blobs if path.name.startswith(".")]
    problems += [f"temporary file left in the blob store: {name}" for name in leftovers]
    on_disk = Counter(path.name for path in blobs if not path.name.startswith("."))
    problems += [f"blob {digest[:12]} on disk {n} times" for digest, n in on_disk.items()
                 if n > 1]
    referenced = {row["sha256"] for row in rows}
    problems += [f"blob {digest[:12]} of a row missing" for digest in referenced - set(on_disk)]
    problems += [f"blob {digest[:12]} no row refers to" for digest in set(on_disk) - referenced]
    for row in rows:
        path = store / row["sha256"][:2] / row["sha256"]
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != row["sha256"]:
            problems.append(f"blob {row['sha256'][:12]} does not hold its bytes")
    tally.rows, tally.blobs = len(rows), len(on_disk)
    return problems


def _percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _report(tally: Tally, result: Result, *, clients: int, duration: float) -> None:
    print(f"load: {clients} clients, {duration:g} s; {result.requests} requests in "
          f"{result.seconds:.1f} s = {result.requests / result.seconds:.1f} requests/s")
    print(f"{'operation':<12} {'requests':>8} {'per s':>6} {'p50 ms':>7} {'p99 ms':>8}  statuses")
    for operation in MIX:
        values = tally.latencies.get(operation, [])
        if not values:
            continue
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(
            tally.statuses[operation].items()))
        print(f"{operation:<12} {len(values):>8} {len(values) / result.seconds:>6.1f} "
              f"{_percentile(values, 50) * 1000:>7.0f} {_percentile(values, 99) * 1000:>8.0f}  "
              f"{statuses}")
    print(f"images: {result.accepted} accepted, {tally.duplicates} answered duplicate; "
          f"{tally.rows} rows listed, {tally.blobs} blobs on disk")
    limited = sum(n for seen in tally.statuses.values() for status, n in seen.items()
                  if status.startswith("429"))
    print(f"jobs: {dict(result.jobs)}; 5xx: {result.server_errors}; 429: {limited}; "
          f"unanswered: {sum(tally.unanswered.values())}")
    print("audit: " + ("passed" if result.ok else "FAILED\n  " + "\n  ".join(result.problems)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60, help="seconds of load")
    parser.add_argument("--grace", type=float, default=240,
                        help="seconds the jobs have to end after the load")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with embedded_server(SERVER_ENV) as server:
        result = run_load(server, clients=args.clients, duration=args.duration,
                          grace=args.grace, seed=args.seed)
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
