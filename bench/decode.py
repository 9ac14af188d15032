"""Decode + preprocess of a phone-sized JPEG: JPEG draft down to DRAFT_SIDE (the recipe) against
draft down to the 1024 px cap only (the recipe before it), side by side in one run.

    .venv/bin/python bench/decode.py [--size 4032x3024] [--rounds 5] [--photos 8]

The shared photos are all under 500 px, where both recipes decode the same; this makes phone
photos from them (upscaled, saved at JPEG quality 90) and times decode_image +
preprocess_array for each backbone's input, rounds interleaved, medians kept.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

DATASET = ROOT.parent / "shared" / "datasets" / "hymenoptera"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4032x3024")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photos", type=int, default=8)
    args = parser.parse_args()

    from PIL import Image

    from app.ml.backbones import get_network, preprocess_array
    from app.ml.imaging import DRAFT_SIDE, decode_image

    width, height = map(int, args.size.split("x"))
    blobs = []
    for path in sorted((DATASET / "train").glob("*/*"))[: args.photos]:
        with Image.open(path) as photo:
            big = photo.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        big.save(out, "JPEG", quality=90)
        blobs.append(out.getvalue())
    networks = [get_network(name) for name in ("mobilenet_v2", "efficientnet_lite2")]
    recipes = {f"draft to {DRAFT_SIDE} px": DRAFT_SIDE, "draft to 1024 px (before)": 1024}
    times: dict[str, list[float]] = {name: [] for name in recipes}
    for _ in range(args.rounds):
        for name, side in recipes.items():
            started = time.perf_counter()
            for data in blobs:
                image = decode_image(data, draft_side=side).image
                for network in networks:
                    preprocess_array(network, image)
            times[name].append((time.perf_counter() - started) / len(blobs) * 1000)
    print(f"{len(blobs)} hymenoptera photos at {width}x{height}, JPEG q90, "
          f"decode + preprocess for MobileNetV2 and Lite2, median of {args.rounds} rounds")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, ms in medians.items():
        print(f"{name:<28} {ms:7.1f} ms per photo")
    old, new = medians["draft to 1024 px (before)"], medians[f"draft to {DRAFT_SIDE} px"]
    print(f"speed-up {old / new:.2f}x")


if __name__ == "__main__":
    main()
