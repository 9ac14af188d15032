import numpy as np
import pytest
from PIL import Image

from app.ml.augment import DEFAULT_VIEWS, augment, view_rng

HASH = "ab" * 32


def _photo(width=120, height=80, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def test_view_zero_is_the_image_itself():
    image = _photo()
    assert augment(image, image_hash=HASH, view=0) is image


def test_a_view_is_the_same_pixels_every_time():
    image = _photo()
    first = np.asarray(augment(image, image_hash=HASH, view=3))
    again = np.asarray(augment(image.copy(), image_hash=HASH, view=3))
    np.testing.assert_array_equal(first, again)


def test_views_and_images_get_different_augmentations():
    image = _photo()
    views = [np.asarray(augment(image, image_hash=HASH, view=v)) for v in (1, 2)]
    other = np.asarray(augment(image, image_hash="cd" * 32, view=1))
    assert views[0].shape != views[1].shape or not np.array_equal(views[0], views[1])
    assert views[0].shape != other.shape or not np.array_equal(views[0], other)


def test_the_generator_depends_only_on_hash_and_view():
    a = view_rng(image_hash=HASH, view=1).random(4)
    np.testing.assert_array_equal(a, view_rng(image_hash=HASH, view=1).random(4))
    assert not np.array_equal(a, view_rng(image_hash=HASH, view=2).random(4))


def test_output_is_a_square_rgb_crop_of_half_to_all_of_the_area():
    image = _photo(200, 150)
    for view in range(1, 30):
        out = augment(image, image_hash=HASH, view=view)
        assert out.mode == "RGB" and out.width == out.height
        # Squaring keeps the pixel count of a crop covering 0.5-1.0 of the image area.
        assert 0.45 * 200 * 150 <= out.width * out.height <= 200 * 150 * 1.01


def test_mild_jitter_keeps_the_picture_recognisable():
    # A flat grey image stays flat grey-ish: brightness/contrast/saturation move it by <= 20 %.
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    for view in range(1, 10):
        pixels = np.asarray(augment(image, image_hash=HASH, view=view), dtype=float)
        assert 128 * 0.75 <= pixels.mean() <= 128 * 1.25


@pytest.mark.parametrize("size", [(1, 1), (4000, 10), (10, 4000)])
def test_extreme_shapes_still_give_an_image(size):
    out = augment(Image.new("RGB", size, "red"), image_hash=HASH, view=1)
    assert out.width >= 1 and out.height >= 1


def test_non_rgb_input_is_converted():
    out = augment(Image.new("L", (50, 40), 100), image_hash=HASH, view=2)
    assert out.mode == "RGB"


def test_negative_views_are_rejected():
    with pytest.raises(ValueError):
        augment(_photo(), image_hash=HASH, view=-1)


def test_default_views_is_small():
    assert 0 <= DEFAULT_VIEWS <= 8


def test_augmented_views_stop_once_the_smallest_category_is_large():
    from app.ml.augment import AUGMENT_BELOW, augmented_views

    assert augmented_views(1) == DEFAULT_VIEWS
    assert augmented_views(AUGMENT_BELOW - 1) == DEFAULT_VIEWS
    assert augmented_views(AUGMENT_BELOW) == 0
    assert augmented_views(10_000) == 0
