"""bench/ingest.py tiny (8 photos, one round, batches of 4), so the bench keeps working (its
full figures are in the README)."""

from __future__ import annotations

import pytest

from app.ml.engines import OnnxRunner
from bench.ingest import DATASETS, bare_ways, measure
from tests.conftest import ENGINES

PHOTOS = sorted((DATASETS / "hymenoptera" / "val").glob("*/*.jpg"))[:8]

pytestmark = pytest.mark.skipif(not PHOTOS, reason=f"needs the hymenoptera photos in {DATASETS}")


def test_ingest_bench_measures_every_bare_way_and_the_pipeline() -> None:
    runner = OnnxRunner(ENGINES, threads=2)
    spinning = OnnxRunner(ENGINES, threads=2, spin=True)
    assert set(bare_ways(runner, spinning)) == {"pooled", "pooled always spinning",
                                                "2x single-threaded"}
    said: list[str] = []
    figures = measure(["mobilenet_v2", "efficientnet_lite2"], [p.read_bytes() for p in PHOTOS],
                      rounds=1, batch=4, bare_batches=[1, 4], runner=runner,
                      spinning=spinning, say=said.append)
    assert figures["bare_img_s"] > 0 and figures["pipeline_img_s"] > 0
    assert set(figures["best"]) == {"mobilenet_v2", "efficientnet_lite2"}
    assert len(said) == 2 and "2x single-threaded b4" in said[0]


def test_the_bare_single_threaded_way_runs_each_batch_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference's batch sizes are the session's own: the service's bulk path would split
    them into passes of engines.SINGLE_THREADED_BATCH images."""
    import numpy as np

    from app.ml.backbones import get_network, preprocess_array
    from app.ml.imaging import decode_image

    runner = OnnxRunner(ENGINES, threads=2)
    engine, streams = bare_ways(runner, runner)["2x single-threaded"]
    session = runner.single_session("mobilenet_v2")
    assert session is not None and streams == 2
    sizes: list[int] = []

    class Counting:
        def run(self, outputs: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            sizes.append(len(feeds["input"]))
            return session.run(outputs, feeds)

    monkeypatch.setattr(runner, "single_session", lambda _backbone: Counting())
    network = get_network("mobilenet_v2")
    batch = np.stack([preprocess_array(network, decode_image(p.read_bytes()).image)
                      for p in PHOTOS[:4]])
    features = engine.run("mobilenet_v2", batch)
    assert sizes == [4] and features.shape == (4, network.dim)
    assert np.abs(features - runner.run("mobilenet_v2", batch)).max() <= 1e-5
