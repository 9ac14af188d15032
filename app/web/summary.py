"""What the model page says about a trained version, in plain words."""

from __future__ import annotations

from dataclasses import dataclass

from app.db.tables import ModelVersion
from app.ml.registry import display_name
from app.schemas.metrics import CandidateScore, MultiLabelMetrics, VersionMetrics, VersionParams

HEAD_NAMES = {
    "logistic": "logistic regression",
    "prototype": "nearest prototype",
    "multilabel_logistic": "one-vs-rest logistic regression",
}


def head_name(name: str) -> str:
    """'logistic' -> 'logistic regression'; a head no longer offered (an old 'mlp') as named."""
    return HEAD_NAMES.get(name, name.replace("_", " "))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


@dataclass(frozen=True)
class CandidateRow:
    backbone: str
    head: str
    l2: float | None
    cv_accuracy: float
    cv_log_loss: float
    is_chosen: bool


def candidate_rows(candidates: list[CandidateScore], *, backbone: str, head: str,
                   l2: float | None) -> list[CandidateRow]:
    """The selection table, best cross-validated accuracy (then log loss) first."""
    ranked = sorted(candidates, key=lambda c: (-c.cv_accuracy, c.cv_log_loss))
    return [CandidateRow(backbone=display_name(c.backbone), head=head_name(c.head), l2=c.l2,
                         cv_accuracy=c.cv_accuracy, cv_log_loss=c.cv_log_loss,
                         is_chosen=(c.backbone, c.head, c.l2) == (backbone, head, l2))
            for c in ranked]


def chosen_model_sentence(backbone: str, head: str, candidates: list[CandidateScore]) -> str:
    """'EfficientNet-Lite2 + logistic regression, chosen among 5 backbones × 2 heads by
    cross-validation' (the second part only when there was a choice; a dimension without one is
    left out: 'chosen among 2 heads')."""
    chosen = f"{display_name(backbone)} + {head_name(head)}"
    backbones = {c.backbone for c in candidates}
    heads = {c.head for c in candidates}
    if len(backbones) <= 1 and len(heads) <= 1:
        return chosen
    if len(backbones) <= 1:
        among = _plural(len(heads), "head")
    elif len(heads) <= 1:
        among = _plural(len(backbones), "backbone")
    else:
        among = f"{_plural(len(backbones), 'backbone')} × {_plural(len(heads), 'head')}"
    return f"{chosen}, chosen among {among} by cross-validation"


@dataclass(frozen=True)
class VersionSummary:
    metrics: VersionMetrics | None  # a single-label version's
    params: VersionParams
    multi_label: MultiLabelMetrics | None  # a multi-label version's (then `metrics` is None)
    chosen: str
    candidate_rows: list[CandidateRow]


def version_summary(version: ModelVersion) -> VersionSummary:
    """The version's stored metrics and params, validated, with the selection in words."""
    params = VersionParams.of(version)
    backbone, head = version.chosen
    return VersionSummary(
        metrics=VersionMetrics.of(version), params=params,
        multi_label=MultiLabelMetrics.of(version),
        chosen=chosen_model_sentence(backbone, head, params.candidates),
        candidate_rows=candidate_rows(params.candidates, backbone=backbone, head=head,
                                      l2=params.l2))
