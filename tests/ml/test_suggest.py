import io

import numpy as np
import pytest
from PIL import Image

from app.ml.review import DUPLICATE_BACKBONE, DUPLICATE_COSINE
from app.ml.suggest import margins, reason, suggestions
from app.storage import sha256_hex
from tests.ml.conftest import DATASETS, dataset_rows, image_loader


def _probs(*top_two):
    """Two-class probabilities whose first column is each given value."""
    first = np.array(top_two, dtype=np.float64)
    return np.stack([first, 1 - first], axis=1)


def _distinct(n, dim=32, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim))


def test_margin_is_between_the_two_most_probable_categories():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.45, 0.45], [0.05, 0.15, 0.8]])
    top, second, gap = margins(probs)
    assert top.tolist() == [0, 1, 2] and second.tolist() == [1, 2, 1]
    assert gap == pytest.approx([0.2, 0.0, 0.65])


def test_least_certain_come_first():
    probs = _probs(0.9, 0.55, 0.3, 0.99, 0.62, 0.5)  # margins .8 .1 .4 .98 .24 0
    chosen = suggestions(probs, _distinct(6), limit=10)
    assert [s.row for s in chosen] == [5, 1, 4, 2, 0, 3]
    assert [s.margin for s in chosen] == pytest.approx([0.0, 0.1, 0.24, 0.4, 0.8, 0.98])
    third = chosen[2]
    assert (third.predicted, third.runner_up) == (0, 1)
    assert third.probability == pytest.approx(0.62)
    assert chosen[3].predicted == 1 and chosen[3].probability == pytest.approx(0.7)


def test_limit_keeps_the_least_certain_and_an_empty_pool_gives_none():
    probs = _probs(0.9, 0.55, 0.3, 0.99)
    assert [s.row for s in suggestions(probs, _distinct(4), limit=2)] == [1, 2]
    assert suggestions(probs, _distinct(4), limit=0) == []
    assert suggestions(np.zeros((0, 2)), np.zeros((0, 8)), limit=20) == []


def test_a_near_copy_of_a_chosen_image_is_skipped():
    features = _distinct(6)
    features[4] = features[1] + 0.01 * _distinct(1, seed=9)[0]  # a copy of row 1
    probs = _probs(0.9, 0.52, 0.3, 0.99, 0.51, 0.6)  # the copy is less certain than row 1
    chosen = [s.row for s in suggestions(probs, features, limit=10)]
    assert chosen == [4, 5, 2, 0, 3]  # row 1 is the copy of the already chosen row 4
    # Skipped because of the threshold, not for any other reason.
    assert 1 in [s.row for s in suggestions(probs, features, limit=10, threshold=1.01)]
    # The copy does not take a place: the limit still fills with other images.
    assert [s.row for s in suggestions(probs, features, limit=3)] == [4, 5, 2]


def test_features_are_centred_on_the_model_not_on_the_pool_alone():
    rng = np.random.default_rng(1)
    context = 0.25 * rng.normal(size=(40, 16))  # the model's labelled images
    far = np.zeros(16)
    far[0] = 10.0
    # Two different images and one far from both: centred on these three alone, the two point
    # the same way (away from the third) and would count as copies.
    pool = np.vstack([0.25 * rng.normal(size=(2, 16)), far])
    probs = _probs(0.5, 0.55, 0.6)
    assert len(suggestions(probs, pool, limit=5, context=context)) == 3
    assert len(suggestions(probs, pool, limit=5)) == 2
    # Centred at all: a large offset every image shares does not make them copies.
    offset = rng.normal(size=(2, 16)) + 5.0
    assert len(suggestions(_probs(0.5, 0.55), offset, limit=5, context=context + 5.0)) == 2


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="one row per probability"):
        suggestions(_probs(0.5, 0.6), _distinct(3), limit=5)
    with pytest.raises(ValueError, match="classes >= 2"):
        suggestions(np.ones((3, 1)), _distinct(3), limit=5)


def test_reason_reads_as_a_sentence():
    names = ["ants", "bees"]
    torn, leaning, sure = suggestions(_probs(0.52, 0.75, 0.97), _distinct(3), limit=3)
    assert reason(names, torn) == "The model is torn between ants (52%) and bees (48%)."
    assert reason(names, leaning).startswith("The model leans to ants (75%)")
    assert "bees (25%)" in reason(names, leaning)
    assert reason(names, sure).startswith("The model is fairly sure it is ants (97%)")


@pytest.mark.slow
def test_a_photo_and_its_reencoded_copy_are_suggested_once(feature_cache):
    rows = dataset_rows("hymenoptera", "train")
    paths = [DATASETS / "hymenoptera" / row["path"] for row in rows[:60]]
    with Image.open(paths[0]) as opened:
        buffer = io.BytesIO()
        opened.convert("RGB").save(buffer, "JPEG", quality=50)
    copy = buffer.getvalue()

    def load_copy():
        with Image.open(io.BytesIO(copy)) as image:
            return image.convert("RGB")

    items = [(row["sha256"], image_loader(path)) for row, path in zip(rows, paths, strict=False)]
    features = feature_cache.features_for(DUPLICATE_BACKBONE, items + [(sha256_hex(copy),
                                                                        load_copy)])
    pool = np.vstack([features[:20], features[-1:]])  # 20 photos, then the copy of photo 0
    context = features[20:60]  # the model's labelled images
    # The copy is the least certain, its original next: only the copy is suggested.
    probs = _probs(0.51, *np.linspace(0.6, 0.99, 19), 0.5)
    chosen = suggestions(probs, pool, limit=100, context=context)
    assert [s.row for s in chosen] == [20, *range(1, 20)]
    unit_cosines = suggestions(probs, pool, limit=100, context=context, threshold=1.01)
    assert len(unit_cosines) == 21
    assert DUPLICATE_COSINE == 0.80  # the review's rule, not a second one
