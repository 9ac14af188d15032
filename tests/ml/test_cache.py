import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from app.ml import cache as cache_module
from app.ml.cache import RECIPE, FeatureCache
from app.ml.features import extract_features
from tests.ml.conftest import DATASETS, dataset_rows, image_loader

HASH = "ab" + "0" * 62


def test_put_then_get_round_trips_in_the_documented_layout(tmp_path):
    cache = FeatureCache(tmp_path)
    vector = np.arange(1280, dtype=np.float64)
    cache.put(HASH, "mobilenet_v2", vector)
    path = tmp_path / RECIPE / "mobilenet_v2" / "0" / "ab" / f"{HASH}.npy"
    assert path.is_file()
    got = cache.get(HASH, "mobilenet_v2")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, vector.astype(np.float32))
    assert os.listdir(path.parent) == [path.name]  # no temp files left behind
    assert cache.get(HASH, "efficientnet_lite2") is None


def test_discard_removes_every_backbone_and_view_of_one_image_only(tmp_path):
    cache = FeatureCache(tmp_path)
    other = "ab" + "1" * 62  # same fan-out folder
    for backbone in ("mobilenet_v2", "efficientnet_lite2"):
        for view in (0, 2):
            cache.put(HASH, backbone, np.ones(4), view=view)
            cache.put(other, backbone, np.ones(4), view=view)
    assert cache.discard(HASH) == 4
    assert all(cache.get(HASH, b, view=v) is None
               for b in ("mobilenet_v2", "efficientnet_lite2") for v in (0, 2))
    assert cache.get(other, "efficientnet_lite2", view=2) is not None
    assert cache.discard(HASH) == 0
    with pytest.raises(ValueError):
        cache.discard("../" + HASH)
    legacy = tmp_path / "mobilenet_v2" / "0" / HASH[:2] / f"{HASH}.npy"  # before recipe folders
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"old")
    assert cache.discard(HASH) == 1 and not legacy.exists()


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x93NUMPY\x01\x00v\x00{'descr'"])
def test_corrupt_files_are_misses(tmp_path, content):
    cache = FeatureCache(tmp_path)
    cache.put(HASH, "mobilenet_v2", np.ones(1280))
    (tmp_path / RECIPE / "mobilenet_v2" / "0" / "ab" / f"{HASH}.npy").write_bytes(content)
    assert cache.get(HASH, "mobilenet_v2") is None


def test_wrong_shapes_are_refused_or_missed(tmp_path):
    cache = FeatureCache(tmp_path)
    with pytest.raises(ValueError):
        cache.put(HASH, "mobilenet_v2", np.ones((2, 1280)))
    np.save(tmp_path / "x.npy", np.ones((2, 3), dtype=np.float32))
    target = tmp_path / RECIPE / "mobilenet_v2" / "0" / "ab" / f"{HASH}.npy"
    target.parent.mkdir(parents=True)
    os.replace(tmp_path / "x.npy", target)
    assert cache.get(HASH, "mobilenet_v2") is None


@pytest.mark.parametrize("key", ["../../etc", "a/b", "", ".."])
def test_unsafe_keys_are_rejected(tmp_path, key):
    cache = FeatureCache(tmp_path)
    with pytest.raises(ValueError):
        cache.get(key, "mobilenet_v2")
    with pytest.raises(ValueError):
        cache.put(HASH, key, np.ones(3))


def _fake_run_recording(calls):
    def fake_run(backbone, batch, runner=None):
        calls.append((backbone, len(batch)))
        # Feature = the batch row's mean value, so different pixels give different vectors.
        return np.repeat(batch.mean(axis=(1, 2, 3))[:, None], 1280, axis=1).astype(np.float32)

    return fake_run


def test_features_for_computes_only_misses_in_order(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(cache_module, "run_network", _fake_run_recording(calls))
    loaded: list[str] = []

    def item(name: str, shade: int):
        def load():
            loaded.append(name)
            return Image.new("RGB", (12, 10), (shade, shade, shade))

        return (name * 32, load)

    cache = FeatureCache(tmp_path)
    cache.put("bb" * 32, "mobilenet_v2", np.full(1280, 2.0))
    items = [item("aa", 10), item("bb", 20), item("cc", 30), item("aa", 10), item("dd", 40)]
    out = cache.features_for("mobilenet_v2", items, batch_size=2)
    assert out.shape == (5, 1280)
    np.testing.assert_array_equal(out[1], np.full(1280, 2.0))  # the cached vector
    np.testing.assert_array_equal(out[3], out[0])  # a duplicate image shares its row
    assert len({float(row[0]) for row in out[[0, 2, 4]]}) == 3
    assert sorted(loaded) == ["aa", "cc", "dd"]  # cached and duplicate images are not loaded
    # Three images to compute: a chunk each (at most batch_size), so that both workers work.
    assert calls == [("mobilenet_v2", 1)] * 3
    assert cache.get("dd" * 32, "mobilenet_v2") is not None

    loaded.clear()
    again = cache.features_for("mobilenet_v2", items)
    np.testing.assert_array_equal(again, out)
    assert loaded == [] and len(calls) == 3


def test_features_for_recomputes_a_vector_of_the_wrong_dimension(tmp_path, monkeypatch):
    monkeypatch.setattr(
        cache_module,
        "run_network",
        lambda backbone, batch, runner=None: np.ones((len(batch), 1280), dtype=np.float32),
    )
    cache = FeatureCache(tmp_path)
    cache.put(HASH, "mobilenet_v2", np.zeros(7))
    out = cache.features_for("mobilenet_v2", [(HASH, lambda: Image.new("RGB", (4, 4)))])
    np.testing.assert_array_equal(out, np.ones((1, 1280)))
    assert cache.get(HASH, "mobilenet_v2").shape == (1280,)


def test_features_for_nothing_is_empty(tmp_path):
    assert FeatureCache(tmp_path).features_for("efficientnet_lite0", []).shape == (0, 1280)


@pytest.mark.slow
def test_cached_real_features_equal_fresh_ones(tmp_path):
    rows = dataset_rows("hymenoptera", "val")[:3]
    items = [(row["sha256"], image_loader(DATASETS / "hymenoptera" / row["path"])) for row in rows]
    cache = FeatureCache(tmp_path)
    first = cache.features_for("mobilenet_v2", items)
    second = cache.features_for("mobilenet_v2", items)
    fresh = extract_features("mobilenet_v2", [load() for _, load in items])
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, fresh, rtol=1e-4, atol=1e-5)


def _noise_item(name: str, seed: int, loaded: list[str] | None = None):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)

    def load():
        if loaded is not None:
            loaded.append(name)
        return Image.fromarray(pixels, "RGB")

    return (name * 32, load)


