"""The inline SVG charts and plain words of the model page, on synthetic validated metrics."""

from __future__ import annotations

import re
from xml.etree import ElementTree

import pytest
from markupsafe import Markup

from app.schemas.metrics import (
    CandidateScore,
    ConfusionMatrix,
    LearningCurve,
    MeasuredPoint,
    ProjectedPoint,
)
from app.web.charts import MAX_LABEL_CHARS, confusion_matrix_svg, learning_curve_svg, truncate
from app.web.summary import candidate_rows, chosen_model_sentence, head_name

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


def confusion(labels: list[str], matrix: list[list[int]]) -> Markup:
    return confusion_matrix_svg(ConfusionMatrix(labels=labels, matrix=matrix))


def curve(points: list[tuple[int, float, float]],
          projection: list[tuple[int, float]] | None = None) -> LearningCurve:
    return LearningCurve(
        points=[MeasuredPoint(images_per_class=n, accuracy=accuracy, std=std, n_evaluations=15,
                              n_images=60) for n, accuracy, std in points],
        projection=[ProjectedPoint(images_per_class=n, accuracy=accuracy)
                    for n, accuracy in projection or []],
        curve=None, advice="")


def score(backbone: str, head: str, l2: float | None = None, accuracy: float = 0.8,
          loss: float = 0.5) -> CandidateScore:
    return CandidateScore(backbone=backbone, head=head, l2=l2, cv_accuracy=accuracy,
                          cv_log_loss=loss)


# --- confusion matrix ---------------------------------------------------------------------------


def test_confusion_matrix_has_labels_counts_and_axis_titles() -> None:
    root = parse(confusion(["ants", "bees"], [[7, 3], [1, 9]]))
    shown = texts(root)
    assert shown.count("ants") == 2 and shown.count("bees") == 2  # row and column
    assert {"7", "3", "1", "9"} <= set(shown)
    assert "Predicted category" in shown and "True category" in shown
    assert len(root.findall(f".//{SVG}g")) == 4  # one cell each
    assert "true ants, predicted bees: 3 of 10 (30%)" in titles(root)
    assert root.get("role") == "img"


def test_confusion_matrix_shades_cells_by_row_share() -> None:
    root = parse(confusion(["a", "b"], [[10, 0], [5, 5]]))
    fills = [rect.get("fill") for g in root.iter(f"{SVG}g") for rect in g.iter(f"{SVG}rect")]
    assert fills == ["rgba(22, 128, 78, 0.85)", "rgba(200, 50, 40, 0.00)",
                     "rgba(200, 50, 40, 0.42)", "rgba(22, 128, 78, 0.42)"]


def test_confusion_matrix_escapes_and_truncates_names() -> None:
    evil = '<script>alert("x")</script> & a very long category name indeed'
    svg = confusion([evil, "ok"], [[1, 0], [0, 1]])
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
    svg = confusion(labels, matrix)
    root = parse(svg)
    shown = texts(root)
    # Truncated, the names would all read the same: they are numbered instead.
    assert "1. a rather lon…" in shown and "10. a rather lo…" in shown
    assert len({text for text in shown if text[:1].isdigit() and "." in text}) == 10
    assert len(root.findall(f".//{SVG}g")) == 100
    assert all(len(text) <= MAX_LABEL_CHARS for text in shown if "category" not in text)
    width = float(root.get("width") or 0)
    assert 400 < width < 900  # readable cells, not a poster


def test_confusion_matrix_without_categories_is_empty() -> None:
    assert confusion([], []) == ""


def test_confusion_matrix_describes_every_count_for_screen_readers() -> None:
    root = parse(confusion(["ants", "bees"], [[7, 3], [1, 9]]))
    desc = root.find(f"{SVG}desc")
    assert desc is not None
    assert desc.text == ("16 of 20 images predicted correctly. True ants: predicted ants 7, "
                         "predicted bees 3. True bees: predicted ants 1, predicted bees 9.")


# --- learning curve -----------------------------------------------------------------------------

POINTS = [(1, 0.5, 0.1), (2, 0.62, 0.08), (3, 0.7, 0.07), (5, 0.78, 0.05), (8, 0.83, 0.03),
          (13, 0.86, 0.02)]
PROJECTION = [(32, 0.91), (64, 0.93), (160, 0.95)]


def test_learning_curve_draws_points_error_bars_and_dashed_projection() -> None:
    # Stored in another order than drawn: the chart sorts by size.
    root = parse(learning_curve_svg(curve(POINTS[::-1], PROJECTION), chance=0.5))
    measured = [el for el in root.iter(f"{SVG}polyline") if el.get("class") == "lc-measured"]
    projected = [el for el in root.iter(f"{SVG}polyline") if el.get("class") == "lc-projection"]
    assert len(measured) == 1 and len(measured[0].get("points", "").split()) == 6
    xs = [float(point.split(",")[0]) for point in measured[0].get("points", "").split()]
    assert xs == sorted(xs)
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
    root = parse(learning_curve_svg(curve([(n, 0.5 + n / 100, 0.0) for n in (2, 4, 8)])))
    line = next(root.iter(f"{SVG}polyline"))
    xs = [float(point.split(",")[0]) for point in line.get("points", "").split()]
    assert xs[1] - xs[0] == pytest.approx(xs[2] - xs[1], abs=0.2)


