"""The backbone registry as plain data: what each backbone is, without importing torch.

Settings validate `NANONET_BACKBONES` against it and the web page takes display names from it,
so it must stay cheap to import. Loading the networks lives in app/ml/backbones.py. The facts
behind the figures (preprocessing, weight files) are in docs/BACKBONES.md, the measurements
behind the ranks in docs/EXPERIMENTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Resample = Literal["bilinear", "bicubic"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs in [-1, 1]; ImageNet mean/std hurts its features.
_LITE_MEAN = (0.5, 0.5, 0.5)
_LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Network:
    """One pretrained network from a wheel: its pooled features and the input it expects."""

    dim: int
    input_size: int
    crop_pct: float  # share of the shorter side kept by the centre crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: Resample
    # Mean norm of a centred feature vector; a composite divides each block by it so that no
    # network dominates the cosine.
    typical_norm: float
    weights_sha256: str


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone model selection can choose: one network, or several networks side by side."""

    name: str
    display_name: str
    # 1 transfers best from few images; the prior that breaks near-ties in selection.
    few_shot_rank: int
    is_default_candidate: bool
    # The plain backbones whose features, concatenated, make up this one: (name,) if plain.
    components: tuple[str, ...]
    network: Network | None = None  # set exactly for plain backbones
    # The features the unknown-image detector uses whenever they are among the candidates.
    is_unknown_detector: bool = False


def _lite(
    index: int,
    size: int,
    typical_norm: float,
    sha256: str,
    *,
    few_shot_rank: int,
    is_default_candidate: bool,
    is_unknown_detector: bool = False,
) -> BackboneSpec:
    name = f"efficientnet_lite{index}"
    network = Network(
        dim=1280,
        input_size=size,
        crop_pct=size / (size + 32),  # Resize(size + 32) + CenterCrop(size), as the TF reference
        mean=_LITE_MEAN,
        std=_LITE_STD,
        resample="bicubic",
        typical_norm=typical_norm,
        weights_sha256=sha256,
    )
    return BackboneSpec(
        name=name,
        display_name=f"EfficientNet-Lite{index}",
        components=(name,),
        network=network,
        few_shot_rank=few_shot_rank,
        is_default_candidate=is_default_candidate,
        is_unknown_detector=is_unknown_detector,
    )


# Registry order is the order `all` lists candidates in: single networks from the cheapest.
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="mobilenet_v2",
            display_name="MobileNetV2",
            few_shot_rank=5,
            is_default_candidate=True,
            components=("mobilenet_v2",),
            network=Network(
                dim=1280,
                input_size=224,
                crop_pct=0.875,  # Resize(256) + CenterCrop(224)
                mean=_IMAGENET_MEAN,
                std=_IMAGENET_STD,
                resample="bilinear",
                typical_norm=16.5,
                weights_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            ),
        ),
        _lite(
            0, 224, 12.5, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            few_shot_rank=4, is_default_candidate=False,
        ),
        _lite(
            1, 240, 10.7, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            few_shot_rank=3, is_default_candidate=False,
        ),
        _lite(
            2, 260, 9.5, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
            few_shot_rank=1, is_default_candidate=True, is_unknown_detector=True,
        ),
        BackboneSpec(
            name="mobilenet_v2+efficientnet_lite2",
            display_name="MobileNetV2 + EfficientNet-Lite2",
            few_shot_rank=2,
            is_default_candidate=True,
            components=("mobilenet_v2", "efficientnet_lite2"),
        ),
    )
}

AUTO = "auto"
ALL = "all"


def all_backbones() -> tuple[str, ...]:
    """Return every registered backbone name, plain and composite, in registry order."""
    return tuple(BACKBONES)


def default_candidates() -> tuple[str, ...]:
    """Return the backbones selection tries by default (`auto`), in registry order."""
    return tuple(name for name, spec in BACKBONES.items() if spec.is_default_candidate)


def few_shot_order() -> tuple[str, ...]:
    """Return every registered backbone, best few-shot transfer first."""
    return tuple(sorted(BACKBONES, key=lambda name: BACKBONES[name].few_shot_rank))


def few_shot_rank(name: str) -> int:
    """Return the backbone's few-shot rank (1 is best); an unregistered name ranks last."""
    spec = BACKBONES.get(name)
    return spec.few_shot_rank if spec is not None else len(BACKBONES) + 1


def unknown_detector() -> str:
    """Return the backbone whose features the unknown-image detector prefers."""
    (name,) = (name for name, spec in BACKBONES.items() if spec.is_unknown_detector)
    return name


def display_name(name: str) -> str:
    """Return the name a person reads, e.g. 'EfficientNet-Lite2'; an unknown name as given.

    An unregistered composite 'a+b' reads as its parts' display names joined by ' + '.
    """
    spec = BACKBONES.get(name)
    if spec is not None:
        return spec.display_name
    if "+" in name:
        return " + ".join(display_name(part) for part in name.split("+"))
    return name


def parse_backbones(value: str) -> tuple[str, ...]:
    """Return the names `auto`, `all` or a comma list stands for; raise ValueError on others."""
    choice = value.strip()
    if choice == AUTO:
        return default_candidates()
    if choice == ALL:
        return all_backbones()
    names = tuple(dict.fromkeys(part.strip() for part in choice.split(",") if part.strip()))
    unknown = [name for name in names if name not in BACKBONES]
    if unknown or not names:
        given = ", ".join(repr(name) for name in unknown) or repr(value)
        raise ValueError(
            f"unknown backbone {given}; use {AUTO!r}, {ALL!r} or a comma list of: "
            f"{', '.join(BACKBONES)}"
        )
    return names
