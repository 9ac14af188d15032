"""Method `baseline_lr`: the first version's head, in-process: Lite2 view-0 features, train_head."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.fewshot.data import Dataset, Sample

BACKBONE = "efficientnet_lite2"


class BaselineLR:
    name = "baseline_lr"
    deterministic = False  # train_head(seed=...) draws the CV folds that choose the L2 strength

    def __init__(self, cache_dir: Path) -> None:
        from app.ml.cache import FeatureCache

        self.cache = FeatureCache(cache_dir)
        # The cache may have grown augmentation views; the baseline always wants the plain view 0.
        self._view_kw = _view_kwargs(self.cache.features_for)
        self._get_view_kw = _view_kwargs(self.cache.get)

    def _cached(self, sample: Sample) -> bool:
        try:
            return self.cache.get(sample.sha256, BACKBONE, **self._get_view_kw) is not None
        except TypeError:
            return False

    def features(self, samples: list[Sample]) -> np.ndarray:
        items = [(s.sha256, s.decode) for s in samples]
        out = np.asarray(self.cache.features_for(BACKBONE, items, **self._view_kw))
        if out.ndim == 3:  # (N, views, dim)
            out = out[:, 0]
        return out

    def run(self, dataset: Dataset, train: list[Sample], *, seed: int, tag: str) -> dict[str, Any]:
        from bench.fewshot.reference_head import train_head

        misses = sum(not self._cached(s) for s in {s.sha256: s for s in train}.values())
        started = time.perf_counter()
        features = self.features(train)
        features_s = time.perf_counter() - started
        labels = np.array([dataset.classes.index(s.label) for s in train])
        result = train_head(features, labels, dataset.classes, seed=seed)
        train_s = time.perf_counter() - started

        val_misses = sum(not self._cached(s) for s in dataset.val)
        started = time.perf_counter()
        probabilities = result.head.predict_proba(self.features(dataset.val))
        predict_s = time.perf_counter() - started
        truth = np.array([dataset.classes.index(s.label) for s in dataset.val])
        metrics = result.metrics if isinstance(result.metrics, dict) else None
        accuracy = metrics.get("accuracy") if metrics else None
        return {
            "val_accuracy": float((probabilities.argmax(axis=1) == truth).mean()),
            "val_images": len(truth),
            "reported_cv_accuracy": float(accuracy) if accuracy is not None else None,
            "backbone": BACKBONE,
            "head": f"logistic l2={getattr(result, 'l2', None)}",
            "features_s": features_s,
            "train_s": train_s,
            "predict_s": predict_s,
            "cache_cold_images": misses,
            "cache_cold_val_images": val_misses,
        }


def _view_kwargs(function: Any) -> dict[str, Any]:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return {}
    return {"view": 0} if "view" in parameters else {}
