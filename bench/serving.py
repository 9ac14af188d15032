"""Serving speed: HTTP /predict against the in-process limit, per backbone, in one run.

    .venv/bin/python bench/serving.py [--models mobilenet_v2,efficientnet_lite2]
        [--duration 10] [--clients 1,4,16] [--train-photos 30] [--data-dir DIR]
        [--window-ms 2] [--max-batch 32] [--slots N] [--onnx-threads N] [--json FILE]

1. Trains one model per backbone over HTTP on hymenoptera train/ (`--train-photos` per class,
   no augmentation: serving speed does not depend on it), a `nanonet serve` forced to that
   backbone (NANONET_BACKBONES). With `--data-dir`, models trained there before are reused.
2. In this process, no HTTP, on the same head files and ONNX exports: the single-image time
   (decode + preprocess + backbone + head, one hymenoptera val photo at a time, median) and the
   throughput with batches of 1, 8 and `--max-batch` (decoded one after another, then one
   call); the best of the three is the in-process limit, measured with ONNX Runtime's threads
   spinning and not, and the better of the two kept for each figure.
3. One fresh `nanonet serve` serving every model: single-image /predict latency (p50, p99) and
   throughput at each `--clients` count (each client its own keep-alive connection, one photo
   per request, back to back, for `--duration` s after a warm-up; bench.loadgen drives them
   all from one thread with requests encoded beforehand).

Prints one table per model and the ratios: HTTP throughput / in-process throughput, and HTTP
p50 at one client / in-process single-image time. The in-process figures are measured while
the server is idle, the HTTP ones while this process is idle, so each has the cores to itself.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench.server import Server, embedded_server  # noqa: E402

DATASET = ROOT.parent / "shared" / "datasets" / "hymenoptera"
KEY = "serving-bench-" + "k" * 32  # the bootstrap key of every server of a run
MODELS_FILE = "serving-models.json"  # {backbone: model_id} in the data dir, for reuse


def photos(split: str, per_class: int | None = None) -> dict[str, list[Path]]:
    folder = DATASET / split
    return {d.name: sorted(p for p in d.iterdir() if p.is_file())[:per_class]
            for d in sorted(folder.iterdir()) if d.is_dir()}


def val_photos() -> list[bytes]:
    """Every val photo's bytes, ants and bees interleaved (so consecutive requests differ)."""
    by_class = list(photos("val").values())
    mixed = [p for group in zip(*by_class, strict=False) for p in group]
    return [p.read_bytes() for p in mixed]


def engines_dir() -> str:
    """The ONNX exports: the tests' folder unless told otherwise (exporting takes a while)."""
    return os.environ.get("NANONET_ENGINE_CACHE_DIR",
                          str(Path(tempfile.gettempdir()) / "nanonet-test-engines"))


def server_env(args: argparse.Namespace, backbone: str | None = None) -> dict[str, str]:
    env = {"NANONET_AUGMENT_VIEWS": "0", "NANONET_ENGINE_CACHE_DIR": engines_dir(),
           "NANONET_PREDICTIONS_PER_MINUTE": "100000000", "NANONET_UPLOADS_PER_MINUTE": "100000",
           "NANONET_MIN_FREE_DISK_BYTES": "0", "NANONET_EXTRACT_ON_UPLOAD": "false",
           "NANONET_MICROBATCH_WINDOW_MS": str(args.window_ms),
           "NANONET_MICROBATCH_MAX_SIZE": str(args.max_batch)}
    if backbone:
        env["NANONET_BACKBONES"] = backbone
    if args.slots:
        env["NANONET_INFERENCE_SLOTS"] = str(args.slots)
    if args.onnx_threads:
        env["NANONET_ONNX_THREADS"] = str(args.onnx_threads)
    return env


def client_of(server: Server, timeout: float = 600) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=timeout,
                        headers={"Authorization": f"Bearer {server.key}"})


def train(server: Server, backbone: str, per_class: int) -> str:
    """Create a model, upload `per_class` train photos per class, train it; return its id."""
    train_set = photos("train", per_class)
    with client_of(server) as client:
        created = client.post("/api/v1/models", json={"name": f"serving {backbone}",
                                                      "categories": list(train_set)})
        created.raise_for_status()
        model_id = created.json()["id"]
        for label, paths in train_set.items():
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
            client.post(f"/api/v1/models/{model_id}/images", data={"category": label},
                        files=files).raise_for_status()
        job_id = client.post(f"/api/v1/models/{model_id}/train").json()["job_id"]
        deadline = time.monotonic() + 1200
        while (job := client.get(f"/api/v1/jobs/{job_id}").json())["status"] not in (
                "succeeded", "failed"):
            if time.monotonic() > deadline:
                raise SystemExit(f"training did not end in 1200 s: {job}")
            time.sleep(0.25)
        if job["status"] != "succeeded":
            raise SystemExit(f"training failed: {job['error']}")
        trained = client.get(f"/api/v1/models/{model_id}").json()
    if trained["backbone"] != backbone:
        raise SystemExit(f"asked for {backbone}, the model got {trained['backbone']}")
    return model_id