def test_views_are_cached_separately_and_augmented(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(cache_module, "run_network", _fake_run_recording(calls))
    cache = FeatureCache(tmp_path)
    items = [_noise_item("aa", 0), _noise_item("bb", 1)]
    view0 = cache.features_for("mobilenet_v2", items)
    view1 = cache.features_for("mobilenet_v2", items, view=1)
    assert (tmp_path / RECIPE / "mobilenet_v2" / "1" / "aa" / f"{'aa' * 32}.npy").is_file()
    assert calls == [("mobilenet_v2", 1)] * 4  # two images, a chunk each, per view
    assert not np.array_equal(view0, view1)  # view 1 is an augmentation, not the image
    np.testing.assert_array_equal(cache.get("aa" * 32, "mobilenet_v2", view=1), view1[0])
    again = cache.features_for("mobilenet_v2", items, view=1)
    np.testing.assert_array_equal(again, view1)
    assert len(calls) == 4  # the second request for view 1 was all hits
    with pytest.raises(ValueError):
        cache.path(HASH, "mobilenet_v2", view=-1)


def test_views_for_stacks_views_and_assembles_composites(tmp_path, monkeypatch):
    from app.ml.backbones import component_weights

    calls: list = []
    monkeypatch.setattr(cache_module, "run_network", _fake_run_recording(calls))
    cache = FeatureCache(tmp_path)
    loaded: list[str] = []
    items = [_noise_item("aa", 0, loaded), _noise_item("bb", 1, loaded),
             _noise_item("aa", 0, loaded)]
    fractions: list[float] = []
    name = "mobilenet_v2+efficientnet_lite2"
    out = cache.views_for(
        ["efficientnet_lite2", name], items, views=[0, 1, 2], progress=fractions.append
    )
    assert out["efficientnet_lite2"].shape == (3, 3, 1280)
    assert out[name].shape == (3, 3, 2560)
    np.testing.assert_array_equal(out[name][2], out[name][0])  # duplicate image, same rows
    _, w_lite = component_weights(name)
    np.testing.assert_allclose(out[name][:, :, 1280:], out["efficientnet_lite2"] * w_lite)
    # Each image was decoded once for all its views, and each (image, view) run once through
    # each of the two networks: a chunk per image (two workers), of its 3 views per network.
    assert sorted(loaded) == ["aa", "bb"]
    assert sorted(calls) == [("efficientnet_lite2", 3)] * 2 + [("mobilenet_v2", 3)] * 2
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    composite = cache.features_for(name, items[:2], view=2)
    np.testing.assert_array_equal(composite, out[name][:2, 2])
    assert len(calls) == 4  # the composite came from the cached components


class _StreamsRunner:
    """A runner that offers `streams` concurrent calls and records how many overlap."""

    def __init__(self, streams: int) -> None:
        self.streams = streams
        self.single_threaded = self
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def run(self, backbone, batch):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)  # long enough for the other workers to arrive
        with self.lock:
            self.running -= 1
        return np.repeat(batch.mean(axis=(1, 2, 3))[:, None], 1280, axis=1).astype(np.float32)


@pytest.mark.parametrize("streams", [1, 3])
def test_extraction_runs_as_many_engine_calls_at_once_as_the_runner_offers(tmp_path, streams):
    items = [_noise_item(f"{i:02d}", i) for i in range(24)]
    runner = _StreamsRunner(streams)
    fractions: list[float] = []
    out = FeatureCache(tmp_path / "parallel").views_for(
        ["mobilenet_v2"], items, views=[0, 1], batch_size=2, runner=runner,
        progress=fractions.append)["mobilenet_v2"]
    assert runner.most == streams  # never more than offered; with work waiting, all of them
    # The same vectors, in the same rows, as one call at a time, and all of them cached.
    alone = FeatureCache(tmp_path / "alone").views_for(
        ["mobilenet_v2"], items, views=[0, 1], batch_size=2,
        runner=_StreamsRunner(1))["mobilenet_v2"]
    np.testing.assert_array_equal(out, alone)
    cache = FeatureCache(tmp_path / "parallel")
    for row, (image_hash, _) in enumerate(items):
        np.testing.assert_array_equal(cache.get(image_hash, "mobilenet_v2", view=1), out[row, 1])
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_cached_vectors_are_written_without_fsync_other_files_with_it(tmp_path, monkeypatch):
    # A cached vector lost to a power cut fails its checksum and is made again, so its write
    # skips the fsync that was most of its cost; every other atomic write keeps it.
    from app import storage

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    FeatureCache(tmp_path).put(HASH, "mobilenet_v2", np.ones(1280))
    assert synced == []
    storage.atomic_write(tmp_path / "other", b"data")
    assert len(synced) == 1
