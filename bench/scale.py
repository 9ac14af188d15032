"""Many NanoNets in one deployment: the server's memory with 10,000 models, and after 1,000 of
them each answered a predict.

    .venv/bin/python bench/scale.py [--models 10000] [--predict 1000] [--photos 4] [--json FILE]

1. A `nanonet serve` on a fresh data dir trains ONE real model over HTTP on a few hymenoptera
   photos per class (mobilenet_v2, no augmentation), then stops.
2. The other models are made directly in its database and data dir (the service's tables,
   `save_artifact`): each is a real model row with its categories and an active version whose
   own artifact file holds the trained head (its meta naming that model and version), so
   `/predict` serves each as it serves a trained one.
3. A second `nanonet serve` on that data: its RSS (VmRSS of the server process) at start, after
   every model was listed over HTTP (GET /models, a page at once), after one warm-up predict
   (backbone and runner loaded), and after one predict with each of --predict other models.

It prints the figures, and the growth per predicted model and as a share of 1 GiB; it asserts
nothing, since the figures are the point.
"""

# A command-line report: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench.server import Server, embedded_server  # noqa: E402

DATASET = ROOT.parent / "shared" / "datasets" / "hymenoptera"
GiB = 1024 ** 3
MiB = 1024 ** 2
KEY = "scale-bench-" + "k" * 32  # the bootstrap key of both servers (one account)


@dataclass
class Figures:
    models: int
    predicted: int
    rss_fresh_mib: float = 0.0  # the first server, one model, just started
    rss_start_mib: float = 0.0  # the second server, every model there, just started
    rss_listed_mib: float = 0.0  # after listing every model over HTTP
    rss_warm_mib: float = 0.0  # after one predict: backbone and runner loaded
    rss_predicted_mib: float = 0.0  # after one predict with each of `predicted` models
    clone_s: float = 0.0
    list_s: float = 0.0
    predict_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        existence = self.rss_listed_mib - self.rss_start_mib
        heads = self.rss_predicted_mib - self.rss_warm_mib
        total = self.rss_predicted_mib - self.rss_start_mib
        return {**asdict(self),
                # every model there and listed: rows, no heads
                "existence_growth_mib": round(existence, 1),
                # the predicts with `predicted` models past the warm-up: their heads, mostly
                "predicted_growth_mib": round(heads, 1),
                "predicted_growth_per_model_kib": round(heads * 1024 / max(1, self.predicted),
                                                        1),
                # all of it since the start, the backbone and runner's one-time load included
                "total_growth_mib": round(total, 1),
                "total_growth_share_of_1gib": round(total * MiB / GiB, 3),
                "predicted_growth_share_of_1gib": round(heads * MiB / GiB, 4),
                "rss_predicted_share_of_1gib": round(self.rss_predicted_mib * MiB / GiB, 3)}


def rss_mib(pid: int) -> float:
    """The process's resident set (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def server_env(models: int) -> dict[str, str]:
    return {"NANONET_BACKBONES": "mobilenet_v2", "NANONET_AUGMENT_VIEWS": "0",
            "NANONET_MAX_MODELS_PER_ACCOUNT": str(models + 10),
            "NANONET_PREDICTIONS_PER_MINUTE": "1000000", "NANONET_UPLOADS_PER_MINUTE": "100000",
            "NANONET_MIN_FREE_DISK_BYTES": "0"}


def photos(split: str, per_class: int) -> dict[str, list[Path]]:
    folder = DATASET / split
    return {d.name: sorted(p for p in d.iterdir() if p.is_file())[:per_class]
            for d in sorted(folder.iterdir()) if d.is_dir()}


def client_of(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=600,
                        headers={"Authorization": f"Bearer {server.key}"})


def train_seed_model(server: Server, per_class: int) -> str:
    """Create, upload a few photos per class and train one model over HTTP; return its id."""
    train = photos("train", per_class)
    with client_of(server) as client:
        created = client.post("/api/v1/models", json={"name": "seed", "categories": list(train)})
        created.raise_for_status()
        model_id = created.json()["id"]
        for label, paths in train.items():
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
            client.post(f"/api/v1/models/{model_id}/images", data={"category": label},
                        files=files).raise_for_status()
        job_id = client.post(f"/api/v1/models/{model_id}/train").json()["job_id"]
        deadline = time.monotonic() + 600
        while (job := client.get(f"/api/v1/jobs/{job_id}").json())["status"] not in (
                "succeeded", "failed"):
            if time.monotonic() > deadline:
                raise SystemExit(f"training did not end in 600 s: {job}")
            time.sleep(0.25)
        if job["status"] != "succeeded":
            raise SystemExit(f"training failed: {job['error']}")
    return model_id


def clone_models(data_dir: Path, seed_id: str, count: int, *,
                 on_progress: Callable[[int], None] | None = None) -> list[str]:
    """Make `count` more models like the seed, each with its own active version and artifact
    file, in the data dir's database; return their ids."""
    from sqlalchemy import select

    from app.db.base import new_id
    from app.db.engine import make_engine, make_session_factory
    from app.db.tables import Category, Model, ModelState, ModelVersion
    from app.ml.artifacts import load_artifact, save_artifact

    engine = make_engine(f"sqlite:///{data_dir.resolve() / 'nanonet.db'}")
    session_factory = make_session_factory(engine)
    models_dir = data_dir / "models"
    made: list[str] = []
    try:
        with session_factory() as session:
            seed = session.get(Model, seed_id)
            assert seed is not None and seed.active_version is not None, "the seed is untrained"
            version = seed.active_version
            categories = [(c.name, c.position) for c in session.scalars(
                select(Category).where(Category.model_id == seed_id))]
            head, meta = load_artifact(models_dir / version.artifact_path)
            template = {column: getattr(version, column) for column in (
                "backbone", "head", "labels", "metrics", "params", "image_ids", "image_hashes",
                "image_labels", "changes", "activation", "train_seconds", "status")}
            for index in range(count):
                model_id, version_id = new_id(), new_id()
                relative = f"{model_id}/{version_id}.pt"
                save_artifact(models_dir / relative, head=head,
                              meta={**meta, "model_id": model_id, "version_id": version_id})
                session.add(Model(id=model_id, account_id=seed.account_id,
                                  name=f"clone {index}", state=ModelState.READY))
                session.flush()
                session.add_all(Category(model_id=model_id, name=name, position=position)
                                for name, position in categories)
                session.add(ModelVersion(id=version_id, model_id=model_id, number=1,
                                         artifact_path=relative, **template))
                session.flush()
                session.get_one(Model, model_id).active_version_id = version_id
                made.append(model_id)
                if (index + 1) % 500 == 0 or index + 1 == count:
                    session.commit()
                    session.expunge_all()
                    if on_progress is not None:
                        on_progress(index + 1)
    finally:
        engine.dispose()
    return made


