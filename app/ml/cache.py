"""On-disk cache of backbone feature vectors, so each image view goes through a backbone once."""

from __future__ import annotations

import io
import itertools
import re
import struct
import threading
import zlib
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from app.ml.augment import augment
from app.ml.backbones import components, get_network, preprocess_array
from app.ml.engines import Runner, bulk_runner
from app.ml.features import assemble, run_network
from app.ml.imaging import DRAFT_SIDE
from app.storage import atomic_writer

# Hashes and backbone names become path components: allow nothing that could climb or nest.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")

Item = tuple[str, Callable[[], Image.Image]]  # (image content hash, loader of the RGB image)

# A cached file is an .npy of one float32 vector followed by the CRC-32 of those bytes: a flipped
# bit in the floats would still load, finite and well shaped, and quietly skew training.
_CHECKSUM = struct.Struct("<I")
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _parse(data: bytes) -> np.ndarray | None:
    """Return the vector a cached file holds, or None unless it is whole and unaltered.

    Files written before checksums existed (exactly one .npy, no trailer) are accepted when the
    array fills them exactly, so an upgrade does not recompute every feature.
    """
    try:
        stream = io.BytesIO(data)
        read_header = _HEADER_READERS.get(np.lib.format.read_magic(stream))
        if read_header is None:
            return None
        shape, fortran, dtype = read_header(stream)
        if dtype != np.dtype("<f4") or len(shape) != 1 or fortran:
            return None
        end = stream.tell() + shape[0] * dtype.itemsize
        if len(data) == end + _CHECKSUM.size:
            (expected,) = _CHECKSUM.unpack_from(data, end)
            if zlib.crc32(data[:end]) != expected:
                return None
        elif len(data) != end:
            return None
        vector = np.frombuffer(data, dtype=dtype, count=shape[0], offset=stream.tell()).copy()
    except Exception:  # noqa: BLE001 - any damage to the header (numpy raises many kinds)
        return None
    return vector if np.isfinite(vector).all() else None


def _check_component(value: str, what: str) -> str:
    if not _SAFE_NAME.fullmatch(value) or value in {".", ".."} or len(value) < 2:
        raise ValueError(f"{what} {value!r} is not a safe cache key")
    return value


def _check_view(view: int) -> int:
    if isinstance(view, bool) or not isinstance(view, int | np.integer) or view < 0:
        raise ValueError(f"view must be an integer >= 0, got {view!r}")
    return int(view)


# The decode recipe the cached vectors were made with: a folder per recipe, so vectors of an
# older one are never mixed with the new (they are recomputed; the old folders can be deleted).
RECIPE = f"decode-{DRAFT_SIDE}"


