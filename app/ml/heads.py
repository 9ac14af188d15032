"""Classifier heads on centred, L2-normalised backbone features: logistic, prototype and MLP."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

# Normalised features are multiplied by this constant before the linear layer. With an L2 penalty
# on W, a feature scale s is equivalent to an l2 of l2 / s**2 at scale 1, so the constant only
# fixes the units of the l2 grid (evaluate.L2_GRID); 10 keeps the grid in the range BACKBONES.md
# measured and lets L-BFGS reach confident logits with small weights (fewer iterations).
FEATURE_SCALE = 10.0

_EPS = 1e-12
# fit_logistic_many first solves at this multiple of the strongest l2 asked for, as a warm
# start: a cold start at l2 = 0.03 on 30 folds of ants/bees x 3 views ran to max_iter (2.8 s);
# via 0.3 the whole 4-value grid took 2.7 s instead of 5.2 s.
_PATH_START = 10.0


def normalise(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Return (x - mean) / ||x - mean|| row-wise; an all-zero row stays zero."""
    centred = np.asarray(features, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.maximum(norms, _EPS)


@dataclass
class LogisticHead:
    """Softmax classifier: logits = (scale * normalise(x, mean)) @ weight.T + bias."""

    kind: ClassVar[str] = "logistic"

    mean: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    scale: float

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Return (N, n_classes) class probabilities; raise ValueError on a dimension mismatch."""
        _check_dim(features, self.mean.shape[0])
        return _softmax(self.scale * normalise(features, self.mean) @ self.weight.T + self.bias)

    def to_state(self) -> dict[str, Any]:
        """Return a dict of tensors and floats that torch.load(weights_only=True) accepts."""
        return {
            "mean": _tensor(self.mean),
            "weight": _tensor(self.weight),
            "bias": _tensor(self.bias),
            "scale": float(self.scale),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LogisticHead:
        """Return the head saved by to_state; raise ValueError if the shapes are inconsistent."""
        (mean, weight, bias), scale = _read_state(state, cls, ("mean", "weight", "bias"), "scale")
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


def _check_dim(features: np.ndarray, dim: int) -> None:
    shape = np.shape(features)
    if len(shape) != 2 or shape[1] != dim:
        raise ValueError(f"expected features of shape (N, {dim}), got {shape}")


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def _read_state(
    state: dict[str, Any], head: type, arrays: tuple[str, ...], number: str
) -> tuple[list[np.ndarray], float]:
    """Return a saved head's float64 arrays and its one scalar; ValueError if any is missing."""
    try:
        return [_to_numpy(state[key]) for key in arrays], float(state[number])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a saved {head.__name__}: {exc}") from exc


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))


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
    alone, instead of one Python-heavy run per problem. There is one such run per distinct l2,
    strongest first, each warm-started from the same mask's solution at the previous l2.
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
    # Every x - mean lies in the span of the rows of x, so the optimal W does too (any other
    # component only adds to the penalty) and L-BFGS from zero never leaves it. With fewer images
    # than feature dimensions, solving in an orthonormal basis of that span is the same problem
    # at a fraction of the cost (245 x 1280 -> 245 x 245 for the ants/bees set).
    basis = _row_space_basis(x)
    xb = x if basis is None else x @ basis  # (N, r)
    weights = train_masks / train_masks.sum(axis=1, keepdims=True)  # (F, N): 1/n_train or 0
    means = weights @ x  # (F, dim)
    means_b = weights @ xb  # the same means in basis coordinates
    # 1 / ||x - mean|| per fold from ||x||^2 - 2 x.mean + ||mean||^2: one (F, N) product instead
    # of F passes over (N, dim). The basis is orthonormal and holds x - mean, so norms agree.
    sq = np.einsum("nd,nd->n", xb, xb)
    dist_sq = sq[None, :] - 2.0 * means_b @ xb.T + np.einsum("fd,fd->f", means_b, means_b)[:, None]
    dist = np.sqrt(np.maximum(dist_sq, 0.0))
    # A row equal to its fold's mean normalises to zero (as in normalise()), not to rounding noise.
    exact_zero = dist <= 1e-9 * np.sqrt(np.maximum(sq, _EPS))[None, :]
    inv_norms = np.where(exact_zero, 0.0, 1.0 / np.maximum(dist, _EPS))
    onehot = torch.from_numpy(np.eye(n_classes)[labels])
    weight = np.zeros((len(folds), n_classes, xb.shape[1]))
    bias = np.zeros((len(folds), n_classes))
    # Problems with different l2 have different curvature, and one L-BFGS run over a mix costs
    # far more iterations than separate runs. Running the strongest l2 first lets each weaker
    # one start from the same fold's previous solution, which is close to its own.
    x_t = torch.from_numpy(xb)

    def solve(index: np.ndarray, l2: float, start_w: np.ndarray, start_b: np.ndarray) -> None:
        weight[index], bias[index] = _lbfgs(
            x=x_t,
            onehot=onehot,
            means=torch.from_numpy(means_b[folds[index]]),
            inv_norms=torch.from_numpy(FEATURE_SCALE * inv_norms[folds[index]]),
            row_weights=torch.from_numpy(weights[folds[index]]),
            l2s=torch.from_numpy(np.full(len(index), l2)),
            start=(torch.from_numpy(start_w), torch.from_numpy(start_b)),
            max_iter=max_iter,
        )

    previous: dict[int, int] = {}  # fold -> index of its latest solved problem
    for l2 in sorted(set(l2s.tolist()), reverse=True):
        index = np.flatnonzero(l2s == l2)
        if not previous:
            # A cold start at weak l2 is ill-conditioned (it often ran to max_iter); a strongly
            # regularised solve converges in a few iterations and starts the path close by.
            solve(index, _PATH_START * l2, weight[index], bias[index])
            previous.update((int(folds[p]), int(p)) for p in index)
        start = [previous.get(int(folds[p])) for p in index]
        start_w = np.stack([weight[q] if q is not None else np.zeros_like(weight[0]) for q in start])
        start_b = np.stack([bias[q] if q is not None else np.zeros_like(bias[0]) for q in start])
        solve(index, l2, start_w, start_b)
        previous.update((int(folds[p]), int(p)) for p in index)
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
    start: tuple[torch.Tensor, torch.Tensor],
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the sum over problems p of weighted cross-entropy + l2_p/2 ||W_p||^2."""
    n_problems, n_classes, dim = len(l2s), onehot.shape[1], x.shape[1]
    # A fixed start (zeros, or a previous solution) and a deterministic full-batch optimiser
    # make fits reproducible without seeding anything.
    weight = start[0].clone().requires_grad_()
    bias = start[1].clone().requires_grad_()
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


def _labels_onehot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes)[labels]


# Softmax temperature of a prototype head when leave-one-out fitting is impossible (every class
# has a single image). On the ants/bees and flowers sets, LOO-fitted temperatures with the
# candidate backbones came out between about 10 and 25; 15 sits in the middle.
DEFAULT_TEMPERATURE = 15.0
_TEMPERATURE_RANGE = (0.5, 500.0)
# Cosine similarity given to a class without training images: the lowest possible, so such a
# class is never preferred to one the head has seen.
_NO_PROTOTYPE = -1.0


@dataclass
class PrototypeHead:
    """Nearest class prototype: softmax(temperature * cos(normalise(x, mean), prototype))."""

    kind: ClassVar[str] = "prototype"

    mean: np.ndarray  # (dim,)
    prototypes: np.ndarray  # (n_classes, dim) unit rows; a zero row is a class without images
    temperature: float

    @property
    def n_classes(self) -> int:
        return int(self.prototypes.shape[0])

    def similarities(self, features: np.ndarray) -> np.ndarray:
        """Return (N, n_classes) cosine similarities; raise ValueError on a dimension mismatch."""
        _check_dim(features, self.mean.shape[0])
        sims = normalise(features, self.mean) @ self.prototypes.T
        empty = np.linalg.norm(self.prototypes, axis=1) < 0.5  # rows are unit or exactly zero
        sims[:, empty] = _NO_PROTOTYPE
        return sims

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Return (N, n_classes) class probabilities; raise ValueError on a dimension mismatch."""
        return _softmax(self.temperature * self.similarities(features))

    def to_state(self) -> dict[str, Any]:
        """Return a dict of tensors and floats that torch.load(weights_only=True) accepts."""
        return {
            "mean": _tensor(self.mean),
            "prototypes": _tensor(self.prototypes),
            "temperature": float(self.temperature),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PrototypeHead:
        """Return the head saved by to_state; raise ValueError if the shapes are inconsistent."""
        (mean, prototypes), temperature = _read_state(
            state, cls, ("mean", "prototypes"), "temperature"
        )
        if mean.ndim != 1 or prototypes.ndim != 2 or prototypes.shape[1] != mean.shape[0]:
            raise ValueError(
                f"inconsistent PrototypeHead shapes: mean {mean.shape}, "
                f"prototypes {prototypes.shape}"
            )
        return cls(mean=mean, prototypes=prototypes, temperature=temperature)


def fit_prototype(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    n_classes: int,
    groups: np.ndarray | None = None,
) -> PrototypeHead:
    """Return the prototype head with a leave-one-out fitted temperature; raise ValueError.

    `groups` gives each row's image (rows of one image are its augmented views, same label):
    leave-one-out leaves out whole images, so no view is scored against a prototype that
    contains another view of itself. None means one image per row.
    """
    features, labels = _check_data(features, labels, n_classes=n_classes)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have shape {labels.shape}, got {groups.shape}")
    x = features.astype(np.float64)
    mean = x.mean(axis=0)
    z = normalise(x, mean)
    sums = _labels_onehot(labels, n_classes).T @ z  # (C, dim)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    prototypes = np.where(norms > _EPS, sums / np.maximum(norms, _EPS), 0.0)
    temperature = _loo_temperature(z, labels, groups, sums, n_classes=n_classes)
    return PrototypeHead(mean=mean, prototypes=prototypes, temperature=temperature)


def _loo_temperature(
    z: np.ndarray, labels: np.ndarray, groups: np.ndarray, sums: np.ndarray, *, n_classes: int
) -> float:
    """Return the temperature minimising the log loss of leave-one-image-out similarities."""
    _, group_index = np.unique(groups, return_inverse=True)
    order = np.argsort(group_index, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(group_index[order]) != 0])
    group_sums = np.add.reduceat(z[order], starts, axis=0)  # (G, dim), groups in sorted order
    own = group_sums[group_index]  # (N, dim): the row's image, all of its views
    images_per_class = np.array(
        [len(np.unique(group_index[labels == c])) for c in range(n_classes)]
    )
    # Leaving an image out changes only its own class's prototype: sum_c - own, whose norm and
    # dot products follow from quantities already at hand (no per-row prototype is built).
    sum_norms = np.linalg.norm(sums, axis=1)
    sims = (z @ sums.T) / np.maximum(sum_norms, _EPS)
    sims[:, sum_norms <= _EPS] = _NO_PROTOTYPE
    rows = np.arange(len(labels))
    own_sum = sums[labels]
    loo_norm_sq = sum_norms[labels] ** 2 - 2 * (own_sum * own).sum(axis=1) + (own**2).sum(axis=1)
    sims[rows, labels] = ((z * own_sum).sum(axis=1) - (z * own).sum(axis=1)) / np.sqrt(
        np.maximum(loo_norm_sq, _EPS)
    )
    usable = images_per_class[labels] >= 2  # a lone image leaves no prototype to compare with
    if not usable.any():
        return DEFAULT_TEMPERATURE
    sims, targets = sims[usable], labels[usable]

    def log_loss(log_t: float) -> float:
        logits = math.exp(log_t) * sims
        top = logits.max(axis=1)
        lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        return float((lse - logits[np.arange(len(targets)), targets]).mean())

    from scipy.optimize import minimize_scalar  # imported here: scipy is slow to import

    # The loss is convex in t, so unimodal in log t: a bounded scalar search finds the optimum.
    lo, hi = (math.log(t) for t in _TEMPERATURE_RANGE)
    found = minimize_scalar(log_loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-3})
    return float(math.exp(found.x))


