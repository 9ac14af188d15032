"""What the model page says about a trained version, in plain words, built defensively.

A version's metrics and params are JSON written by whichever training engine made it: any key may
be missing or malformed, and the page must still render. Everything here takes plain data and
returns plain data for the template.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ValidationError

from app.db.tables import ModelVersion, NanoNet
from app.schemas.metrics import ClassMetrics, ConfusionMatrix, LearningCurve, MetricsOut

BACKBONE_NAMES = {
    "mobilenet_v2": "MobileNetV2",
    "efficientnet_lite0": "EfficientNet-Lite0",
    "efficientnet_lite1": "EfficientNet-Lite1",
    "efficientnet_lite2": "EfficientNet-Lite2",
}
HEAD_NAMES = {
    "logistic": "logistic regression",
    "prototype": "nearest prototype",
    "mlp": "small neural network (MLP)",
}


def backbone_name(name: Any) -> str:
    """'efficientnet_lite2' -> 'EfficientNet-Lite2'; a composite 'a+b' -> 'A and B combined'."""
    text = str(name or "").strip()
    if not text:
        return "unknown backbone"
    parts = [BACKBONE_NAMES.get(part, part.replace("_", " ")) for part in text.split("+")]
    return parts[0] if len(parts) == 1 else " and ".join(parts) + " combined"


def head_name(name: Any) -> str:
    text = str(name or "").strip()
    if not text:
        return "unknown head"
    return HEAD_NAMES.get(text, text.replace("_", " "))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _same_l2(a: Any, b: Any) -> bool:
    x, y = _finite(a), _finite(b)
    return x is None or y is None or math.isclose(x, y, rel_tol=1e-6)


def candidate_rows(candidates: Any, *, backbone: Any = None, head: Any = None,
                   l2: Any = None) -> list[dict[str, Any]]:
    """The selection table, best cross-validated accuracy first; the chosen row is marked."""
    rows = [c for c in candidates if isinstance(c, dict)] if isinstance(candidates, list) else []
    out = []
    for row in rows:
        accuracy, loss = _finite(row.get("cv_accuracy")), _finite(row.get("cv_log_loss"))
        out.append({
            "backbone": backbone_name(row.get("backbone")),
            "head": head_name(row.get("head")),
            "l2": _finite(row.get("l2")),
            "cv_accuracy": accuracy,
            "cv_log_loss": loss,
            "chosen": (row.get("backbone") == backbone and row.get("head") == head
                       and _same_l2(row.get("l2"), l2)),
        })
    def best_first(row: dict[str, Any]) -> tuple[float, float]:
        accuracy, loss = row["cv_accuracy"], row["cv_log_loss"]
        return (-accuracy if accuracy is not None else 1.0,
                loss if loss is not None else math.inf)

    out.sort(key=best_first)
    # Several rows of the chosen pair (different l2) without a recorded l2: mark the best only.
    seen = False
    for row in out:
        row["chosen"], seen = row["chosen"] and not seen, seen or row["chosen"]
    return out


def chosen_model_sentence(backbone: Any, head: Any, candidates: Any) -> str:
    """'EfficientNet-Lite2 + logistic regression, chosen among 5 backbones × 3 heads by
    cross-validation' (the second part only when there was a choice; a dimension without one is
    left out: 'chosen among 3 heads')."""
    chosen = f"{backbone_name(backbone)} + {head_name(head)}"
    rows = [c for c in candidates if isinstance(c, dict)] if isinstance(candidates, list) else []
    backbones = {str(c.get("backbone")) for c in rows if c.get("backbone")}
    heads = {str(c.get("head")) for c in rows if c.get("head")}
    if len(backbones) <= 1 and len(heads) <= 1:
        return chosen
    if len(backbones) <= 1:
        among = _plural(len(heads), "head")
    elif len(heads) <= 1:
        among = _plural(len(backbones), "backbone")
    else:
        among = f"{_plural(len(backbones), 'backbone')} × {_plural(len(heads), 'head')}"
    return f"{chosen}, chosen among {among} by cross-validation"


def _valid(model: type[BaseModel], value: Any) -> bool:
    try:
        model.model_validate(value)
    except ValidationError:
        return False
    return True


def _clean_metrics(metrics: Any) -> dict[str, Any]:
    """The parts of a metrics dict that MetricsOut accepts; malformed parts are dropped."""
    if not isinstance(metrics, dict):
        return {}
    clean: dict[str, Any] = {}
    for key in ("accuracy", "balanced_accuracy", "log_loss", "calibration_error"):
        clean[key] = _finite(metrics.get(key))
    if isinstance(metrics.get("method"), str):
        clean["method"] = metrics["method"]
    per_class = metrics.get("per_class")
    if isinstance(per_class, list):
        clean["per_class"] = [row for row in per_class if _valid(ClassMetrics, row)]
    for key, model in (("confusion_matrix", ConfusionMatrix), ("learning_curve", LearningCurve)):
        if _valid(model, metrics.get(key)):
            clean[key] = metrics[key]
    return clean


def _clean_params(params: Any) -> dict[str, Any]:
    if not isinstance(params, dict):
        return {}
    clean = {
        "views": params.get("views") if isinstance(params.get("views"), int) else None,
        "unknown_threshold": _finite(params.get("unknown_threshold")),
        "metrics_note": params.get("metrics_note")
        if isinstance(params.get("metrics_note"), str) else None,
    }
    candidates = params.get("candidates")
    clean["candidates"] = ([c for c in candidates if isinstance(c, dict)]
                           if isinstance(candidates, list) else [])
    return clean


def version_metrics(nanonet: NanoNet, version: ModelVersion) -> dict[str, Any]:
    """MetricsOut.build(...) as a dict (the shape of GET /api/v1/models/{id}/metrics).

    If the stored JSON does not fit that shape, the malformed parts are dropped and the rest is
    still shown. Two additions for the page: `has_metrics` (validation metrics exist) and
    `learning_curve_raw` (the stored curve, whose points keep their `std` for error bars).
    """
    try:
        out = MetricsOut.build(nanonet, version).model_dump()
    except ValidationError:
        stand_in = SimpleNamespace(
            number=version.number, backbone=str(version.backbone or ""),
            head=str(version.head or ""), image_ids=list(version.image_ids or []),
            metrics=_clean_metrics(version.metrics), params=_clean_params(version.params))
        out = MetricsOut.build(nanonet, stand_in).model_dump()  # type: ignore[arg-type]
    metrics = version.metrics if isinstance(version.metrics, dict) else {}
    raw_curve = metrics.get("learning_curve")
    out["has_metrics"] = bool(metrics)
    out["learning_curve_raw"] = raw_curve if isinstance(raw_curve, dict) else None
    points = (raw_curve or {}).get("points") if isinstance(raw_curve, dict) else None
    out["curve_has_std"] = isinstance(points, list) and any(
        isinstance(p, dict) and _finite(p.get("std")) for p in points)
    params = version.params if isinstance(version.params, dict) else {}
    out["chosen"] = chosen_model_sentence(out["backbone"], out["head"], out["candidates"])
    out["candidate_rows"] = candidate_rows(out["candidates"], backbone=out["backbone"],
                                           head=out["head"], l2=params.get("l2"))
    return out