def trained_models(args: argparse.Namespace, data_dir: Path,
                   say: Callable[[str], None]) -> dict[str, str]:
    """{backbone: model_id}, training those the data dir does not have yet."""
    record = data_dir / MODELS_FILE
    models: dict[str, str] = json.loads(record.read_text()) if record.is_file() else {}
    for backbone in args.models:
        if backbone in models:
            continue
        say(f"training a {backbone} model on {args.train_photos} photos per class...")
        with embedded_server(server_env(args, backbone), data_dir=data_dir, key=KEY) as server:
            models[backbone] = train(server, backbone, args.train_photos)
        record.write_text(json.dumps(models, indent=2) + "\n")
    return {backbone: models[backbone] for backbone in args.models}


def in_process(data_dir: Path, model_id: str, images: list[bytes], *, duration: float,
               batch: int, threads: int | None) -> dict[str, Any]:
    """The in-process limit: `in_process_once` with ONNX Runtime's threads spinning and
    sleeping (NANONET_ONNX_SPIN), the better of the two for each figure. Spinning is the
    faster alone (a wake-up less per operator); the server runs without it, where it takes
    the cores decoding and HTTP need, so the limit holds it to the best either can do."""
    runs = {spin: in_process_once(data_dir, model_id, images, duration=duration / 2,
                                  batch=batch, threads=threads, spin=spin)
            for spin in (True, False)}
    single = min(runs.values(), key=lambda r: r["single_p50_ms"])
    best = max(runs.values(), key=lambda r: r["images_per_s"])
    return {"single_p50_ms": single["single_p50_ms"], "single_p99_ms": single["single_p99_ms"],
            "batch": best["batch"], "images_per_s": best["images_per_s"],
            "images_per_s_by_batch": best["images_per_s_by_batch"],
            "by_spin": {("spin" if spin else "no_spin"): r for spin, r in runs.items()}}


def in_process_once(data_dir: Path, model_id: str, images: list[bytes], *, duration: float,
                    batch: int, threads: int | None, spin: bool) -> dict[str, Any]:
    """Decode + preprocess + backbone + head without HTTP: single-image median and p99 (ms),
    and images/s in batches of 1, 8 and `batch` (decoded one after another, then one call);
    the best of these is the limit (on a small CPU big batches are slower per image)."""
    from app.ml.engines import OnnxRunner
    from app.ml.imaging import decode_image
    from app.ml.predict import classify
    from app.runtime import HeadCache

    (artifact,) = sorted((data_dir / "models" / model_id).glob("*.pt"))
    head, meta = HeadCache(1 << 30).get(artifact)
    meta = {**meta, "unknown": None}  # what a predict without reject_unknown runs
    runner = OnnxRunner(Path(engines_dir()), threads=threads, spin=spin)

    def label(chunk: list[bytes]) -> None:
        decoded = [decode_image(data).image for data in chunk]
        classify(head, meta, decoded, batch_size=max(len(chunk), 1), runner=runner)

    for data in images[:3]:  # warm-up: the session, the caches
        label([data])
    times: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < duration / 2 or len(times) < 5:
        data = images[len(times) % len(images)]
        began = time.perf_counter()
        label([data])
        times.append(time.perf_counter() - began)
    by_batch: dict[int, float] = {}
    sizes = sorted({1, min(8, batch), batch})
    for size in sizes:
        done, index = 0, 0
        started = time.perf_counter()
        while time.perf_counter() - started < duration / 2 / len(sizes) or done < 2 * size:
            chunk = [images[(index + i) % len(images)] for i in range(size)]
            index += size
            label(chunk)
            done += size
        by_batch[size] = round(done / (time.perf_counter() - started), 1)
    best = max(by_batch, key=by_batch.__getitem__)
    return {"single_p50_ms": round(statistics.median(times) * 1000, 1),
            "single_p99_ms": round(percentile(times, 99) * 1000, 1),
            "batch": best, "images_per_s": by_batch[best],
            "images_per_s_by_batch": by_batch}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def http_load(server: Server, model_id: str, images: list[bytes], *, clients: int,
              duration: float) -> dict[str, float]:
    """`clients` keep-alive connections posting one photo per request back to back for
    `duration` s (bench.loadgen: one thread, requests encoded beforehand, so the client takes
    little of the CPU the server is measured on)."""
    from bench.loadgen import encode_post, multipart_file, run_load

    requests = []
    for data in images:
        body, kind = multipart_file("files", "photo.jpg", data, "image/jpeg")
        requests.append(encode_post(server.url, f"/api/v1/models/{model_id}/predict",
                                    headers={"Authorization": f"Bearer {server.key}"},
                                    body=body, content_type=kind))
    result = run_load(server.url, requests, clients=clients, duration=duration)
    if not result.latencies:
        raise SystemExit(f"no predict succeeded at {clients} clients: {result.failures[:3]}")
    return {"clients": clients, "requests": len(result.latencies),
            "errors": len(result.failures),
            "p50_ms": round(statistics.median(result.latencies) * 1000, 1),
            "p99_ms": round(percentile(result.latencies, 99) * 1000, 1),
            "images_per_s": round(len(result.latencies) / result.elapsed, 1)}


