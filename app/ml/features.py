"""Batched feature extraction with a pretrained (plain or composite) backbone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from app.ml.backbones import components, feature_dim, get_spec, load_backbone, preprocess


def extract_features(
    backbone: str,
    images: Sequence[Image.Image],
    *,
    batch_size: int = 16,
    device: str = "cpu",
) -> np.ndarray:
    """Return (N, dim) float32 pooled features of RGB images; raise BackboneUnavailable.

    A composite backbone gives its components' features side by side, in component order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = components(backbone)
    if len(parts) > 1:
        out = np.empty((len(images), feature_dim(backbone)), dtype=np.float32)
        start = 0
        for part in parts:
            dim = get_spec(part).dim
            out[:, start : start + dim] = extract_features(
                part, images, batch_size=batch_size, device=device
            )
            start += dim
        return out
    spec = get_spec(backbone)
    out = np.empty((len(images), spec.dim), dtype=np.float32)
    if not images:
        return out
    model = load_backbone(backbone, device)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = torch.stack([preprocess(spec, image) for image in chunk]).to(device)
            out[start : start + len(chunk)] = model(batch).float().cpu().numpy()
    return out
