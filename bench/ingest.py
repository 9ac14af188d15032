"""Ingest speed: decode + preprocess + backbone (the feature cache's pipeline) against the bare
engine on already preprocessed tensors, per backbone, in one run.

    .venv/bin/python bench/ingest.py [--dataset hymenoptera] [--images 160] [--rounds 3]

Both sides run the same engine (ONNX Runtime on a CPU, NANONET_ONNX_THREADS), the same images,
batch 16, eval view only. The pipeline side is FeatureCache.views_for on an empty cache
(stored bytes decoded through app.ml.imaging.decode_image, overlapped with inference); the bare
side is Runner.run on the same images preprocessed beforehand, with ONNX Runtime's threads
sleeping (the service's default) and spinning, the faster of the two kept as the reference.
Rounds alternate, medians kept.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

DATASETS = ROOT.parent / "shared" / "datasets"


def measure(backbone: str, blobs: list[bytes], *, rounds: int, batch: int,
            runner: object, spinning: object) -> dict[str, float]:
    from app.ml.backbones import get_network, preprocess_array
    from app.ml.cache import FeatureCache
    from app.ml.imaging import decode_image

    def load(data: bytes):  # type: ignore[no-untyped-def]
        return lambda: decode_image(data).image

    items = [(hashlib.sha256(b).hexdigest(), load(b)) for b in blobs]
    network = get_network(backbone)
    tensors = np.stack([preprocess_array(network, decode_image(b).image) for b in blobs])
    bare: dict[int, list[float]] = {id(runner): [], id(spinning): []}
    for engine in (runner, spinning):
        engine.run(backbone, tensors[:batch])  # type: ignore[attr-defined]  # warm the session
    piped = []
    for _ in range(rounds):
        for engine in (runner, spinning):
            started = time.perf_counter()
            for start in range(0, len(tensors), batch):
                engine.run(backbone, tensors[start:start + batch])  # type: ignore[attr-defined]
            bare[id(engine)].append(len(blobs) / (time.perf_counter() - started))
        with tempfile.TemporaryDirectory() as root:
            cache = FeatureCache(Path(root))
            started = time.perf_counter()
            cache.views_for([backbone], items, views=[0], batch_size=batch,
                            runner=runner)  # type: ignore[arg-type]
            piped.append(len(blobs) / (time.perf_counter() - started))
    # The reference is the better bare engine: spinning threads are the faster alone, the
    # service runs without them (they take the cores decoding needs), so the ratio is against
    # the best the engine can do, not against the setting the pipeline uses.
    return {"bare_img_s": max(statistics.median(b) for b in bare.values()),
            "bare_sleeping_img_s": statistics.median(bare[id(runner)]),
            "bare_spinning_img_s": statistics.median(bare[id(spinning)]),
            "pipeline_img_s": statistics.median(piped)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hymenoptera")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--backbones", default="mobilenet_v2,efficientnet_lite2")
    args = parser.parse_args()

    from app.config import Settings
    from app.ml.engines import make_runner

    settings = Settings()
    runner = make_runner("cpu", settings.engines_dir, engine=settings.engine,
                         threads=settings.onnx_threads, spin=settings.onnx_spin)
    spinning = make_runner("cpu", settings.engines_dir, engine=settings.engine,
                           threads=settings.onnx_threads, spin=True)
    paths = sorted((DATASETS / args.dataset).glob("*/*/*"))[: args.images]
    blobs = [p.read_bytes() for p in paths]
    print(f"{len(blobs)} images of {args.dataset}, engine {type(runner).__name__}, "
          f"batch {args.batch}, {args.rounds} rounds (medians)")
    print(f"{'backbone':<20} {'bare img/s':>11} {'pipeline img/s':>15} {'ratio':>6}")
    for backbone in args.backbones.split(","):
        figures = measure(backbone, blobs, rounds=args.rounds, batch=args.batch, runner=runner,
                          spinning=spinning)
        ratio = figures["pipeline_img_s"] / figures["bare_img_s"]
        print(f"{backbone:<20} {figures['bare_img_s']:>11.1f} {figures['pipeline_img_s']:>15.1f}"
              f" {ratio:>6.2f}")


if __name__ == "__main__":
    main()
