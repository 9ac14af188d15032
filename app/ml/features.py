"""Batched feature extraction with pretrained (plain or composite) backbones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from app.ml.backbones import (
    component_weights,
    components,
    get_network,
    preprocess_array,
)
from app.ml.engines import Runner, TorchRunner


def extract_features(
    backbone: str,
    images: Sequence[Image.Image],
    *,
    batch_size: int = 16,
    runner: Runner | None = None,
) -> np.ndarray:
    """Return (N, dim) float32 pooled features of RGB images; raise BackboneUnavailable.

    `runner` runs the network (app.ml.engines; default: torch on the CPU). A composite
    backbone gives its components' features side by side (see assemble).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(components(backbone)) > 1:
        return extract_features_many([backbone], images, batch_size=batch_size, runner=runner)[
            backbone
        ]
    network = get_network(backbone)
    out = np.empty((len(images), network.dim), dtype=np.float32)
    if not images:
        return out
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = np.empty((len(chunk), 3, network.input_size, network.input_size),
                         dtype=np.float32)
        for row, image in zip(batch, chunk, strict=True):
            preprocess_array(network, image, out=row)
        out[start : start + len(chunk)] = run_network(backbone, batch, runner)
    return out


def run_network(backbone: str, batch: np.ndarray, runner: Runner | None = None) -> np.ndarray:
    """Return (n, dim) features of a preprocessed (n, 3, S, S) batch of a plain backbone;
    `runner` default: torch on the CPU."""
    return (runner or _DEFAULT_RUNNER).run(backbone, batch)


_DEFAULT_RUNNER = TorchRunner("cpu")


def extract_features_many(
    backbones: Sequence[str],
    images: Sequence[Image.Image],
    *,
    batch_size: int = 16,
    runner: Runner | None = None,
) -> dict[str, np.ndarray]:
    """Return {backbone: (N, dim) float32}, running each plain component network once."""
    plain = list(dict.fromkeys(part for name in backbones for part in components(name)))
    blocks = {
        part: extract_features(part, images, batch_size=batch_size, runner=runner)
        for part in plain
    }
    return {name: assemble(name, blocks) for name in backbones}


def assemble(name: str, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
    """Return `name`'s features from its components' (..., dim) blocks, joined on the last axis.

    Each block is multiplied by its backbones.component_weights factor (1.0 for a plain one).
    """
    parts = components(name)
    if len(parts) == 1:
        return blocks[parts[0]]
    weights = component_weights(name)
    scaled = [
        blocks[part] * np.float32(weight)
        for part, weight in zip(parts, weights, strict=True)
    ]
    return np.concatenate(scaled, axis=-1)
