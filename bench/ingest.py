"""Ingest speed: decode + preprocess + backbone (the feature cache's pipeline) against the bare
engine on already preprocessed tensors, per backbone, in one run.

    .venv/bin/python bench/ingest.py [--dataset hymenoptera] [--images 160] [--rounds 3]
        [--batch 16] [--bare-batches 1,4,16]

Both sides run the same engine (ONNX Runtime on a CPU, NANONET_ONNX_THREADS) on the same
images, eval view only. The pipeline side is FeatureCache.views_for on an empty cache (stored
bytes decoded through app.ml.imaging.decode_image, preprocessed, run, each vector written to
the cache), exactly as a training or an upload runs it. The bare side runs the same images,
preprocessed beforehand, every way this engine can: one pooled session whose threads spin
only during a run (the service's default) or always (ONNX Runtime's default), and
single-threaded sessions called from one thread per core (what the pipeline uses, in passes of
`engines.SINGLE_THREADED_BATCH` images), each given whole batches of every `--bare-batches`
size; the fastest of all is the reference. Rounds alternate the two sides; medians are kept.

The last row runs the default candidates together, as a training does: each image is decoded
once for all of them, and the bare reference is the sum of each backbone's best time.
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

DATASETS = ROOT.parent / "shared" / "datasets"


def bare_images_per_s(engine: Any, backbone: str, tensors: np.ndarray, *, batch: int,
                      streams: int) -> float:
    """Images/s of `streams` threads each running its share of the batches through `engine`."""
    starts = list(range(0, len(tensors), batch))

    def work(mine: list[int]) -> None:
        for start in mine:
            engine.run(backbone, tensors[start:start + batch])

    with ThreadPoolExecutor(max_workers=streams) as pool:
        started = time.perf_counter()
        list(pool.map(work, [starts[i::streams] for i in range(streams)]))
        return len(tensors) / (time.perf_counter() - started)


class WholeBatches:
    """The runner's single-threaded sessions, each batch run whole. The service's bulk path
    (`runner.single_threaded`) splits a batch into passes of `engines.SINGLE_THREADED_BATCH`
    images; the reference must not inherit that choice, or its batch sizes would all be one."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def run(self, backbone: str, batch: np.ndarray) -> np.ndarray:
        session = self.runner.single_session(backbone)
        if session is None:  # an export that failed its check: what the runner falls back to
            return self.runner.single_threaded.run(backbone, batch)
        return session.run(None, {"input": batch})[0]


def bare_ways(runner: Any, spinning: Any) -> dict[str, tuple[Any, int]]:
    """{name: (engine, threads calling it at once)}: every way the bare engine can run."""
    from app.ml.engines import bulk_runner

    _, streams = bulk_runner(runner)  # more than one only for ONNX Runtime
    ways = {"pooled": (runner, 1), "pooled always spinning": (spinning, 1)}
    if streams > 1:
        ways[f"{streams}x single-threaded"] = (WholeBatches(runner), streams)
    return ways


def measure(backbones: Sequence[str], blobs: list[bytes], *, rounds: int, batch: int,
            bare_batches: Sequence[int], runner: Any, spinning: Any,
            say: Callable[[str], None]) -> dict[str, Any]:
    """Median images/s of the pipeline extracting `backbones` together, and of every bare way
    per backbone; the reference is the sum of each backbone's best bare time per image."""
    from app.ml.backbones import get_network, preprocess_array
    from app.ml.cache import FeatureCache
    from app.ml.imaging import decode_image

    def load(data: bytes) -> Callable[[], Any]:
        return lambda: decode_image(data).image

    items = [(hashlib.sha256(b).hexdigest(), load(b)) for b in blobs]
    tensors = {name: np.stack([preprocess_array(get_network(name), decode_image(b).image)
                               for b in blobs]) for name in backbones}
    ways = bare_ways(runner, spinning)
    bare: dict[tuple[str, str, int], list[float]] = {}
    for name in backbones:
        for engine, _ in ways.values():  # warm every session
            engine.run(name, tensors[name][:batch])
    piped = []
    for _ in range(rounds):
        for name in backbones:
            for way, (engine, streams) in ways.items():
                for size in bare_batches:
                    bare.setdefault((name, way, size), []).append(bare_images_per_s(
                        engine, name, tensors[name], batch=size, streams=streams))
        with tempfile.TemporaryDirectory() as root:
            cache = FeatureCache(Path(root))
            started = time.perf_counter()
            cache.views_for(list(backbones), items, views=[0], batch_size=batch,
                            runner=runner)
            piped.append(len(blobs) / (time.perf_counter() - started))
    medians = {key: statistics.median(values) for key, values in bare.items()}
    best = {name: max((value, f"{way}, batch {size}")
                      for (n, way, size), value in medians.items() if n == name)
            for name in backbones}
    for name in backbones:
        say(f"  {name}: " + "; ".join(f"{way} b{size} {value:.1f}"
                                     for (n, way, size), value in medians.items() if n == name))
    reference = 1 / sum(1 / value for value, _ in best.values())
    return {"bare_img_s": reference, "best": {name: way for name, (_, way) in best.items()},
            "pipeline_img_s": statistics.median(piped)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hymenoptera")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16,
                        help="the pipeline's batch (NANONET_FEATURE_BATCH_SIZE)")
    parser.add_argument("--bare-batches", default="1,4,16",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--backbones", default="mobilenet_v2,efficientnet_lite2")
    parser.add_argument("--no-together", action="store_true",
                        help="skip the row of all backbones extracted together")
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
    backbones = args.backbones.split(",")
    rows = [[name] for name in backbones]
    if len(backbones) > 1 and not args.no_together:
        rows.append(backbones)
    print(f"{len(blobs)} images of {args.dataset}, engine {type(runner).__name__}, "
          f"pipeline batch {args.batch}, bare batches {args.bare_batches}, "
          f"{args.rounds} rounds (medians)")
    results = []
    for row in rows:
        results.append((row, measure(row, blobs, rounds=args.rounds, batch=args.batch,
                                     bare_batches=args.bare_batches, runner=runner,
                                     spinning=spinning, say=print)))
    print(f"\n{'backbones':<32} {'bare img/s':>11} {'pipeline img/s':>15} {'ratio':>6}"
          "   fastest bare way")
    for row, figures in results:
        ratio = figures["pipeline_img_s"] / figures["bare_img_s"]
        label = " + ".join(row) if len(row) > 1 else row[0]
        print(f"{label:<32} {figures['bare_img_s']:>11.1f} {figures['pipeline_img_s']:>15.1f}"
              f" {ratio:>6.2f}   {'; '.join(figures['best'].values())}", flush=True)


if __name__ == "__main__":
    main()
