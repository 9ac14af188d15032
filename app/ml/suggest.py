"""Which unlabelled images to label next: the ones the model is least sure of, one per picture.

Inputs are per pool image (row): the active version's probabilities and the eval-view features
of review.DUPLICATE_BACKBONE; rows stay rows here, the caller maps them to image ids. Typical use:

    chosen = suggestions(probs, features, limit=20, context=labelled_features)

How much labelling the suggestions helps against labelling random pool images:
docs/EXPERIMENTS.md, "Suggestions".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.ml.review import DUPLICATE_COSINE, cosine_matrix_rows


@dataclass(frozen=True)
class Suggestion:
    """A pool image worth labelling: its two most probable categories and their gap."""

    row: int
    predicted: int
    probability: float  # of `predicted`
    runner_up: int
    runner_up_probability: float
    margin: float  # probability - runner_up_probability


def margins(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (top class, runner-up class, top minus runner-up probability) per row.

    Raise ValueError unless probabilities are (N, classes >= 2).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"need probabilities (N, classes >= 2), got {probs.shape}")
    # Stable sort of the negated row: of two equal probabilities the first category leads.
    order = np.argsort(-probs, axis=1, kind="stable")
    top, second = order[:, 0], order[:, 1]
    rows = np.arange(len(probs))
    return top, second, probs[rows, top] - probs[rows, second]


def suggestions(
    probs: np.ndarray,
    features: np.ndarray,
    *,
    limit: int,
    context: np.ndarray | None = None,
    threshold: float = DUPLICATE_COSINE,
) -> list[Suggestion]:
    """Return up to `limit` rows, smallest margin first, none a near-copy of an earlier one.

    Greedy: walk the rows by margin (ties by row) and skip a row whose centred cosine to an
    already chosen row is at or above `threshold`, the review's duplicate rule. Features are
    centred on the mean of `features` and `context` together (the model's other images), as
    the review centres on a model's images. Raise ValueError on inconsistent input.
    """
    top, second, gap = margins(probs)
    probs = np.asarray(probs, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) != len(probs):
        raise ValueError(
            f"need features (N, dim) with one row per probability row, got {features.shape} "
            f"for {len(probs)} rows"
        )
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if len(features) == 0:
        return []
    everything = features if context is None or len(context) == 0 else np.vstack(
        [features, np.asarray(context, dtype=np.float64).reshape(-1, features.shape[1])]
    )
    unit = cosine_matrix_rows(everything)[: len(features)]
    chosen: list[int] = []
    for row in np.lexsort((np.arange(len(gap)), gap)):
        if len(chosen) >= limit:
            break
        if chosen and float((unit[chosen] @ unit[row]).max()) >= threshold:
            continue
        chosen.append(int(row))
    return [
        Suggestion(
            row=row,
            predicted=int(top[row]),
            probability=float(probs[row, top[row]]),
            runner_up=int(second[row]),
            runner_up_probability=float(probs[row, second[row]]),
            margin=float(gap[row]),
        )
        for row in chosen
    ]


def reason(names: list[str], suggestion: Suggestion) -> str:
    """Return one sentence a person reads saying why the image is worth labelling."""
    first, second = names[suggestion.predicted], names[suggestion.runner_up]
    p, q = round(100 * suggestion.probability), round(100 * suggestion.runner_up_probability)
    if suggestion.margin < 0.2:
        return f"The model is torn between {first} ({p}%) and {second} ({q}%)."
    if suggestion.probability < 0.9:
        return f"The model leans to {first} ({p}%) but is unsure; next is {second} ({q}%)."
    return (f"The model is fairly sure it is {first} ({p}%); labelling it confirms or "
            "corrects that.")
