"""One-file model artifacts: a fitted head (any kind) plus JSON-like metadata."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from app.ml.heads import Head, head_from_state
from app.storage import atomic_writer

# Format 2 records the head kind; format 1 files (logistic heads only, no kind) still load.
ARTIFACT_FORMAT = 2
_READABLE_FORMATS = (1, 2)


def save_artifact(path: Path, *, head: Head, meta: dict[str, Any]) -> None:
    """Write head and meta to `path` atomically; raise OSError if it cannot be written.

    meta holds plain Python data only (str, int, float, bool, None, lists, dicts), e.g. the
    labels, the backbone and the unknown detector from select.FitResult.unknown.
    """
    path = Path(path)
    payload = {"format": ARTIFACT_FORMAT, "kind": head.kind, "head": head.to_state(), "meta": meta}
    with atomic_writer(path) as handle:
        torch.save(payload, handle)


def load_artifact(path: Path) -> tuple[Head, dict[str, Any]]:
    """Return (head, meta) from `path`; raise ValueError if not an artifact, OSError if absent."""
    try:
        # weights_only=True: an artifact is data, and must not be able to run code when loaded.
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable NanoNet artifact: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") not in _READABLE_FORMATS:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: unknown artifact format {found!r}, expected {ARTIFACT_FORMAT}")
    meta, state = payload.get("meta"), payload.get("head")
    kind = payload.get("kind", "logistic")  # format 1 had only logistic heads
    if not isinstance(meta, dict) or not isinstance(state, dict) or not isinstance(kind, str):
        # A malformed file, not a caller passing the wrong type: ValueError like the rest.
        raise ValueError(f"{path}: artifact lacks its head or metadata")  # noqa: TRY004
    return head_from_state(kind, state), meta
