"""Method `nanonet`: the product, over HTTP, against one server for the whole benchmark.

Only the documented API is used. Fields that the service may or may not have yet (backbone
selection, `metrics.head`, `GET /models/{id}/metrics`) are read defensively: absent means None.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

from bench.fewshot.data import Dataset, Sample

POLL_S = 0.2
TRAIN_TIMEOUT_S = 3600.0


def _chunks(items: list[Sample], size: int) -> list[list[Sample]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _files(samples: list[Sample]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (s.path.name, s.data, "application/octet-stream")) for s in samples]


def _scalars(metrics: Any) -> dict[str, Any] | None:
    """The scalar entries of a metrics dict (drops per-class lists and confusion matrices)."""
    if not isinstance(metrics, dict):
        return None
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _compact(value: Any, limit: int = 20_000) -> Any:
    """`value` as is when small; else only its top-level scalars (keeps the JSON file readable)."""
    if len(json.dumps(value, default=str)) <= limit:
        return value
    return {"_truncated": True, **(_scalars(value) or {})}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class NanoNetHTTP:
    name = "nanonet"
    deterministic = True  # the service trains with a fixed seed: same images -> same model

    def __init__(self, url: str, key: str, *, batch: int = 16) -> None:
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                   timeout=600)
        self.batch = batch
        self.seen: set[str] = set()  # content hashes this server has received (cache-warm)

    def close(self) -> None:
        self.client.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_error:
            raise RuntimeError(f"{response.request.method} {response.request.url.path} -> "
                               f"{response.status_code}: {response.text[:500]}")
        return response

    def warm_up(self, train_dir: Path) -> float:
        """Train and query one throwaway model on other images; return its wall time.

        The first training in a server process loads the backbones (seconds each); without this
        the first benchmark run would carry that one-off cost. The images come from a dataset
        that is not benchmarked, so no benchmark image gets into the feature cache.
        """
        started = time.perf_counter()
        classes = {d.name: [Sample(p, d.name) for p in sorted(d.iterdir()) if p.is_file()]
                   for d in sorted(train_dir.iterdir()) if d.is_dir()}
        warm = Dataset(name=f"warm-up {train_dir.parent.name}", classes=list(classes),
                       train=classes, val=[s for samples in classes.values() for s in samples[:2]])
        self.run(warm, [s for samples in classes.values() for s in samples], seed=0, tag="warm-up")
        return time.perf_counter() - started

    def run(self, dataset: Dataset, train: list[Sample], *, seed: int, tag: str) -> dict[str, Any]:
        new_images = len({s.sha256 for s in train} - self.seen)
        model = self._check(self.client.post("/api/v1/models", json={
            "name": f"fewshot {dataset.name} {tag} seed {seed}", "categories": dataset.classes}))
        model_id = model.json()["id"]
        try:
            return self._flow(dataset, train, model_id, new_images)
        finally:
            with contextlib.suppress(httpx.HTTPError):
                self.client.delete(f"/api/v1/models/{model_id}")

    def _flow(self, dataset: Dataset, train: list[Sample], model_id: str,
              new_images: int) -> dict[str, Any]:
        by_class: dict[str, list[Sample]] = {}
        for sample in train:
            by_class.setdefault(sample.label, []).append(sample)

        started = time.perf_counter()
        upload_status: dict[str, int] = {}
        for label, samples in by_class.items():
            for part in _chunks(samples, self.batch):
                response = self._check(self.client.post(
                    f"/api/v1/models/{model_id}/images", data={"category": label},
                    files=_files(part)))
                for result in response.json().get("results", []):
                    status = str(result.get("status"))
                    upload_status[status] = upload_status.get(status, 0) + 1
        upload_s = time.perf_counter() - started
        self.seen.update(s.sha256 for s in train)

        started = time.perf_counter()
        job_id = self._check(self.client.post(f"/api/v1/models/{model_id}/train")).json()["job_id"]
        deadline = time.monotonic() + TRAIN_TIMEOUT_S
        while True:
            job = self._check(self.client.get(f"/api/v1/jobs/{job_id}")).json()
            if job.get("status") in ("succeeded", "failed", "cancelled", "canceled"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"training job {job_id} did not finish in {TRAIN_TIMEOUT_S} s")
            time.sleep(POLL_S)
        train_s = time.perf_counter() - started
        if job.get("status") != "succeeded":
            raise RuntimeError(f"training job {job_id} {job.get('status')}: {job.get('error')}")

        trained = self._check(self.client.get(f"/api/v1/models/{model_id}")).json()
        metrics = trained.get("metrics") if isinstance(trained.get("metrics"), dict) else None
        version = trained.get("version") if isinstance(trained.get("version"), dict) else {}
        extra = self.client.get(f"/api/v1/models/{model_id}/metrics")  # optional endpoint
        metrics_endpoint = _compact(extra.json()) if extra.status_code == 200 else None

        correct = total = rejected = 0
        unknown = 0
        started = time.perf_counter()
        for part in _chunks(dataset.val, self.batch):
            response = self._check(self.client.post(f"/api/v1/models/{model_id}/predict",
                                                    files=_files(part)))
            results = response.json()["results"]
            if len(results) != len(part):
                raise RuntimeError(f"predict returned {len(results)} results for {len(part)} files")
            for sample, result in zip(part, results, strict=True):
                total += 1
                if result.get("status", "ok") != "ok":
                    rejected += 1
                elif result.get("label") is None:
                    unknown += 1
                else:
                    correct += result["label"] == sample.label
        predict_s = time.perf_counter() - started

        return {
            "val_accuracy": correct / total,
            "val_images": total,
            "reported_cv_accuracy": _number(metrics.get("accuracy")) if metrics else None,
            "reported_metrics": _scalars(metrics),
            "head": metrics.get("head") if metrics else None,
            "metrics_note": trained.get("metrics_note"),
            "backbone": trained.get("backbone"),
            "service_train_seconds": _number(version.get("train_seconds")),
            "metrics_endpoint": metrics_endpoint,
            "upload_s": upload_s,
            "train_s": train_s,
            "upload_train_s": upload_s + train_s,
            "predict_s": predict_s,
            "predict_rejected": rejected,
            "predict_unknown": unknown,
            "upload_status": upload_status,
            "cache_cold_images": new_images,
        }