def run(args: argparse.Namespace, data_dir: Path,
        say: Callable[[str], None] = print) -> dict[str, Any]:
    data_dir.mkdir(parents=True, exist_ok=True)
    models = trained_models(args, data_dir, say)
    images = val_photos()
    report: dict[str, Any] = {"settings": {
        "window_ms": args.window_ms, "max_batch": args.max_batch, "slots": args.slots,
        "onnx_threads": args.onnx_threads, "cpus": os.cpu_count(), "duration_s": args.duration},
        "models": {}}
    for backbone, model_id in models.items():
        say(f"{backbone}: in-process limit...")
        report["models"][backbone] = {"in_process": in_process(
            data_dir, model_id, images, duration=args.duration, batch=args.max_batch,
            threads=args.onnx_threads), "http": []}
    with embedded_server(server_env(args), data_dir=data_dir, key=KEY) as server:
        for backbone, model_id in models.items():
            with client_of(server) as client:  # warm-up: session, head, threads
                for data in images[:4]:
                    client.post(f"/api/v1/models/{model_id}/predict",
                                files=[("files", ("w.jpg", data, "image/jpeg"))]
                                ).raise_for_status()
            figures = report["models"][backbone]
            for clients in args.clients:
                say(f"{backbone}: HTTP at {clients} clients...")
                figures["http"].append(http_load(server, model_id, images, clients=clients,
                                                 duration=args.duration))
    for figures in report["models"].values():
        limit = figures["in_process"]
        single = next((h for h in figures["http"] if h["clients"] == 1), figures["http"][0])
        figures["ratios"] = {
            "p50_over_in_process_single": round(single["p50_ms"] / limit["single_p50_ms"], 2),
            **{f"throughput_{h['clients']}_over_in_process":
               round(h["images_per_s"] / limit["images_per_s"], 2) for h in figures["http"]}}
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"settings: {report['settings']}")
    for backbone, figures in report["models"].items():
        limit = figures["in_process"]
        print(f"\n{backbone}: in-process single {limit['single_p50_ms']} ms (p99 "
              f"{limit['single_p99_ms']}); img/s by batch size {limit['images_per_s_by_batch']}"
              f", limit {limit['images_per_s']}")
        print(f"{'clients':>8} {'p50 ms':>8} {'p99 ms':>8} {'img/s':>8} {'of limit':>9} "
              f"{'errors':>7}")
        for h in figures["http"]:
            print(f"{h['clients']:>8} {h['p50_ms']:>8} {h['p99_ms']:>8} {h['images_per_s']:>8} "
                  f"{h['images_per_s'] / limit['images_per_s']:>9.2f} {h['errors']:>7}")
        print(f"p50 at 1 client / in-process single: "
              f"{figures['ratios']['p50_over_in_process_single']}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite2",
                        type=lambda s: [x.strip() for x in s.split(",") if x.strip()])
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds per measurement")
    parser.add_argument("--clients", default=[1, 4, 16],
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--train-photos", type=int, default=30, help="per class")
    parser.add_argument("--data-dir", type=Path,
                        help="keep the trained models here and reuse them next time")
    parser.add_argument("--window-ms", type=float, default=2.0,
                        help="NANONET_MICROBATCH_WINDOW_MS")
    parser.add_argument("--max-batch", type=int, default=32, help="NANONET_MICROBATCH_MAX_SIZE")
    parser.add_argument("--slots", type=int, help="NANONET_INFERENCE_SLOTS (default: its own)")
    parser.add_argument("--onnx-threads", type=int, help="NANONET_ONNX_THREADS")
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    if args.data_dir:
        report = run(args, args.data_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="nanonet-serving-") as directory:
            report = run(args, Path(directory))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
