"""Multinomial logistic regression head on centred, L2-normalised backbone features."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Normalised features are multiplied by this constant before the linear layer. With an L2 penalty
# on W, a feature scale s is equivalent to an l2 of l2 / s**2 at scale 1, so the constant only
# fixes the units of the l2 grid (evaluate.L2_GRID); 10 keeps the grid in the range BACKBONES.md
# measured and lets L-BFGS reach confident logits with small weights (fewer iterations).
FEATURE_SCALE = 10.0

_EPS = 1e-12


def normalise(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Return (x - mean) / ||x - mean|| row-wise; an all-zero row stays zero."""
    centred = np.asarray(features, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.maximum(norms, _EPS)


@dataclass
class LogisticHead:
    """Softmax classifier: logits = (scale * normalise(x, mean)) @ weight.T + bias."""

    mean: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    scale: float

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Return (N, n_classes) class probabilities; raise ValueError on a dimension mismatch."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"expected features of shape (N, {self.mean.shape[0]}), got {features.shape}"
            )
        logits = self.scale * normalise(features, self.mean) @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def to_state(self) -> dict[str, Any]:
        """Return a dict of tensors and floats that torch.load(weights_only=True) accepts."""
        return {
            "mean": torch.from_numpy(np.ascontiguousarray(self.mean, dtype=np.float64)),
            "weight": torch.from_numpy(np.ascontiguousarray(self.weight, dtype=np.float64)),
            "bias": torch.from_numpy(np.ascontiguousarray(self.bias, dtype=np.float64)),
            "scale": float(self.scale),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LogisticHead:
        """Return the head saved by to_state; raise ValueError if the shapes are inconsistent."""
        try:
            mean = _to_numpy(state["mean"])
            weight = _to_numpy(state["weight"])
            bias = _to_numpy(state["bias"])
            scale = float(state["scale"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a LogisticHead state: {exc}") from exc
        if (
            mean.ndim != 1
            or weight.ndim != 2
            or weight.shape[1] != mean.shape[0]
            or bias.shape != (weight.shape[0],)
        ):
            raise ValueError(
                f"inconsistent LogisticHead shapes: mean {mean.shape}, weight {weight.shape}, "
                f"bias {bias.shape}"
            )
        return cls(mean=mean, weight=weight, bias=bias, scale=scale)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().astype(np.float64)
    return np.asarray(value, dtype=np.float64)


def fit_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    n_classes: int,
    l2: float,
    max_iter: int = 200,
) -> LogisticHead:
    """Return the head minimising mean cross-entropy + l2/2 ||W||^2; raise ValueError."""
    train = np.ones((1, len(np.asarray(labels))), dtype=bool)
    return fit_logistic_many(
        features, labels, train, [(0, l2)], n_classes=n_classes, max_iter=max_iter
    )[0]


def fit_logistic_many(
    features: np.ndarray,
    labels: np.ndarray,
    train_masks: np.ndarray,
    problems: Sequence[tuple[int, float]],
    *,
    n_classes: int,
    max_iter: int = 200,
) -> list[LogisticHead]:
    """Return one head per (train mask index, l2) problem, fitted jointly; raise ValueError.

    Each head equals fit_logistic(features[train_masks[i]], labels[train_masks[i]], l2=l2) up to
    the optimiser's tolerance. Cross-validation fits many small problems on the same rows, and
    one L-BFGS run over their (separable) sum costs about as many iterations as the hardest one
    alone, instead of one Python-heavy run per problem.
    """
    features, labels = _check_data(features, labels, n_classes=n_classes)
    train_masks = np.asarray(train_masks, dtype=bool)
    if train_masks.ndim != 2 or train_masks.shape[1] != len(labels):
        raise ValueError(f"train_masks must have shape (F, {len(labels)}), got {train_masks.shape}")
    if not train_masks.any(axis=1).all():
        raise ValueError("every train mask must select at least one row")
    if not problems:
        return []
    folds = np.asarray([fold for fold, _ in problems], dtype=np.int64)
    l2s = np.asarray([l2 for _, l2 in problems], dtype=np.float64)
    if folds.min() < 0 or folds.max() >= len(train_masks):
        raise ValueError("a problem refers to a train mask that does not exist")
    if not (l2s > 0).all():
        raise ValueError(f"every l2 must be > 0, got {l2s.tolist()}")

    with _single_threaded():
        return _fit_many(features, labels, train_masks, folds, l2s, n_classes, max_iter)


def _fit_many(
    features: np.ndarray,
    labels: np.ndarray,
    train_masks: np.ndarray,
    folds: np.ndarray,
    l2s: np.ndarray,
    n_classes: int,
    max_iter: int,
) -> list[LogisticHead]:
    x = features.astype(np.float64)
    means = np.stack([x[mask].mean(axis=0) for mask in train_masks])  # (F, dim)
    # 1 / ||x - mean|| per fold, computed exactly as normalise() does so predictions match.
    inv_norms = np.stack(
        [1.0 / np.maximum(np.linalg.norm(x - mean, axis=1), _EPS) for mean in means]
    )  # (F, N)
    # Loss weight of row n in problem p: 1/n_train for its training rows, 0 elsewhere.
    row_weights = train_masks[folds] / train_masks[folds].sum(axis=1, keepdims=True)  # (P, N)
    # Every x - mean lies in the span of the rows of x, so the optimal W does too (any other
    # component only adds to the penalty) and L-BFGS from zero never leaves it. With fewer images
    # than feature dimensions, solving in an orthonormal basis of that span is the same problem
    # at a fraction of the cost (245 x 1280 -> 245 x 245 for the ants/bees set).
    basis = _row_space_basis(x)
    weight, bias = _lbfgs(
        x=torch.from_numpy(x if basis is None else x @ basis),
        onehot=torch.from_numpy(np.eye(n_classes)[labels]),
        means=torch.from_numpy(means[folds] if basis is None else means[folds] @ basis),
        inv_norms=torch.from_numpy(FEATURE_SCALE * inv_norms[folds]),
        row_weights=torch.from_numpy(row_weights),
        l2s=torch.from_numpy(l2s),
        max_iter=max_iter,
    )
    if basis is not None:
        weight = weight @ basis.T
    return [
        LogisticHead(mean=means[fold].copy(), weight=w, bias=b, scale=FEATURE_SCALE)
        for fold, w, b in zip(folds, weight, bias)
    ]


_threads_lock = threading.Lock()


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run torch on one intra-op thread, restoring the previous count afterwards."""
    # A fit is thousands of tiny ops. On a busy 2-core machine every multi-threaded op waits
    # for a descheduled OpenMP/MKL worker (measured 8-16 ms per matmul or dot instead of
    # microseconds: 19 s instead of 0.45 s for one train_head), and even on an idle one two
    # threads do not speed up ops this small. The thread count is process-wide, so fits are
    # serialised to restore it correctly; other torch work in the process meanwhile also runs
    # on one thread.
    with _threads_lock:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def _row_space_basis(x: np.ndarray) -> np.ndarray | None:
    """Return a (dim, N) orthonormal basis spanning x's rows, or None when N >= dim."""
    if len(x) >= x.shape[1]:
        return None
    # Householder QR gives orthonormal columns even for duplicate rows (rank < N); the extra
    # directions are harmless, unlike an SVD rank cut-off, and QR is several times cheaper.
    return torch.linalg.qr(torch.from_numpy(x.T), mode="reduced").Q.numpy()


def _check_data(
    features: np.ndarray, labels: np.ndarray, *, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"features must be a non-empty (N, dim) array, got {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinity")
    if labels.shape != (len(features),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({len(features)},), got {labels.shape}")
    if n_classes < 2 or labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}) with n_classes >= 2")
    return features, labels


def _lbfgs(
    *,
    x: torch.Tensor,
    onehot: torch.Tensor,
    means: torch.Tensor,
    inv_norms: torch.Tensor,
    row_weights: torch.Tensor,
    l2s: torch.Tensor,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the sum over problems p of weighted cross-entropy + l2_p/2 ||W_p||^2."""
    n_problems, n_classes, dim = len(l2s), onehot.shape[1], x.shape[1]
    # Starting from zeros with a deterministic full-batch optimiser makes fits reproducible
    # without seeding anything.
    weight = torch.zeros(n_problems, n_classes, dim, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_problems, n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=10,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # logits[p, n] = scale * (x_n - mean_p) @ W_p.T / ||x_n - mean_p|| + b_p
        raw = (x @ weight.reshape(-1, dim).T).reshape(len(x), n_problems, n_classes)
        shift = torch.einsum("pd,pcd->pc", means, weight)
        logits = (raw.transpose(0, 1) - shift[:, None, :]) * inv_norms[:, :, None]
        logits = logits + bias[:, None, :]
        nll = -(torch.log_softmax(logits, dim=2) * onehot).sum(dim=2)  # (P, N)
        penalty = 0.5 * (l2s * weight.pow(2).sum(dim=(1, 2))).sum()
        loss = (row_weights * nll).sum() + penalty
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach().numpy().copy(), bias.detach().numpy().copy()
