"""Shared fixtures for the learning-core tests: synthetic data and cached real-photo features."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.ml.cache import FeatureCache

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def dataset_rows(name: str, split: str) -> list[dict[str, str]]:
    """Return the manifest rows of one split, skipping the test if the dataset is absent."""
    manifest = DATASETS / name / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"dataset {name} not found at {manifest.parent}")
    with manifest.open(newline="") as f:
        return [row for row in csv.DictReader(f) if row["split"] == split]


def image_loader(path: Path) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(path) as image:
            return image.convert("RGB")

    return load


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    """One cache per test session, so each photo goes through each backbone at most once.

    NANONET_TEST_FEATURE_CACHE names a directory to keep it across sessions instead; entries
    are keyed by image content hash, backbone and view, so reusing them is safe.
    """
    root = os.environ.get("NANONET_TEST_FEATURE_CACHE")
    return FeatureCache(Path(root) if root else tmp_path_factory.mktemp("feature-cache"))


@pytest.fixture(scope="session")
def dataset_features(
    feature_cache: FeatureCache,
) -> Callable[[str, str, str], tuple[np.ndarray, np.ndarray, list[str]]]:
    """Return a function giving (features, label indices, label names) for a dataset split."""

    def features(name: str, split: str, backbone: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        rows = dataset_rows(name, split)
        names = sorted({row["label"] for row in rows})
        items = [(row["sha256"], image_loader(DATASETS / name / row["path"])) for row in rows]
        x = feature_cache.features_for(backbone, items)
        y = np.array([names.index(row["label"]) for row in rows])
        return x, y, names

    return features


@pytest.fixture(scope="session")
def dataset_views(
    feature_cache: FeatureCache,
) -> Callable[..., tuple[dict[str, np.ndarray], np.ndarray, list[str]]]:
    """Return a function giving ({backbone: (N, V, dim)}, label indices, label names)."""

    def views(
        name: str, split: str, backbones: Sequence[str], *, n_views: int = 1
    ) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
        rows = dataset_rows(name, split)
        names = sorted({row["label"] for row in rows})
        items = [(row["sha256"], image_loader(DATASETS / name / row["path"])) for row in rows]
        x = feature_cache.views_for(backbones, items, views=range(n_views))
        y = np.array([names.index(row["label"]) for row in rows])
        return x, y, names

    return views


# What evaluate.classification_metrics returns, the shape GET /metrics documents.
CLASSIFICATION_KEYS = {
    "accuracy",
    "balanced_accuracy",
    "log_loss",
    "per_class",
    "confusion_matrix",
    "n_images",
    "n_folds",
    "method",
}


def blobs(
    *, n_per_class: int, n_classes: int, dim: int = 64, spread: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return well-separated Gaussian clusters (positive, like pooled ReLU features) and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.0, 2.0, size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = centres[labels] + spread * rng.standard_normal((len(labels), dim))
    order = rng.permutation(len(labels))
    return features[order].astype(np.float32), labels[order]
