"""Tests for app.ml.imaging: the decode path shared by training uploads and prediction."""

from __future__ import annotations

import io
import pickle
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, ImageDraw, ImageFile, JpegImagePlugin

from app.ml import imaging
from app.ml.imaging import (
    ALLOWED_FORMATS,
    BACKGROUND,
    DecodedImage,
    ImageRejected,
    center_crop_resize,
    decode_image,
)

ROOT = Path(__file__).resolve().parents[2]
BAD_INPUTS = ROOT.parent / "shared" / "datasets" / "bad_inputs"

STATUS_BY_CODE = {
    "empty_file": 400,
    "not_an_image": 415,
    "unsupported_format": 415,
    "corrupt_image": 422,
    "image_too_large": 413,
    "file_too_large": 413,
}

# file -> ("rejected", code) or ("accepted", format, (width, height), image size)
BAD_INPUT_TABLE = {
    "truncated.jpg": ("rejected", "corrupt_image"),
    "empty.jpg": ("rejected", "empty_file"),
    "not_an_image.jpg": ("rejected", "not_an_image"),
    "bomb_30000x30000.png": ("rejected", "image_too_large"),
    "bomb_12000x12000.png": ("rejected", "image_too_large"),
    "rgba_alpha.png": ("accepted", "PNG", (256, 256), (256, 256)),
    "grayscale.jpg": ("accepted", "JPEG", (320, 240), (320, 240)),
    "cmyk.jpg": ("accepted", "JPEG", (320, 240), (320, 240)),
    "tiny_1x1.jpg": ("accepted", "JPEG", (1, 1), (1, 1)),
    "wide_4000x10.jpg": ("accepted", "JPEG", (4000, 10), (1024, 3)),
    "animated.gif": ("accepted", "GIF", (64, 64), (64, 64)),
    "image.webp": ("accepted", "WEBP", (320, 240), (320, 240)),
    "exif_rotated.jpg": ("accepted", "JPEG", (300, 400), (300, 400)),
    "jpeg_named.png": ("accepted", "JPEG", (320, 240), (320, 240)),
    "gray16.png": ("accepted", "PNG", (256, 64), (256, 64)),
}


def read(name: str) -> bytes:
    return (BAD_INPUTS / name).read_bytes()


def decode(name: str, **limits: int) -> DecodedImage:
    return decode_image(read(name), **limits)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def rejection(data: bytes, **limits: int) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, **limits)
    return info.value


def pixel(result: DecodedImage, xy: tuple[int, int]) -> tuple[int, int, int]:
    return result.image.getpixel(xy)


