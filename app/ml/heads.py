"""Classifier heads on centred, L2-normalised backbone features: logistic and prototype."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import torch

# Normalised features are multiplied by this constant before the linear layer. With an L2 penalty
# on W, a feature scale s is equivalent to an l2 of l2 / s**2 at scale 1, so the constant only
# fixes the units of the l2 grid (evaluate.L2_GRID) and lets L-BFGS reach confident logits with
# small weights (fewer iterations).
FEATURE_SCALE = 10.0

_EPS = 1e-12
# fit_logistic_many first solves at this multiple of the strongest l2 asked for, as a warm
# start: a cold start at weak l2 often runs to max_iter (docs/EXPERIMENTS.md, "L-BFGS path").
_PATH_START = 10.0
# Softmax temperature of a prototype head when leave-one-out fitting is impossible (every class
# has a single image): the middle of the temperatures fitted on the shared sets.
DEFAULT_TEMPERATURE = 15.0
_TEMPERATURE_RANGE = (0.5, 500.0)
# Cosine similarity given to a class without training images: the lowest possible, so such a
# class is never preferred to one the head has seen.
_NO_PROTOTYPE = -1.0


def normalise(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Return (x - mean) / ||x - mean|| row-wise; an all-zero row stays zero."""
    centred = np.asarray(features, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.maximum(norms, _EPS)


@dataclass
class _Head:
    """What every head shares: inputs centred on `mean` and normalised, a softmax on top, and a
    state of float64 tensors and floats (its dataclass fields) that an artifact stores."""

    kind: ClassVar[str]

    mean: np.ndarray  # (dim,)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Return (N, n_classes) class probabilities; raise ValueError on a dimension mismatch."""
        shape = np.shape(features)
        if len(shape) != 2 or shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected features of shape (N, {self.mean.shape[0]}), got {shape}")
        logits = self._logits(normalise(features, self.mean))
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def _logits(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_state(self) -> dict[str, Any]:
        """Return a dict of tensors and floats that torch.load(weights_only=True) accepts."""
        state: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            name, value = field.name, getattr(self, field.name)
            if isinstance(value, np.ndarray):
                state[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float64))
            else:
                state[name] = float(value)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Return the head saved by to_state; raise ValueError if a field is missing or bad."""
        try:
            return cls(**{field.name: state[field.name] for field in dataclasses.fields(cls)})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a saved {cls.__name__}: {exc!r}") from exc


def _float64(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


@dataclass
class LogisticHead(_Head):
    """Softmax classifier: logits = (scale * normalise(x, mean)) @ weight.T + bias."""

    kind: ClassVar[str] = "logistic"

    weight: np.ndarray  # (n_classes, dim)
    bias: np.ndarray  # (n_classes,)
    scale: float

    def __post_init__(self) -> None:
        self.mean, self.weight, self.bias = map(_float64, (self.mean, self.weight, self.bias))
        self.scale = float(self.scale)
        mean, weight, bias = self.mean, self.weight, self.bias
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

    def _logits(self, z: np.ndarray) -> np.ndarray:
        return self.scale * z @ self.weight.T + self.bias


@dataclass
class PrototypeHead(_Head):
    """Nearest class prototype: softmax(temperature * cos(normalise(x, mean), prototype))."""

    kind: ClassVar[str] = "prototype"

    prototypes: np.ndarray  # (n_classes, dim) unit rows; a zero row is a class without images
    temperature: float

    def __post_init__(self) -> None:
        self.mean, self.prototypes = map(_float64, (self.mean, self.prototypes))
        self.temperature = float(self.temperature)
        if (
            self.mean.ndim != 1
            or self.prototypes.ndim != 2
            or self.prototypes.shape[1] != self.mean.shape[0]
        ):
            raise ValueError(
                f"inconsistent PrototypeHead shapes: mean {self.mean.shape}, "
                f"prototypes {self.prototypes.shape}"
            )

    def _logits(self, z: np.ndarray) -> np.ndarray:
        sims = z @ self.prototypes.T
        empty = np.linalg.norm(self.prototypes, axis=1) < 0.5  # rows are unit or exactly zero
        sims[:, empty] = _NO_PROTOTYPE
        return self.temperature * sims


@dataclass
class MultiLabelHead(_Head):
    """One-vs-rest sigmoids: p = sigmoid((scale * normalise(x, mean)) @ weight.T + bias), and a
    category is predicted where p >= its threshold."""

    kind: ClassVar[str] = "multilabel_logistic"

    weight: np.ndarray  # (n_categories, dim)
    bias: np.ndarray  # (n_categories,)
    scale: float
    thresholds: np.ndarray  # (n_categories,) in [0, 1]

    def __post_init__(self) -> None:
        self.mean, self.weight, self.bias, self.thresholds = map(
            _float64, (self.mean, self.weight, self.bias, self.thresholds)
        )
        self.scale = float(self.scale)
        mean, weight = self.mean, self.weight
        n = weight.shape[0] if weight.ndim == 2 else -1
        if (
            mean.ndim != 1
            or weight.ndim != 2
            or weight.shape[1] != mean.shape[0]
            or self.bias.shape != (n,)
            or self.thresholds.shape != (n,)
        ):
            raise ValueError(
                f"inconsistent MultiLabelHead shapes: mean {mean.shape}, weight {weight.shape}, "
                f"bias {self.bias.shape}, thresholds {self.thresholds.shape}"
            )
        if not ((self.thresholds >= 0) & (self.thresholds <= 1)).all():
            raise ValueError(f"thresholds must lie in [0, 1], got {self.thresholds.tolist()}")

    @property
    def n_categories(self) -> int:
        return int(self.weight.shape[0])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Return (N, n_categories) independent probabilities (rows need not sum to 1); raise
        ValueError on a dimension mismatch."""
        shape = np.shape(features)
        if len(shape) != 2 or shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected features of shape (N, {self.mean.shape[0]}), got {shape}")
        return _sigmoid(self._logits(normalise(features, self.mean)))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Return (N, n_categories) booleans: each category's probability >= its threshold."""
        return self.predict_proba(features) >= self.thresholds

    def _logits(self, z: np.ndarray) -> np.ndarray:
        return self.scale * z @ self.weight.T + self.bias


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # exp(-log(1 + exp(-t))) never overflows, whatever the sign of t.
    return np.exp(-np.logaddexp(0.0, -logits))


Head = LogisticHead | PrototypeHead | MultiLabelHead
HEAD_KINDS: dict[str, type[LogisticHead] | type[PrototypeHead] | type[MultiLabelHead]] = {
    cls.kind: cls for cls in (LogisticHead, PrototypeHead, MultiLabelHead)
}
# Kinds earlier versions saved that this one cannot load: the model must be trained again.
_RETIRED_KINDS = {"mlp": "small neural network (MLP)"}


def head_from_state(kind: str, state: dict[str, Any]) -> Head:
    """Return the head of `kind` saved by its to_state; raise ValueError on a bad kind or state."""
    if kind in _RETIRED_KINDS:
        raise ValueError(
            f"this model was saved with the {_RETIRED_KINDS[kind]} head, which this version no "
            f"longer has; retrain the model to use it"
        )
    try:
        cls = HEAD_KINDS[kind]
    except KeyError:
        known = sorted(HEAD_KINDS)
        raise ValueError(f"unknown head kind {kind!r}; expected one of {known}") from None
    return cls.from_state(state)


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

    # A joint run over many problems is big matrix products, which use every core torch may;
    # a small one is thousands of tiny ops, which do not (measured: docs/EXPERIMENTS.md).
    rows = int(train_masks.shape[1]) * len(problems)
    with _fit_threads(joint=rows >= _JOINT_ROWS):
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
    # at a fraction of the cost (N x dim becomes N x N).
    basis = _row_space_basis(x)
    xb = x if basis is None else x @ basis  # (N, r)
    weights, means, means_b, inv_norms = fold_geometry(x, xb, train_masks)
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

    solve_along_path(l2s, folds, weight, bias, solve)
    if basis is not None:
        weight = weight @ basis.T
    return [
        LogisticHead(mean=means[fold].copy(), weight=w, bias=b, scale=FEATURE_SCALE)
        for fold, w, b in zip(folds, weight, bias, strict=True)
    ]


_threads_lock = threading.Lock()


# Rows x problems from which a fit runs on torch's usual threads: 150 curve problems of 735
# rows fit in 2.5 s on 2 threads against 3.4 s on one; a single head on a few hundred rows
# stays on one.
_JOINT_ROWS = 20_000


@contextlib.contextmanager
def _fit_threads(*, joint: bool) -> Iterator[None]:
    """Run torch on one intra-op thread (or, `joint`, the process's count), restoring the
    previous count afterwards."""
    # A fit is thousands of tiny ops, and on a busy machine each multi-threaded one waits for a
    # descheduled worker thread (docs/EXPERIMENTS.md, "Threads"). The thread count is
    # process-wide, so fits are serialised to restore it correctly; other torch work in the
    # process meanwhile also runs on one thread.
    with _threads_lock:
        previous = torch.get_num_threads()
        torch.set_num_threads(previous if joint else 1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def fold_geometry(x: np.ndarray, xb: np.ndarray, train_masks: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per training mask (fold): its row weights (F, N) (1/n_train or 0), its mean (F, dim), the
    same mean in the basis coordinates of `xb`, and 1 / ||x - mean|| per row (F, N)."""
    weights = train_masks / train_masks.sum(axis=1, keepdims=True)
    means = weights @ x
    means_b = weights @ xb
    # 1 / ||x - mean|| per fold from ||x||^2 - 2 x.mean + ||mean||^2: one (F, N) product instead
    # of F passes over (N, dim). The basis is orthonormal and holds x - mean, so norms agree.
    sq = np.einsum("nd,nd->n", xb, xb)
    dist_sq = sq[None, :] - 2.0 * means_b @ xb.T + np.einsum("fd,fd->f", means_b, means_b)[:, None]
    dist = np.sqrt(np.maximum(dist_sq, 0.0))
    # A row equal to its fold's mean normalises to zero (as in normalise()), not to rounding noise.
    exact_zero = dist <= 1e-9 * np.sqrt(np.maximum(sq, _EPS))[None, :]
    inv_norms = np.where(exact_zero, 0.0, 1.0 / np.maximum(dist, _EPS))
    return weights, means, means_b, inv_norms


def solve_along_path(l2s: np.ndarray, folds: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                     solve: Any) -> None:
    """Call solve(index, l2, start_w, start_b) once per distinct l2, strongest first, each
    problem warm-started from its fold's solution at the l2 before (written into weight and
    bias by solve)."""
    previous: dict[int, int] = {}  # fold -> index of its latest solved problem
    for l2 in sorted(set(l2s.tolist()), reverse=True):
        index = np.flatnonzero(l2s == l2)
        if not previous:
            # A cold start at weak l2 is ill-conditioned; a strongly regularised solve converges
            # in a few iterations and starts the path close by.
            solve(index, _PATH_START * l2, weight[index], bias[index])
            previous.update((int(folds[p]), int(p)) for p in index)
        start = [previous.get(int(folds[p])) for p in index]
        zero_w, zero_b = np.zeros_like(weight[0]), np.zeros_like(bias[0])
        start_w = np.stack([weight[q] if q is not None else zero_w for q in start])
        start_b = np.stack([bias[q] if q is not None else zero_b for q in start])
        solve(index, l2, start_w, start_b)
        previous.update((int(folds[p]), int(p)) for p in index)


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
    sums = np.eye(n_classes)[labels].T @ z  # (C, dim)
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
