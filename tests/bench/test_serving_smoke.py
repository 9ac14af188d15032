"""bench/serving.py tiny (one MobileNetV2 model on 3 photos per class, 1 s per measurement, 1
and 2 clients), so the bench keeps working (its full figures are in the README)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.serving import DATASET, parse, print_report, run

pytestmark = pytest.mark.skipif(not (DATASET / "train").is_dir(),
                                reason=f"needs the hymenoptera photos in {DATASET}")


def test_serving_bench_measures_in_process_and_http(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["--models", "mobilenet_v2", "--duration", "1", "--clients", "1,2",
                  "--train-photos", "3", "--max-batch", "4"])
    report = run(args, tmp_path / "data", say=lambda _: None)
    figures = report["models"]["mobilenet_v2"]
    limit = figures["in_process"]
    assert limit["single_p50_ms"] > 0 and limit["images_per_s"] > 0
    assert set(limit["images_per_s_by_batch"]) == {1, 4}
    assert [h["clients"] for h in figures["http"]] == [1, 2]
    for measured in figures["http"]:
        assert measured["requests"] > 0 and measured["errors"] == 0
        assert 0 < measured["p50_ms"] <= measured["p99_ms"]
    assert figures["ratios"]["p50_over_in_process_single"] > 0
    assert "throughput_2_over_in_process" in figures["ratios"]
    # a second run on the same data dir reuses the trained model
    assert (tmp_path / "data" / "serving-models.json").is_file()
    print_report(report)
    assert "mobilenet_v2" in capsys.readouterr().out
