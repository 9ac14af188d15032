"""Datasets on disk and the seeded k-per-class draws that every method shares."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"


@dataclass(frozen=True)
class Sample:
    """One image file: its class, bytes and content hash (the service's cache key)."""

    path: Path
    label: str

    @cached_property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def decode(self):  # type: ignore[no-untyped-def]
        """Return the RGB PIL image through the service's one decode path."""
        from app.ml.imaging import decode_image

        return decode_image(self.data).image


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train: dict[str, list[Sample]]  # class -> sorted files
    val: list[Sample]
    _orders: dict[tuple[str, int], list[Sample]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, root: Path) -> Dataset:
        def split(name: str) -> dict[str, list[Sample]]:
            return {d.name: [Sample(p, d.name) for p in sorted(d.iterdir()) if p.is_file()]
                    for d in sorted((root / name).iterdir()) if d.is_dir()}

        train, val = split("train"), split("val")
        if not train or set(train) != set(val):
            raise SystemExit(
                f"{root}: expected train/<class>/ and val/<class>/ with the same classes"
            )
        return cls(name=root.name, classes=list(train), train=train,
                   val=[s for label in train for s in val[label]])

    def draw(self, k: int | None, seed: int) -> list[Sample]:
        """Return k images per class (None: the whole train split), the same for every method.

        Each class is shuffled once per seed and the first k are taken, so for one seed the
        draws are nested (the k=2 set contains the k=1 set), which makes k-curves smoother.
        """
        chosen: list[Sample] = []
        for label in self.classes:
            if k is None:
                chosen.extend(self.train[label])
                continue
            key = (label, seed)
            if key not in self._orders:
                order = list(self.train[label])
                # String seeds go through SHA-512 in random.Random: stable across runs and versions.
                random.Random(f"{self.name}/{label}/{seed}").shuffle(order)
                self._orders[key] = order
            chosen.extend(self._orders[key][:k])
        return chosen

    def train_size(self) -> int:
        return sum(map(len, self.train.values()))