@dataclass
class MLPHead:
    """One hidden ReLU layer: logits = relu(scale * normalise(x, mean) @ w1.T + b1) @ w2.T + b2."""

    kind: ClassVar[str] = "mlp"

    mean: np.ndarray  # (dim,)
    w1: np.ndarray  # (hidden, dim)
    b1: np.ndarray  # (hidden,)
    w2: np.ndarray  # (n_classes, hidden)
    b2: np.ndarray  # (n_classes,)
    scale: float

    @property
    def n_classes(self) -> int:
        return int(self.w2.shape[0])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Return (N, n_classes) class probabilities; raise ValueError on a dimension mismatch."""
        _check_dim(features, self.mean.shape[0])
        hidden = np.maximum(self.scale * normalise(features, self.mean) @ self.w1.T + self.b1, 0.0)
        return _softmax(hidden @ self.w2.T + self.b2)

    def to_state(self) -> dict[str, Any]:
        """Return a dict of tensors and floats that torch.load(weights_only=True) accepts."""
        return {
            "mean": _tensor(self.mean),
            # float32 halves the file (hidden x dim is the bulk) and is what the fit ran in.
            "w1": torch.from_numpy(np.ascontiguousarray(self.w1, dtype=np.float32)),
            "b1": _tensor(self.b1),
            "w2": _tensor(self.w2),
            "b2": _tensor(self.b2),
            "scale": float(self.scale),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MLPHead:
        """Return the head saved by to_state; raise ValueError if the shapes are inconsistent."""
        (mean, w1, b1, w2, b2), scale = _read_state(
            state, cls, ("mean", "w1", "b1", "w2", "b2"), "scale"
        )
        if (
            mean.ndim != 1
            or w1.shape[1:] != mean.shape
            or b1.shape != w1.shape[:1]
            or w2.ndim != 2
            or w2.shape[1] != w1.shape[0]
            or b2.shape != w2.shape[:1]
        ):
            raise ValueError(
                f"inconsistent MLPHead shapes: mean {mean.shape}, w1 {w1.shape}, b1 {b1.shape}, "
                f"w2 {w2.shape}, b2 {b2.shape}"
            )
        return cls(mean=mean, w1=w1, b1=b1, w2=w2, b2=b2, scale=scale)


# A small budget on purpose. With 5-fold CV on ants/bees (Lite2) and flowers (MobileNetV2 +
# Lite2), 3 views, every setting tried - hidden 128/256, 32/64/128 inputs, 60/100 Adam steps,
# l2 1e-3/1e-2 - scored within 0.01 of the logistic head and of each other, while the cost grew
# 4x from the cheapest (this one) to the largest.
MLP_HIDDEN = 128
MLP_INPUTS = 32  # top principal directions of the training rows fed to the hidden layer
MLP_DROPOUT = 0.5
MLP_STEPS = 60
MLP_LR = 1e-2


def fit_mlp(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    n_classes: int,
    l2: float,
    seed: int = 0,
) -> MLPHead:
    """Return a one-hidden-layer MLP (as fit_mlp_many on all rows); raise ValueError."""
    train = np.ones((1, len(np.asarray(labels))), dtype=bool)
    return fit_mlp_many(features, labels, train, n_classes=n_classes, l2=l2, seed=seed)[0]


def fit_mlp_many(
    features: np.ndarray,
    labels: np.ndarray,
    train_masks: np.ndarray,
    *,
    n_classes: int,
    l2: float,
    seed: int = 0,
) -> list[MLPHead]:
    """Return one MLP per train mask, each as fit_mlp on its rows would give; raise ValueError.

    Each minimises mean cross-entropy + l2/2 (||w1||^2 + ||w2||^2) with dropout on the hidden
    layer for MLP_STEPS full-batch Adam steps. Deterministic for a seed: each fit's
    initialisation and dropout masks come from its own generator seeded with `seed`. The fits
    run as one batch: cross-validation needs dozens, and each alone is hundreds of tiny ops.
    """
    features, labels = _check_data(features, labels, n_classes=n_classes)
    train_masks = np.asarray(train_masks, dtype=bool)
    if train_masks.ndim != 2 or train_masks.shape[1] != len(labels):
        raise ValueError(f"train_masks must have shape (F, {len(labels)}), got {train_masks.shape}")
    if not train_masks.any(axis=1).all():
        raise ValueError("every train mask must select at least one row")
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    x = features.astype(np.float64)
    with _single_threaded(), torch.enable_grad():
        problems = [_mlp_problem(x[mask], labels[mask], seed=seed) for mask in train_masks]
        params = _adam_mlp(problems, n_classes=n_classes, l2=l2, seed=seed)
    heads = []
    for (mean, basis, _, _), (w1, b1, w2, b2) in zip(problems, params):
        heads.append(
            MLPHead(mean=mean, w1=w1 @ basis.T, b1=b1, w2=w2, b2=b2, scale=FEATURE_SCALE)
        )
    return heads


def _mlp_problem(
    x: np.ndarray, labels: np.ndarray, *, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (mean, input basis (dim, k), projected inputs (n, k), labels) of one MLP fit."""
    mean = x.mean(axis=0)
    z = FEATURE_SCALE * normalise(x, mean)
    # The hidden layer sees the top principal directions of the training rows, not all 1280-2560
    # features: with a full first layer one fit cost seconds, and cross-validation needs dozens.
    # The projection is folded into w1 afterwards, so prediction needs nothing extra.
    basis = _principal_directions(z, MLP_INPUTS, seed=seed)
    return mean, basis, z @ basis, labels