def list_every_model(server: Server, per_page: int = 200) -> int:
    """Page through GET /models; return how many were listed."""
    seen = 0
    with client_of(server) as client:
        page = 1
        while True:
            body = client.get("/api/v1/models", params={"page": page, "per_page": per_page})
            body.raise_for_status()
            listed = body.json()["models"]
            seen += len(listed)
            if len(listed) < per_page:
                return seen
            page += 1


def predict_each(server: Server, model_ids: list[str], photo: Path) -> int:
    """One predict per model with the same photo; return how many answered 200."""
    data = photo.read_bytes()
    answered = 0
    with client_of(server) as client:
        for model_id in model_ids:
            response = client.post(f"/api/v1/models/{model_id}/predict",
                                   files=[("files", (photo.name, data, "image/jpeg"))])
            response.raise_for_status()
            assert response.json()["results"][0]["label"]
            answered += 1
    return answered


def run(models: int, predicted: int, *, photos_per_class: int = 4,
        data_dir: Path | None = None, say: Callable[[str], None] = print) -> Figures:
    """The whole bench on `data_dir` (default: a temporary one, removed after)."""
    if predicted > models - 1:
        raise ValueError("predict with at most every clone (models - 1)")
    figures = Figures(models=models, predicted=predicted)
    env = server_env(models)
    with tempfile.TemporaryDirectory(prefix="nanonet-scale-") as scratch:
        directory = data_dir or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        with embedded_server(env, data_dir=directory, key=KEY) as server:
            figures.rss_fresh_mib = rss_mib(server.pid)
            say(f"training the seed model on {photos_per_class} photos per class...")
            seed = train_seed_model(server, photos_per_class)
        say(f"making {models - 1} more models with their own artifact files...")
        started = time.perf_counter()
        clones = clone_models(directory, seed, models - 1,
                              on_progress=lambda n: say(f"  {n} made") if n % 2000 == 0 else None)
        figures.clone_s = round(time.perf_counter() - started, 1)
        with embedded_server(env, data_dir=directory, key=KEY) as server:
            figures.rss_start_mib = rss_mib(server.pid)
            started = time.perf_counter()
            listed = list_every_model(server)
            figures.list_s = round(time.perf_counter() - started, 2)
            figures.rss_listed_mib = rss_mib(server.pid)
            figures.extra["listed"] = listed
            photo = photos("val", 1)["bees"][0]
            predict_each(server, [seed], photo)
            figures.rss_warm_mib = rss_mib(server.pid)
            say(f"predicting once with each of {predicted} models...")
            started = time.perf_counter()
            predict_each(server, clones[:predicted], photo)
            figures.predict_s = round(time.perf_counter() - started, 1)
            figures.rss_predicted_mib = rss_mib(server.pid)
    for name in ("rss_fresh_mib", "rss_start_mib", "rss_listed_mib", "rss_warm_mib",
                 "rss_predicted_mib"):
        setattr(figures, name, round(getattr(figures, name), 1))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--predict", type=int, default=1_000)
    parser.add_argument("--photos", type=int, default=4, help="training photos per class")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = run(args.models, args.predict, photos_per_class=args.photos).report()
    for name, value in report.items():
        print(f"{name:34} {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
