"""The inline SVG charts of the model page, on synthetic data: valid XML, escaped, defensive."""

from __future__ import annotations

import re
from typing import Any
from xml.etree import ElementTree

import pytest
from markupsafe import Markup

from app.web.charts import MAX_LABEL_CHARS, confusion_matrix_svg, learning_curve_svg, truncate
from app.web.summary import backbone_name, candidate_rows, chosen_model_sentence, head_name

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ElementTree.Element:
    assert isinstance(svg, Markup)  # safe for Jinja: rendered as is, not escaped again
    root = ElementTree.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def texts(root: ElementTree.Element) -> list[str]:
    """The visible text of every <text> element (a <title> inside one is its tooltip)."""
    return ["".join(t.itertext()).removeprefix(title.text or "") if (title := t.find(f"{SVG}title"))
            is not None else "".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def titles(root: ElementTree.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}title")]


# --- confusion matrix ---------------------------------------------------------------------------


def test_confusion_matrix_has_labels_counts_and_axis_titles() -> None:
    root = parse(confusion_matrix_svg(["ants", "bees"], [[7, 3], [1, 9]]))
    shown = texts(root)
    assert shown.count("ants") == 2 and shown.count("bees") == 2  # row and column
    assert {"7", "3", "1", "9"} <= set(shown)
    assert "Predicted category" in shown and "True category" in shown
    assert len(root.findall(f".//{SVG}g")) == 4  # one cell each
    assert "true ants, predicted bees: 3 of 10 (30%)" in titles(root)
    assert root.get("role") == "img"


def test_confusion_matrix_shades_cells_by_row_share() -> None:
    root = parse(confusion_matrix_svg(["a", "b"], [[10, 0], [5, 5]]))
    fills = [rect.get("fill") for g in root.iter(f"{SVG}g") for rect in g.iter(f"{SVG}rect")]
    assert fills == ["rgba(22, 128, 78, 0.85)", "rgba(200, 50, 40, 0.00)",
                     "rgba(200, 50, 40, 0.42)", "rgba(22, 128, 78, 0.42)"]


def test_confusion_matrix_escapes_and_truncates_names() -> None:
    evil = '<script>alert("x")</script> & a very long category name indeed'
    svg = confusion_matrix_svg([evil, "ok"], [[1, 0], [0, 1]])
    assert "<script>" not in svg
    root = parse(svg)
    shown = texts(root)
    short = truncate(evil)
    assert len(short) == MAX_LABEL_CHARS and short.endswith("…")
    assert shown.count(short) == 2
    assert titles(root).count(evil) == 2  # full name as the tooltip of both labels


def test_confusion_matrix_with_ten_long_names() -> None:
    labels = [f"a rather long category name number {i}" for i in range(10)]
    matrix = [[(5 if i == j else i % 2) for j in range(10)] for i in range(10)]
    svg = confusion_matrix_svg(labels, matrix)
    root = parse(svg)
    shown = texts(root)
    # Truncated, the names would all read the same: they are numbered instead.
    assert "1. a rather lon…" in shown and "10. a rather lo…" in shown
    assert len({text for text in shown if text[:1].isdigit() and "." in text}) == 10
    assert len(root.findall(f".//{SVG}g")) == 100
    assert all(len(text) <= MAX_LABEL_CHARS for text in shown if "category" not in text)
    width = float(root.get("width") or 0)
    assert 400 < width < 900  # readable cells, not a poster


@pytest.mark.parametrize(("labels", "matrix"), [
    ([], []), (None, None), (["a", "b"], []), (["a", "b"], "not a matrix"), (["a", "b"], [None, "x"]),
])
def test_confusion_matrix_without_data_is_empty(labels: Any, matrix: Any) -> None:
    assert confusion_matrix_svg(labels, matrix) == ""


def test_confusion_matrix_tolerates_ragged_and_odd_cells() -> None:
    root = parse(confusion_matrix_svg(["a", "b", "c"], [[1, "x", None], [2]]))
    assert len(root.findall(f".//{SVG}g")) == 4  # two rows of labels and matrix in common
    assert "true b, predicted b: 0 of 2 (0%)" in titles(root)


# --- learning curve -----------------------------------------------------------------------------

POINTS = [{"images_per_class": n, "accuracy": acc, "std": std}
          for n, acc, std in [(1, 0.5, 0.1), (2, 0.62, 0.08), (3, 0.7, 0.07), (5, 0.78, 0.05),
                              (8, 0.83, 0.03), (13, 0.86, 0.02)]]
PROJECTION = [{"images_per_class": 32, "accuracy": 0.91}, {"images_per_class": 64, "accuracy": 0.93},
              {"images_per_class": 160, "accuracy": 0.95}]


def test_learning_curve_draws_points_error_bars_and_dashed_projection() -> None:
    svg = learning_curve_svg(POINTS, PROJECTION, chance=0.5)
    root = parse(svg)
    measured = [el for el in root.iter(f"{SVG}polyline") if el.get("class") == "lc-measured"]
    projected = [el for el in root.iter(f"{SVG}polyline") if el.get("class") == "lc-projection"]
    assert len(measured) == 1 and len(measured[0].get("points", "").split()) == 6
    assert len(projected) == 1 and projected[0].get("stroke-dasharray")
    # The projection continues from the last measured point.
    assert projected[0].get("points", "").split()[0] == measured[0].get("points", "").split()[-1]
    assert len([p for p in root.iter(f"{SVG}path") if p.get("class") == "lc-error"]) == 6
    assert len(list(root.iter(f"{SVG}circle"))) == 9 + 1  # points, projections, legend dot
    shown = texts(root)
    assert "Accuracy" in shown and "Training images per category (log scale)" in shown
    assert {"1", "2", "5", "10", "20", "50", "100"} <= set(shown)  # log-scale ticks
    assert "100%" in shown and "guessing (50%)" in shown
    assert any("13 images per category → 86.0% ± 2.0%" in t for t in titles(root))
    assert any("projected: 160 images per category → 95%" in t for t in titles(root))


def test_log_scale_spaces_doublings_evenly() -> None:
    root = parse(learning_curve_svg([{"images_per_class": n, "accuracy": 0.5 + n / 100}
                                     for n in (2, 4, 8)]))
    line = next(root.iter(f"{SVG}polyline"))
    xs = [float(point.split(",")[0]) for point in line.get("points", "").split()]
    assert xs[1] - xs[0] == pytest.approx(xs[2] - xs[1], abs=0.2)


def test_learning_curve_without_std_has_no_error_bars() -> None:
    points = [{"images_per_class": n, "accuracy": 0.6 + n / 100} for n in (1, 2, 3, 5)]
    root = parse(learning_curve_svg(points, None))
    assert not [p for p in root.iter(f"{SVG}path") if p.get("class") == "lc-error"]
    assert not [p for p in root.iter(f"{SVG}polyline") if p.get("class") == "lc-projection"]
    assert "measured" in texts(root) and "projected" not in texts(root)


def test_learning_curve_with_one_point() -> None:
    root = parse(learning_curve_svg([{"images_per_class": 1, "accuracy": 0.4, "std": 0.2}], []))
    assert len(list(root.iter(f"{SVG}circle"))) == 2  # the point and the legend dot
    assert not list(root.iter(f"{SVG}polyline"))  # no line through a single point
    assert "1" in texts(root)
    assert all(re.fullmatch(r"-?\d+(\.\d)?", c.get("cx", "")) for c in root.iter(f"{SVG}circle"))


def test_learning_curve_with_one_point_and_a_projection() -> None:
    root = parse(learning_curve_svg([{"images_per_class": 2, "accuracy": 0.6}],
                                    [{"images_per_class": 6, "accuracy": 0.75}]))
    projected = [el for el in root.iter(f"{SVG}polyline") if el.get("class") == "lc-projection"]
    assert len(projected) == 1 and len(projected[0].get("points", "").split()) == 2


@pytest.mark.parametrize(("points", "projection"), [
    ([], []), (None, None), ([], None), ("junk", 3),
    ([{"images_per_class": 0, "accuracy": 0.5}, {"accuracy": 0.5}, {"images_per_class": 3}],
     [{"images_per_class": "many", "accuracy": 0.9}]),
])
def test_learning_curve_without_points_is_empty(points: Any, projection: Any) -> None:
    assert learning_curve_svg(points, projection) == ""


def test_learning_curve_zooms_the_y_axis_to_the_data() -> None:
    points = [{"images_per_class": n, "accuracy": acc} for n, acc in [(3, 0.9), (5, 0.94)]]
    shown = texts(parse(learning_curve_svg(points, [{"images_per_class": 10, "accuracy": 0.97}])))
    ticks = [t for t in shown if t.endswith("%")]
    assert ticks[0] == "80%" and ticks[-1] == "100%" and "0%" not in ticks
    full = texts(parse(learning_curve_svg([{"images_per_class": 1, "accuracy": 0.05}])))
    assert "0%" in full and "100%" in full


def test_learning_curve_clamps_out_of_range_values() -> None:
    root = parse(learning_curve_svg([{"images_per_class": 1, "accuracy": 1.3, "std": 0.5},
                                     {"images_per_class": 4, "accuracy": -0.2, "std": float("nan")}]))
    assert "0%" in texts(root) and "100%" in texts(root)


# --- plain words for the chosen model -----------------------------------------------------------


def test_backbone_and_head_names() -> None:
    assert backbone_name("efficientnet_lite2") == "EfficientNet-Lite2"
    assert backbone_name("mobilenet_v2+efficientnet_lite2") == \
        "MobileNetV2 and EfficientNet-Lite2 combined"
    assert backbone_name("some_new_net") == "some new net"
    assert backbone_name(None) == "unknown backbone"
    assert head_name("logistic") == "logistic regression" and head_name("mlp").startswith("small")


def test_chosen_model_sentence() -> None:
    candidates = [{"backbone": b, "head": h} for b in ("mobilenet_v2", "efficientnet_lite0")
                  for h in ("logistic", "prototype", "mlp")]
    assert chosen_model_sentence("efficientnet_lite0", "logistic", candidates) == (
        "EfficientNet-Lite0 + logistic regression, chosen among 2 backbones × 3 heads by "
        "cross-validation")
    one = [{"backbone": "mobilenet_v2", "head": "logistic"}]
    assert chosen_model_sentence("mobilenet_v2", "logistic", one) == \
        "MobileNetV2 + logistic regression"
    assert chosen_model_sentence("mobilenet_v2", "logistic", None) == \
        "MobileNetV2 + logistic regression"
    heads_only = [{"backbone": "mobilenet_v2", "head": h} for h in ("logistic", "mlp")]
    assert chosen_model_sentence("mobilenet_v2", "mlp", heads_only) == (
        "MobileNetV2 + small neural network (MLP), chosen among 2 heads by cross-validation")


def test_candidate_rows_sorted_best_first_with_the_chosen_one_marked() -> None:
    rows = candidate_rows([
        {"backbone": "mobilenet_v2", "head": "logistic", "l2": 0.1, "cv_accuracy": 0.8,
         "cv_log_loss": 0.5},
        {"backbone": "efficientnet_lite2", "head": "mlp", "l2": 0.1, "cv_accuracy": 0.9,
         "cv_log_loss": 0.3},
        {"backbone": "efficientnet_lite2", "head": "logistic", "l2": 1.0, "cv_accuracy": 0.9,
         "cv_log_loss": 0.2},
        {"backbone": "efficientnet_lite0", "head": "logistic"},  # scores missing
        "not a row",
    ], backbone="efficientnet_lite2", head="logistic", l2=1.0)
    assert [(r["backbone"], r["head"]) for r in rows] == [
        ("EfficientNet-Lite2", "logistic regression"),
        ("EfficientNet-Lite2", "small neural network (MLP)"),
        ("MobileNetV2", "logistic regression"),
        ("EfficientNet-Lite0", "logistic regression"),
    ]
    assert [r["chosen"] for r in rows] == [True, False, False, False]
    assert rows[-1]["cv_accuracy"] is None
    assert candidate_rows("nope") == []