def _adam_mlp(
    problems: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    *,
    n_classes: int,
    l2: float,
    seed: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Return (w1, b1, w2, b2) per problem after MLP_STEPS of full-batch Adam on all at once."""
    n_fits, hidden = len(problems), MLP_HIDDEN
    n_max = max(len(p[2]) for p in problems)
    k_max = max(p[2].shape[1] for p in problems)
    # Padding rows carry zero loss weight and padding inputs are zero, so every problem's
    # gradients (and Adam's per-element updates) are exactly those of its own fit.
    inputs = torch.zeros(n_fits, n_max, k_max)
    targets = torch.zeros(n_fits, n_max, dtype=torch.int64)
    weights = torch.zeros(n_fits, n_max)
    w1 = torch.zeros(n_fits, hidden, k_max)
    w2 = torch.empty(n_fits, n_classes, hidden)
    generators = []
    for f, (_, _, projected, labels) in enumerate(problems):
        n, k = projected.shape
        inputs[f, :n, :k] = torch.from_numpy(projected.astype(np.float32))
        targets[f, :n] = torch.from_numpy(labels)
        weights[f, :n] = 1.0 / n
        generator = torch.Generator().manual_seed(seed)
        w1[f, :, :k] = torch.randn(hidden, k, generator=generator) * math.sqrt(2.0 / k)
        w2[f] = torch.randn(n_classes, hidden, generator=generator) / math.sqrt(hidden)
        generators.append(generator)
    params = [w1, torch.zeros(n_fits, 1, hidden), w2, torch.zeros(n_fits, 1, n_classes)]
    for param in params:
        param.requires_grad_()
    keep = 1.0 - MLP_DROPOUT
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    for step in range(1, MLP_STEPS + 1):
        h = torch.relu(torch.bmm(inputs, params[0].transpose(1, 2)) + params[1])
        mask = torch.zeros(n_fits, n_max, hidden)
        for f, (generator, problem) in enumerate(zip(generators, problems)):
            n = len(problem[2])
            mask[f, :n] = (torch.rand(n, hidden, generator=generator) < keep) / keep
        logits = torch.bmm(h * mask, params[2].transpose(1, 2)) + params[3]
        nll = -torch.log_softmax(logits, dim=2).gather(2, targets[:, :, None])[:, :, 0]
        penalty = 0.5 * l2 * (params[0].pow(2).sum() + params[2].pow(2).sum())
        loss = (weights * nll).sum() + penalty
        _adam_step(params, torch.autograd.grad(loss, params), moments, step=step, lr=MLP_LR)
    out = []
    for f, (_, _, projected, _) in enumerate(problems):
        k = projected.shape[1]
        w1_f, b1_f, w2_f, b2_f = (p[f].detach().numpy().astype(np.float64) for p in params)
        out.append((w1_f[:, :k], b1_f[0], w2_f, b2_f[0]))
    return out


def _adam_step(
    params: list[torch.Tensor],
    grads: Sequence[torch.Tensor],
    moments: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """Apply one Adam update in place."""
    # Hand-written because constructing torch.optim.Adam imports torch._dynamo on first use
    # (measured 3-14 s here), which a worker would pay on its first MLP fit.
    with torch.no_grad():
        for param, grad, (m, v) in zip(params, grads, moments):
            m.mul_(betas[0]).add_(grad, alpha=1 - betas[0])
            v.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
            m_hat = m / (1 - betas[0] ** step)
            v_hat = v / (1 - betas[1] ** step)
            param.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def _principal_directions(z: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """Return (dim, <= k) orthonormal approximate top principal directions of the rows of z."""
    # A seeded randomised range finder (Halko et al.) with two power iterations: a few thin
    # matmuls instead of a full eigendecomposition, and deterministic for the seed.
    centred = torch.from_numpy(z - z.mean(axis=0))
    q = min(k + 10, *centred.shape)
    generator = torch.Generator().manual_seed(seed)
    probe = torch.randn(len(centred), q, generator=generator, dtype=torch.float64)
    basis = torch.linalg.qr(centred.T @ probe).Q
    for _ in range(2):
        basis = torch.linalg.qr(centred.T @ (centred @ basis)).Q
    _, values, right = torch.linalg.svd(centred @ basis, full_matrices=False)
    keep = values > 1e-9 * max(float(values[0]), _EPS)
    directions = (basis @ right.T)[:, keep][:, :k]
    if directions.shape[1] == 0:  # every row identical: any direction will do
        return np.eye(z.shape[1], 1)
    return directions.numpy()


Head = LogisticHead | PrototypeHead | MLPHead
HEAD_KINDS: dict[str, type[LogisticHead | PrototypeHead | MLPHead]] = {
    cls.kind: cls for cls in (LogisticHead, PrototypeHead, MLPHead)
}


def head_from_state(kind: str, state: dict[str, Any]) -> Head:
    """Return the head of `kind` saved by its to_state; raise ValueError on a bad kind or state."""
    try:
        cls = HEAD_KINDS[kind]
    except KeyError:
        known = sorted(HEAD_KINDS)
        raise ValueError(f"unknown head kind {kind!r}; expected one of {known}") from None
    return cls.from_state(state)
