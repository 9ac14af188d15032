"""The CUDA path of TorchRunner (channels-last, pinned non-blocking copies), against torch on
the CPU; and whether float16 may be used: it stays off unless these figures say it agrees.

Skipped without a CUDA device. `bench/gpu_check.sh` runs it on a GPU host and prints the
figures (`-s`): max abs difference of fp32 features, fp16 cosines and label agreement.
"""

# The figures are the point of a GPU run: printed, shown with -s.
# ruff: noqa: T201

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from app.ml.backbones import available_backbones, load_backbone
from app.ml.engines import TorchRunner
from app.ml.features import extract_features
from app.ml.heads import fit_logistic
from tests.ml.conftest import DATASETS, dataset_rows, image_loader

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FP32_TOLERANCE = 1e-3  # max abs difference of CUDA fp32 (TF32 off) features from the CPU's
FP16_MIN_COSINE = 0.999
BACKBONES = [name for name in ("mobilenet_v2", "efficientnet_lite0")
             if name in available_backbones()]


@pytest.fixture(autouse=True)
def _exact_fp32() -> Iterator[None]:
    """TF32 would round fp32 convolutions to 10-bit mantissas: compare true fp32."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _photos(split: str, per_class: int | None = None
            ) -> tuple[list[Image.Image], np.ndarray]:
    rows = dataset_rows("hymenoptera", split)
    names = sorted({row["label"] for row in rows})
    if per_class is not None:
        rows = [row for name in names
                for row in [r for r in rows if r["label"] == name][:per_class]]
    images = [image_loader(DATASETS / "hymenoptera" / row["path"])() for row in rows]
    return images, np.array([names.index(row["label"]) for row in rows])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fp32_channels_last_features_match_the_cpu(backbone: str) -> None:
    images, _ = _photos("val", per_class=16)
    cpu = extract_features(backbone, images, runner=TorchRunner("cpu"))
    cuda_runner = TorchRunner("cuda")
    cuda = extract_features(backbone, images, runner=cuda_runner)
    odd = extract_features(backbone, images[:3], batch_size=3, runner=cuda_runner)  # again
    difference = float(np.abs(cuda - cpu).max())
    print(f"\n[cuda fp32] {backbone}: max abs diff vs CPU {difference:.2e} over "
          f"{len(images)} photos (tolerance {FP32_TOLERANCE:g})")
    assert cuda.dtype == np.float32 and cuda.shape == cpu.shape
    assert difference <= FP32_TOLERANCE
    np.testing.assert_allclose(odd, cuda[:3], atol=FP32_TOLERANCE)
    # The cached module the rest of the process uses is still float32.
    assert next(load_backbone(backbone, "cuda").parameters()).dtype == torch.float32


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fp16_agreement_is_measured(backbone: str) -> None:
    """The figures that decide whether `half` may be used: cosine of fp16 to fp32 features,
    and whether a head trained on fp32 features predicts the same val labels from fp16 ones.
    Fails (and `half` must stay off) when they disagree."""
    train_images, train_labels = _photos("train", per_class=40)
    val_images, _ = _photos("val")
    fp32, fp16 = TorchRunner("cuda"), TorchRunner("cuda", half=True)
    head = fit_logistic(extract_features(backbone, train_images, runner=fp32), train_labels,
                        n_classes=int(train_labels.max()) + 1, l2=1.0)
    full = extract_features(backbone, val_images, runner=fp32)
    half = extract_features(backbone, val_images, runner=fp16)
    assert np.isfinite(half).all()
    cosines = _cosines(full, half)
    labels_full = head.predict_proba(full).argmax(1)
    labels_half = head.predict_proba(half).argmax(1)
    agree = float((labels_full == labels_half).mean())
    print(f"\n[cuda fp16] {backbone}: cosine to fp32 min {cosines.min():.5f} mean "
          f"{cosines.mean():.5f}; val labels agree {agree:.4f} "
          f"({int((labels_full != labels_half).sum())} of {len(val_images)} differ)")
    assert cosines.min() >= FP16_MIN_COSINE
    assert agree == 1.0