def test_learning_curve_without_spread_has_no_error_bars() -> None:
    root = parse(learning_curve_svg(curve([(n, 0.6 + n / 100, 0.0) for n in (1, 2, 3, 5)])))
    assert not [p for p in root.iter(f"{SVG}path") if p.get("class") == "lc-error"]
    assert not [p for p in root.iter(f"{SVG}polyline") if p.get("class") == "lc-projection"]
    assert "measured" in texts(root) and "projected" not in texts(root)


def test_learning_curve_with_one_point() -> None:
    root = parse(learning_curve_svg(curve([(1, 0.4, 0.2)])))
    assert len(list(root.iter(f"{SVG}circle"))) == 2  # the point and the legend dot
    assert not list(root.iter(f"{SVG}polyline"))  # no line through a single point
    assert "1" in texts(root)
    assert all(re.fullmatch(r"-?\d+(\.\d)?", c.get("cx", "")) for c in root.iter(f"{SVG}circle"))


def test_learning_curve_with_one_point_and_a_projection() -> None:
    root = parse(learning_curve_svg(curve([(2, 0.6, 0.0)], [(6, 0.75)])))
    projected = [el for el in root.iter(f"{SVG}polyline") if el.get("class") == "lc-projection"]
    assert len(projected) == 1 and len(projected[0].get("points", "").split()) == 2


def test_learning_curve_without_points_is_empty() -> None:
    assert learning_curve_svg(curve([])) == ""


def test_learning_curve_zooms_the_y_axis_to_the_data() -> None:
    shown = texts(parse(learning_curve_svg(curve([(3, 0.9, 0.0), (5, 0.94, 0.0)], [(10, 0.97)]))))
    ticks = [t for t in shown if t.endswith("%")]
    assert ticks[0] == "80%" and ticks[-1] == "100%" and "0%" not in ticks
    full = texts(parse(learning_curve_svg(curve([(1, 0.05, 0.0)]))))
    assert "0%" in full and "100%" in full


# --- plain words for the chosen model -----------------------------------------------------------


def test_head_names() -> None:
    assert head_name("logistic") == "logistic regression"
    assert head_name("prototype") == "nearest prototype"
    assert head_name("mlp") == "mlp"  # no longer offered; an old version still names it
    assert head_name("some_new_head") == "some new head"


def test_chosen_model_sentence() -> None:
    candidates = [score(b, h) for b in ("mobilenet_v2", "efficientnet_lite0")
                  for h in ("logistic", "prototype")]
    assert chosen_model_sentence("efficientnet_lite0", "logistic", candidates) == (
        "EfficientNet-Lite0 + logistic regression, chosen among 2 backbones × 2 heads by "
        "cross-validation")
    one = [score("mobilenet_v2", "logistic")]
    assert chosen_model_sentence("mobilenet_v2", "logistic", one) == \
        "MobileNetV2 + logistic regression"
    assert chosen_model_sentence("mobilenet_v2", "prototype", []) == \
        "MobileNetV2 + nearest prototype"
    heads_only = [score("mobilenet_v2", h) for h in ("logistic", "prototype")]
    assert chosen_model_sentence("mobilenet_v2", "prototype", heads_only) == (
        "MobileNetV2 + nearest prototype, chosen among 2 heads by cross-validation")
    backbones_only = [score(b, "logistic") for b in ("mobilenet_v2", "efficientnet_lite2")]
    assert chosen_model_sentence("efficientnet_lite2", "logistic", backbones_only) == (
        "EfficientNet-Lite2 + logistic regression, chosen among 2 backbones by cross-validation")


def test_candidate_rows_sorted_best_first_with_the_chosen_one_marked() -> None:
    rows = candidate_rows([
        score("mobilenet_v2", "logistic", 0.1, accuracy=0.8, loss=0.5),
        score("efficientnet_lite2", "prototype", None, accuracy=0.9, loss=0.3),
        score("efficientnet_lite2", "logistic", 0.1, accuracy=0.9, loss=0.25),
        score("efficientnet_lite2", "logistic", 1.0, accuracy=0.9, loss=0.2),
        score("mobilenet_v2+efficientnet_lite2", "logistic", 1.0, accuracy=0.7, loss=0.6),
    ], backbone="efficientnet_lite2", head="logistic", l2=0.1)
    assert [(r.backbone, r.head, r.l2) for r in rows] == [
        ("EfficientNet-Lite2", "logistic regression", 1.0),
        ("EfficientNet-Lite2", "logistic regression", 0.1),
        ("EfficientNet-Lite2", "nearest prototype", None),
        ("MobileNetV2", "logistic regression", 0.1),
        ("MobileNetV2 + EfficientNet-Lite2", "logistic regression", 1.0),
    ]
    assert [r.is_chosen for r in rows] == [False, True, False, False, False]


def test_confusion_mistakes_link_to_their_images() -> None:
    svg = confusion_matrix_svg(ConfusionMatrix(labels=["ants", "bees & wasps"],
                                               matrix=[[5, 2], [0, 3]]),
                               mistakes_url="/web/models/abc/review")
    root = ElementTree.fromstring(str(svg))
    links = [a.get("href") for a in root.iter(f"{SVG}a")]
    # Only the one mistake with a count links; right answers and empty cells do not.
    assert links == ["/web/models/abc/review?true=ants&predicted=bees+%26+wasps#confusions"]
    plain = ElementTree.fromstring(str(confusion_matrix_svg(ConfusionMatrix(
        labels=["ants", "bees"], matrix=[[5, 2], [0, 3]]))))
    assert list(plain.iter(f"{SVG}a")) == []