class FeatureCache:
    """On-disk cache of feature vectors keyed by (image content hash, plain backbone, view)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, image_hash: str, backbone: str, *, view: int = 0) -> Path:
        """Return the file for (image_hash, backbone, view); raise ValueError on unsafe keys."""
        _check_component(image_hash, "image hash")
        _check_component(backbone, "backbone name")
        return (self.root / RECIPE / backbone / str(_check_view(view)) / image_hash[:2]
                / f"{image_hash}.npy")

    def get(self, image_hash: str, backbone: str, *, view: int = 0) -> np.ndarray | None:
        """Return the cached 1-D float32 vector, or None if absent; a damaged file (truncated,
        garbled, failing its checksum) is deleted and reported absent, so it is recomputed."""
        path = self.path(image_hash, backbone, view=view)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        vector = _parse(data)
        if vector is None:
            path.unlink(missing_ok=True)
        return vector

    def put(self, image_hash: str, backbone: str, vector: np.ndarray, *, view: int = 0) -> None:
        """Store a 1-D vector atomically as float32 with a checksum; raise ValueError on a bad
        shape or key."""
        vector = np.asarray(vector, dtype=np.float32)
        if vector.ndim != 1:
            raise ValueError(f"expected a 1-D feature vector, got shape {vector.shape}")
        buffer = io.BytesIO()
        np.save(buffer, vector, allow_pickle=False)
        payload = buffer.getvalue()
        path = self.path(image_hash, backbone, view=view)
        # No fsync: a vector lost or torn by a power cut fails its checksum on read and is
        # made again, and the fsync was most of a put (0.42 ms of wall time each, beside a
        # 3 ms MobileNetV2 pass per image on 2 cores).
        with atomic_writer(path, durable=False) as handle:
            handle.write(payload + _CHECKSUM.pack(zlib.crc32(payload)))

    def discard(self, image_hash: str) -> int:
        """Delete every cached vector of an image (all backbones, all views); return how many."""
        _check_component(image_hash, "image hash")
        removed = 0
        name = f"{image_hash[:2]}/{image_hash}.npy"
        # recipe/backbone/view/..., and backbone/view/... as written before recipe folders
        for pattern in (f"*/*/*/{name}", f"*/*/{name}"):
            for path in self.root.glob(pattern):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def features_for(
        self,
        backbone: str,
        items: Sequence[Item],
        *,
        view: int = 0,
        batch_size: int = 16,
        runner: Runner | None = None,
    ) -> np.ndarray:
        """Return (N, dim) float32 features of one view in item order; only misses are computed.

        A composite backbone concatenates its components' cached features; view > 0 extracts
        from augment(image, image_hash=..., view=view). Raise BackboneUnavailable or ValueError.
        """
        return self.views_for(
            [backbone], items, views=[view], batch_size=batch_size, runner=runner
        )[backbone][:, 0]

    def views_for(
        self,
        backbones: Sequence[str],
        items: Sequence[Item],
        *,
        views: Sequence[int],
        batch_size: int = 16,
        runner: Runner | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Return {backbone: (N, len(views), dim) float32} for plain or composite backbones.

        Each missing image is loaded (and augmented) once per view for all plain backbones that
        lack it, so asking for several backbones at once costs no extra decoding. `progress`
        gets the fraction of the missing (image, view, backbone) extractions done so far.
        Raise BackboneUnavailable on an unknown or uninstalled backbone, ValueError on bad keys.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        views = [_check_view(view) for view in views]
        plain = list(dict.fromkeys(part for name in backbones for part in components(name)))
        dims = {name: get_network(name).dim for name in plain}
        found = {
            name: np.empty((len(items), len(views), dims[name]), dtype=np.float32)
            for name in plain
        }
        # Per view: hash -> (rows, loader, plain backbones missing it); duplicates computed once.
        plans: list[dict[str, tuple[list[int], Callable[[], Image.Image], list[str]]]] = []
        for v, view in enumerate(views):
            plan: dict[str, tuple[list[int], Callable[[], Image.Image], list[str]]] = {}
            for row, (image_hash, load_image) in enumerate(items):
                if image_hash in plan:
                    rows, _, missing = plan[image_hash]
                    for name in plain:
                        if name not in missing:  # a hit: copy it; misses fill every row later
                            found[name][row, v] = found[name][rows[0], v]
                    rows.append(row)
                    continue
                missing = []
                for name in plain:
                    vector = self.get(image_hash, name, view=view)
                    if vector is not None and vector.shape == (dims[name],):
                        found[name][row, v] = vector
                    else:
                        missing.append(name)
                plan[image_hash] = ([row], load_image, missing)
            plans.append(plan)
        # Per image: its loader and the (view index, plain backbone) pairs it lacks.
        wanted: dict[str, tuple[Callable[[], Image.Image], list[tuple[int, str]]]] = {}
        for v, plan in enumerate(plans):
            for image_hash, (_, load_image, missing) in plan.items():
                if missing:
                    entry = wanted.setdefault(image_hash, (load_image, []))
                    entry[1].extend((v, name) for name in missing)
        total = sum(len(pairs) for _, pairs in wanted.values())
        hashes = list(wanted)
        engine, streams = bulk_runner(runner) if runner is not None else (None, 1)
        workers = max(2, streams)
        # Chunks of batch_size images, smaller when there are few: every worker gets about two,
        # so ten new images still keep every core busy.
        size = max(1, min(batch_size, -(-len(hashes) // (2 * workers))))
        chunks = [hashes[i : i + size] for i in range(0, len(hashes), size)]
        networks = {name: get_network(name) for name in plain}

        def prepare(chunk: list[str]) -> dict[str, tuple[list[tuple[str, int]], np.ndarray]]:
            """Decode each image of the chunk once, make its views, preprocess them for every
            backbone that lacks them: {backbone: ([(hash, view index)], (n, 3, S, S) batch)}."""
            keys: dict[str, list[tuple[str, int]]] = {name: [] for name in plain}
            counts = Counter(name for image_hash in chunk for _, name in wanted[image_hash][1])
            # Each input is written straight into its row of the batch: no stacking copy.
            batches = {name: np.empty((count, 3, networks[name].input_size,
                                       networks[name].input_size), dtype=np.float32)
                       for name, count in counts.items()}
            for image_hash in chunk:
                load_image, pairs = wanted[image_hash]
                image = load_image()
                for v in sorted({v for v, _ in pairs}):
                    view_image = augment(image, image_hash=image_hash, view=views[v])
                    for name in (name for pv, name in pairs if pv == v):
                        preprocess_array(networks[name], view_image,
                                         out=batches[name][len(keys[name])])
                        keys[name].append((image_hash, v))
            return {name: (keys[name], batches[name]) for name in plain if keys[name]}

        # A bounded pipeline of workers, each decoding and preprocessing a chunk, then running
        # it through the engine and storing its vectors. Engine calls are capped at what the
        # runner runs well at once (engines.bulk_runner: one single-threaded ONNX Runtime pass
        # per core; one call at a time for torch), with a worker per call and never fewer than
        # two, so that a chunk is being decoded while the engine runs: Pillow, numpy and the
        # engine all release the GIL. At most `workers` + 1 chunks are in memory.
        engine_calls = threading.Semaphore(streams)

        def extract(chunk: list[str]) -> dict[str, tuple[list[tuple[str, int]], np.ndarray]]:
            prepared = prepare(chunk)
            out = {}
            for name, (keys, batch) in prepared.items():
                vectors = np.empty((len(keys), dims[name]), dtype=np.float32)
                for start in range(0, len(keys), batch_size):
                    with engine_calls:
                        vectors[start : start + batch_size] = run_network(
                            name, batch[start : start + batch_size], engine)
                for (image_hash, v), vector in zip(keys, vectors, strict=True):
                    self.put(image_hash, name, vector, view=views[v])
                out[name] = (keys, vectors)
            return out

        done = 0
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nanonet-extract") as pool:
            pending: deque[Future[dict[str, tuple[list[tuple[str, int]], np.ndarray]]]] = deque()
            upcoming = iter(chunks)
            for chunk in itertools.islice(upcoming, workers + 1):
                pending.append(pool.submit(extract, chunk))
            while pending:
                extracted = pending.popleft().result()
                for chunk in itertools.islice(upcoming, 1):
                    pending.append(pool.submit(extract, chunk))
                for name, (keys, vectors) in extracted.items():
                    for (image_hash, v), vector in zip(keys, vectors, strict=True):
                        found[name][plans[v][image_hash][0], v] = vector
                    done += len(keys)
                    if progress is not None:
                        progress(done / total)
        return {name: assemble(name, found) for name in backbones}
