import pytest

from app.ml.registry import (
    BACKBONES,
    all_backbones,
    default_candidates,
    display_name,
    few_shot_order,
    few_shot_rank,
    parse_backbones,
    unknown_detector,
)

COMPOSITE = "mobilenet_v2+efficientnet_lite2"


def test_every_backbone_is_one_registry_entry_composites_included():
    assert all_backbones() == (
        "mobilenet_v2",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        COMPOSITE,
    )
    for name, spec in BACKBONES.items():
        assert spec.name == name
        # A plain backbone is its own one network; a composite has none and names its parts.
        assert (spec.network is not None) == (spec.components == (name,))
        assert all(BACKBONES[part].network is not None for part in spec.components)
    assert BACKBONES[COMPOSITE].components == ("mobilenet_v2", "efficientnet_lite2")
    ranks = sorted(spec.few_shot_rank for spec in BACKBONES.values())
    assert ranks == list(range(1, len(BACKBONES) + 1))  # a strict order, no ties


def test_the_lists_selection_uses_come_from_the_registry():
    assert default_candidates() == ("mobilenet_v2", "efficientnet_lite2", COMPOSITE)
    assert few_shot_order() == (
        "efficientnet_lite2",
        COMPOSITE,
        "efficientnet_lite1",
        "efficientnet_lite0",
        "mobilenet_v2",
    )
    assert few_shot_rank("efficientnet_lite2") == 1
    assert few_shot_rank("resnet50") > few_shot_rank("mobilenet_v2")  # unknown names rank last
    assert unknown_detector() == "efficientnet_lite2"


def test_display_names_for_plain_composite_and_unknown_backbones():
    assert display_name("efficientnet_lite2") == "EfficientNet-Lite2"
    assert display_name("mobilenet_v2") == "MobileNetV2"
    assert display_name(COMPOSITE) == "MobileNetV2 + EfficientNet-Lite2"
    assert display_name("efficientnet_lite0+efficientnet_lite1") == (
        "EfficientNet-Lite0 + EfficientNet-Lite1"
    )
    assert display_name("resnet50") == "resnet50"
    assert display_name("") == ""


def test_parse_backbones_accepts_auto_all_and_a_comma_list():
    assert parse_backbones("auto") == default_candidates()
    assert parse_backbones(" all ") == all_backbones()
    assert parse_backbones(f"efficientnet_lite2, {COMPOSITE},") == ("efficientnet_lite2", COMPOSITE)
    assert parse_backbones("mobilenet_v2,mobilenet_v2") == ("mobilenet_v2",)


@pytest.mark.parametrize("value", ["resnet50", "mobilenet_v2,resnet50", "", " , ", "AUTO"])
def test_parse_backbones_refuses_unknown_names_and_names_the_choices(value):
    with pytest.raises(ValueError, match="use 'auto', 'all' or a comma list of: mobilenet_v2, "):
        parse_backbones(value)