def close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def scene(w: int, h: int) -> Image.Image:
    """A smooth photo-like RGB picture: gradients plus large soft shapes, no pixel noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(1, w - 1)
    g = 255 * y / max(1, h - 1)
    b = 127 + 127 * np.sin((x + y) / 40.0)
    img = Image.fromarray(np.stack([r, g, b], axis=-1).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse((w * 0.15, h * 0.2, w * 0.55, h * 0.8), fill=(240, 220, 30))
    draw.rectangle((w * 0.6, h * 0.3, w * 0.9, h * 0.7), fill=(30, 90, 200))
    return img


def assert_valid(result: DecodedImage, max_side: int = 1024) -> None:
    assert result.image.mode == "RGB"
    assert min(result.image.size) >= 1 and max(result.image.size) <= max_side
    assert result.width >= 1 and result.height >= 1
    assert result.format in ALLOWED_FORMATS


# ---------------------------------------------------------------- every file in bad_inputs


def test_table_covers_every_bad_input() -> None:
    on_disk = {p.name for p in BAD_INPUTS.iterdir() if p.suffix not in (".md", ".py")}
    assert on_disk == set(BAD_INPUT_TABLE)


@pytest.mark.parametrize("name", sorted(BAD_INPUT_TABLE))
def test_bad_input(name: str) -> None:
    expected = BAD_INPUT_TABLE[name]
    if expected[0] == "rejected":
        error = rejection(read(name))
        assert error.code == expected[1]
        assert error.status == STATUS_BY_CODE[error.code]
        assert error.message and str(error) == error.message
        return
    _, fmt, (width, height), size = expected
    result = decode(name)
    assert_valid(result)
    assert (result.format, result.width, result.height) == (fmt, width, height)
    assert result.image.size == size


def test_bomb_message_names_the_header_dimensions() -> None:
    message = rejection(read("bomb_30000x30000.png")).message
    assert message == ("The image is 30000x30000 = 900.0 megapixels; the limit is 40 megapixels.")


def test_bomb_rejected_from_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile):
        loads.append(self)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    data = read("bomb_12000x12000.png")
    tracemalloc.start()
    try:
        error = rejection(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.code == "image_too_large"
    assert "12000x12000 = 144.0 megapixels" in error.message
    assert loads == []
    assert peak < 50 * 1024 * 1024


# ---------------------------------------------------------------- pixel checks


def test_exif_orientation_puts_red_band_on_top() -> None:
    result = decode("exif_rotated.jpg")
    assert result.image.size == (300, 400)
    red = (220, 0, 0)
    for x in (10, 150, 290):
        assert close(pixel(result, (x, 20)), red, tol=30)
        assert not close(pixel(result, (x, 390)), red, tol=60)
    assert close(pixel(result, (150, 300)), (0, 0, 0), tol=30)  # arrow shaft, bottom centre


def test_gray16_keeps_its_gradient() -> None:
    result = decode("gray16.png")
    gray = np.asarray(result.image.convert("L"), dtype=np.float64)
    columns = gray.mean(axis=0)
    assert columns[:8].mean() < 10
    assert columns[-8:].mean() > 245
    assert np.all(np.diff(columns) >= 0)  # monotonic left to right
    assert 120 < gray.mean() < 135  # not clipped to white


def test_alpha_composited_over_white() -> None:
    result = decode("rgba_alpha.png")
    assert BACKGROUND == (255, 255, 255)
    for corner in ((0, 0), (255, 0), (0, 255), (255, 255)):
        assert pixel(result, corner) == BACKGROUND
    assert pixel(result, (128, 60)) == (220, 40, 40)  # opaque red disc
    # Half-transparent blue bar outside the disc: (40, 40, 220) at alpha 128 over white.
    assert close(pixel(result, (240, 128)), (147, 147, 237), tol=2)


def test_cmyk_matches_the_same_scene_in_rgb() -> None:
    cmyk = np.asarray(decode("cmyk.jpg").image, dtype=np.float64)
    rgb = np.asarray(decode("jpeg_named.png").image, dtype=np.float64)
    assert cmyk.shape == rgb.shape == (240, 320, 3)
    assert np.abs(cmyk - rgb).mean() < 8


def test_grayscale_expands_to_three_equal_channels() -> None:
    pixels = np.asarray(decode("grayscale.jpg").image)
    assert pixels.shape == (240, 320, 3)
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    assert np.array_equal(pixels[..., 1], pixels[..., 2])


def test_animated_gif_uses_first_frame_only(monkeypatch: pytest.MonkeyPatch) -> None:
    frames: list[int] = []
    original = GifImagePlugin.GifImageFile.seek

    def spy(self: GifImagePlugin.GifImageFile, frame: int) -> None:
        frames.append(frame)
        original(self, frame)

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "seek", spy)
    result = decode("animated.gif")
    assert set(frames) <= {0}
    assert close(pixel(result, (14, 30)), (200, 0, 0), tol=20)  # frame 0's disc spans x 4..24
    assert pixel(result, (40, 30)) == (255, 255, 255)


def test_tiny_image_is_one_rgb_pixel() -> None:
    result = decode("tiny_1x1.jpg")
    assert close(pixel(result, (0, 0)), (200, 30, 30), tol=20)


def test_wide_image_never_gets_a_zero_side() -> None:
    assert decode("wide_4000x10.jpg", max_side=100).image.size == (100, 1)
    assert decode_image(encode(Image.new("RGB", (1, 5000)), "PNG")).image.size == (1, 1024)


# ---------------------------------------------------------------- limits


def test_file_too_large_before_decoding() -> None:
    blob = random.Random(0).randbytes(30 * 1024 * 1024)
    error = rejection(blob)
    assert (error.code, error.status) == ("file_too_large", 413)
    assert "the limit is 20 MB" in error.message


def test_max_bytes_is_inclusive() -> None:
    data = encode(Image.new("RGB", (8, 8)), "PNG")
    assert decode_image(data, max_bytes=len(data)).image.size == (8, 8)
    assert rejection(data, max_bytes=len(data) - 1).code == "file_too_large"


def test_max_pixels_is_a_parameter() -> None:
    data = encode(Image.new("RGB", (100, 100), (0, 128, 0)), "PNG")
    error = rejection(data, max_pixels=5000)
    assert (error.code, error.status) == ("image_too_large", 413)
    assert error.message == (
        "The image is 100x100 = 0.0 megapixels; the limit is 0.005 megapixels."
    )
    assert decode_image(data, max_pixels=10_000).image.size == (100, 100)


def test_large_jpeg_decodes_at_reduced_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    drafts: list[tuple[str, tuple[int, int]]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None):
        result = original(self, mode, size)
        drafts.append((mode, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    photo = encode(scene(3000, 2100), "JPEG", quality=90)
    result = decode_image(photo, max_side=700)
    # libjpeg decoded at quarter scale: 1/8 would put the short side under DRAFT_SIDE (384)
    assert drafts == [("RGB", (750, 525))]
    assert (result.width, result.height) == (3000, 2100)
    assert result.image.size == (700, 490)
    drafts.clear()
    assert decode_image(photo).image.size == (750, 525)  # under max_side: no shrink at all
    drafts.clear()
    assert decode_image(photo, max_side=700, draft_side=700).image.size == (700, 490)
    assert drafts == [("RGB", (1500, 1050))]  # half scale, both sides kept >= 700


def test_the_draft_side_leaves_every_backbone_input_without_upscaling() -> None:
    import math

    from app.ml.augment import CROP_SCALE
    from app.ml.registry import BACKBONES

    for spec in BACKBONES.values():
        network = spec.network
        if network is None:
            continue
        eval_crop = network.input_size / network.crop_pct
        smallest_augmented_crop = network.input_size / math.sqrt(CROP_SCALE[0])
        assert math.ceil(max(eval_crop, smallest_augmented_crop)) <= imaging.DRAFT_SIDE


def test_rotated_large_jpeg_reports_displayed_full_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(scene(3001, 2000), "JPEG", exif=exif.tobytes())
    result = decode_image(data, max_side=500)
    assert (result.width, result.height) == (2000, 3001)
    assert result.image.size == (333, 500)


# ---------------------------------------------------------------- formats and pixel modes


def test_unsupported_formats_are_named_not_decoded() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    error = rejection(eps)
    assert (error.code, error.status) == ("unsupported_format", 415)
    assert error.message.startswith("EPS images are not supported")
    error = rejection(encode(Image.new("RGB", (16, 16)), "ICO"))
    assert (error.code, error.message.split()[0]) == ("unsupported_format", "ICO")


def test_damaged_header_of_allowed_format_is_corrupt() -> None:
    error = rejection(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert (error.code, error.status) == ("corrupt_image", 422)
    assert "PNG" in error.message


@pytest.mark.parametrize(
    ("mode", "value", "fmt", "params", "expected"),
    [
        ("1", 1, "PNG", {}, (255, 255, 255)),
        ("L", 100, "BMP", {}, (100, 100, 100)),
        ("P", 3, "PNG", {}, (3, 3, 3)),
        ("P", 3, "PNG", {"transparency": 3}, BACKGROUND),
        ("L", 100, "PNG", {"transparency": 100}, BACKGROUND),
        ("RGB", (1, 2, 3), "PNG", {"transparency": (1, 2, 3)}, BACKGROUND),
        ("LA", (0, 0), "PNG", {}, BACKGROUND),
        ("LA", (0, 255), "PNG", {}, (0, 0, 0)),
        ("RGBA", (255, 0, 0, 128), "WEBP", {"lossless": True}, (255, 127, 127)),
        ("I;16", 0x8000, "PNG", {}, (128, 128, 128)),
        ("I;16", 0x8000, "PNG", {"transparency": 0x8000}, BACKGROUND),
        ("I;16B", 0xFF00, "TIFF", {}, (255, 255, 255)),
        ("I", 1000, "TIFF", {}, (3, 3, 3)),  # 0..65535 values: treated as 16-bit, like I;16
        ("F", 0.5, "TIFF", {}, (128, 128, 128)),  # 0..1 floats
        ("CMYK", (0, 255, 255, 0), "TIFF", {}, (255, 0, 0)),
        ("YCbCr", (76, 85, 255), "TIFF", {}, (254, 0, 0)),
        ("LAB", (136, 208, 195), "TIFF", {}, (255, 0, 0)),  # L*2.55, a+128, b+128
    ],
)
def test_pixel_modes_become_rgb(
    mode: str, value: object, fmt: str, params: dict, expected: tuple[int, int, int]
) -> None:
    img = Image.new(mode, (4, 4), value)
    if mode == "P":
        img.putpalette([v for i in range(256) for v in (i, i, i)])
    result = decode_image(encode(img, fmt, **params))
    assert result.image.mode == "RGB"
    assert close(pixel(result, (1, 1)), expected, tol=3 if mode != "LAB" else 12)


def test_mode_i_with_wide_range_is_stretched() -> None:
    pixels = np.array([[-100_000, 0, 100_000]], dtype=np.int32)
    result = decode_image(encode(Image.fromarray(pixels, mode="I"), "TIFF"))
    assert [pixel(result, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_nan_and_inf_do_not_break_decoding() -> None:
    pixels = np.array([[np.nan, np.inf, -np.inf, 0.25]], dtype=np.float32)
    result = decode_image(encode(Image.fromarray(pixels, mode="F"), "TIFF"))
    assert [pixel(result, (x, 0))[0] for x in range(4)] == [0, 0, 0, 64]


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (Image.new("La", (2, 2), (0, 0)), BACKGROUND),
        (Image.new("RGBa", (2, 2), (0, 0, 0, 0)), BACKGROUND),
        (Image.new("RGBa", (2, 2), (200, 0, 0, 255)), (200, 0, 0)),
        (Image.new("PA", (2, 2), (0, 0)), BACKGROUND),
        (Image.new("HSV", (2, 2), (0, 255, 255)), (255, 0, 0)),
        (Image.new("RGBX", (2, 2), (1, 2, 3, 0)), (1, 2, 3)),
    ],
    ids=["La", "RGBa-clear", "RGBa-opaque", "PA", "HSV", "RGBX"],
)
def test_in_memory_only_modes_become_rgb(img: Image.Image, expected: tuple[int, int, int]) -> None:
    # These modes have no file format Pillow writes, so the converter is exercised directly.
    rgb = imaging._to_rgb(img)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == expected


# ---------------------------------------------------------------- robustness


def check_outcome(data: bytes) -> None:
    """decode_image gives a valid result or ImageRejected with a known code, nothing else."""
    try:
        result = decode_image(data, max_side=64)
    except ImageRejected as error:
        assert STATUS_BY_CODE[error.code] == error.status
        assert error.message
    else:
        assert_valid(result, max_side=64)


def test_random_bytes_never_escape() -> None:
    rng = random.Random(1234)
    magics = [
        b"",
        b"\xff\xd8\xff",
        b"\x89PNG\r\n\x1a\n",
        b"GIF89a",
        b"RIFF\x00\x00\x00\x00WEBP",
        b"BM",
        b"II*\x00",
        b"MM\x00*",
        b"8BPS",
        b"%!PS",
    ]
    for _ in range(300):
        data = rng.choice(magics) + rng.randbytes(rng.choice([0, 1, 7, 16, 64, 512, 4096]))
        check_outcome(data)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("PNG", {}), ("JPEG", {"quality": 85}), ("GIF", {}), ("WEBP", {}), ("TIFF", {}), ("BMP", {})],
)
def test_truncated_and_mutated_files_never_escape(fmt: str, params: dict) -> None:
    data = encode(scene(96, 64), fmt, **params)
    for fraction in (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        check_outcome(data[: max(1, int(len(data) * fraction))])
    rng = random.Random(fmt)
    for _ in range(40):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        check_outcome(bytes(mutated))


def test_image_rejected_pickles() -> None:
    error = ImageRejected("corrupt_image", "Broken.", status=422)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.message, copy.status, str(copy)) == (
        "corrupt_image",
        "Broken.",
        422,
        "Broken.",
    )


def test_module_imports_no_service_layers() -> None:
    code = (
        "import sys, app.ml.imaging; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'fastapi', 'starlette', 'sqlalchemy', 'celery', 'redis', 'torch', 'worker'} "
        "or m.startswith(('app.api', 'app.db', 'app.jobs', 'app.services', 'app.web'))); "
        "print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- center_crop_resize


@pytest.mark.parametrize("source", [(1, 1), (4000, 10), (10, 4000), (500, 333)])
@pytest.mark.parametrize(("size", "crop_pct"), [(224, 0.875), (240, 240 / 272), (1, 1.0)])
def test_center_crop_resize_is_exactly_square(
    source: tuple[int, int], size: int, crop_pct: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    resized: list[tuple[int, int]] = []
    original = Image.Image.resize

    def spy(self: Image.Image, *args: object, **kwargs: object) -> Image.Image:
        out = original(self, *args, **kwargs)
        resized.append(out.size)
        return out

    monkeypatch.setattr(Image.Image, "resize", spy)
    out = center_crop_resize(
        scene(*source), size=size, crop_pct=crop_pct, resample=Image.Resampling.BICUBIC
    )
    assert (out.mode, out.size) == ("RGB", (size, size))
    assert resized == [(size, size)]  # one resize, no intermediate


@pytest.mark.parametrize(
    ("size", "crop_pct", "resample"),
    [(224, 0.875, Image.Resampling.BILINEAR), (240, 240 / 272, Image.Resampling.BICUBIC)],
)
def test_center_crop_resize_matches_resize_then_center_crop(
    size: int, crop_pct: float, resample: int
) -> None:
    photo = scene(500, 333)
    # torchvision: Resize(shorter side -> size / crop_pct) then CenterCrop(size), in plain PIL.
    short = round(size / crop_pct)
    w, h = photo.size
    resized = photo.resize((int(short * w / h), short), resample=resample)
    left = round((resized.width - size) / 2.0)
    top = round((resized.height - size) / 2.0)
    reference = resized.crop((left, top, left + size, top + size))

    out = center_crop_resize(photo, size=size, crop_pct=crop_pct, resample=resample)
    diff = np.abs(np.asarray(out, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    assert diff.mean() < 3


@pytest.mark.parametrize(("size", "crop_pct"), [(0, 0.875), (224, 0.0), (224, 1.5)])
def test_center_crop_resize_rejects_bad_arguments(size: int, crop_pct: float) -> None:
    with pytest.raises(ValueError):
        center_crop_resize(Image.new("RGB", (8, 8)), size=size, crop_pct=crop_pct, resample=0)
