"""bench/scale.py on 50 models and 10 predicts, so the bench keeps working (its figures at
10,000 models are in the README)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.scale import DATASET, rss_mib, run

pytestmark = pytest.mark.skipif(not (DATASET / "train").is_dir(),
                                reason=f"needs the hymenoptera photos in {DATASET}")


def test_scale_bench_makes_servable_models_and_measures(tmp_path: Path) -> None:
    figures = run(50, 10, photos_per_class=3, data_dir=tmp_path / "data", say=lambda _: None)
    assert figures.extra["listed"] == 50  # every clone is a row the API lists
    # 10 clones answered a predict: each has an active version whose own file loads.
    heads = sorted((tmp_path / "data" / "models").glob("*/*.pt"))
    assert len(heads) == 50
    assert len({path.parent.name for path in heads}) == 50
    report = figures.report()
    for name in ("rss_start_mib", "rss_listed_mib", "rss_warm_mib", "rss_predicted_mib"):
        assert report[name] > 0
    assert "total_growth_share_of_1gib" in report
    assert rss_mib(os.getpid()) > 0
