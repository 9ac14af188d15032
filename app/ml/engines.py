"""Running the backbone networks: ONNX Runtime on CPU, torch on CUDA.

A runner turns a preprocessed batch (N, 3, S, S) float32 into pooled features (N, dim). On a
CPU, ONNX Runtime runs these networks 4-5x faster than eager torch (docs/EXPERIMENTS.md), so
`OnnxRunner` exports each network once from the same verified torch weights, offline, into a
cache folder keyed by the weights' hash and the export recipe, and checks the export against
torch on a fixed batch before using it (a mismatch past 1e-4 keeps torch for that network and
says so in the log). On a GPU, `TorchRunner` runs torch there.
"""

from __future__ import annotations

import copy
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from app.ml.registry import BACKBONES, Network

if TYPE_CHECKING:
    import onnxruntime  # type: ignore[import-untyped]
    import torch

log = logging.getLogger(__name__)

# Part of every cached file's name: change it when the export recipe changes, and every
# deployment exports again on first use instead of loading a file made the old way.
EXPORT_RECIPE = 1
PARITY_TOLERANCE = 1e-4  # max abs difference of an export's features from torch's
# A single-threaded session runs a longer batch in passes of this many images. On a 2-core
# Xeon, two streams of bare MobileNetV2 passes ran 381-408 img/s one image at a time, 389-428
# in batches of 4 and 320-345 in 16 (Lite2 153-163, 151-157, 134-140; two runs of
# bench/ingest.py): the activations of small batches stay in the core's cache. Beside
# decoding, in the ingest pipeline, passes of one were the faster in each of three rounds:
# 242 img/s against 231 (Lite2 118 against 113; docs/EXPERIMENTS.md, "Ingest streams").
SINGLE_THREADED_BATCH = 1


class Runner(Protocol):
    """Pooled features of one plain backbone for a preprocessed batch."""

    def run(self, backbone: str, batch: np.ndarray) -> np.ndarray: ...


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def bulk_runner(runner: Runner) -> tuple[Runner, int]:
    """What bulk work (feature extraction over many images, a busy micro-batching lane) should
    call, and how many of its calls to keep running at once.

    An OnnxRunner offers single-threaded sessions of the same checked exports, one call per
    core (`OnnxRunner.streams`): on a CPU, independent single-threaded passes beat one pass
    split over the cores, and the image decoding that feeds them fits between them instead of
    stalling every operator's thread barrier (docs/EXPERIMENTS.md, "Ingest streams"). Any
    other runner (torch on a CPU or GPU) is called one batch at a time, as it is.
    """
    streams = getattr(runner, "streams", None)
    single = getattr(runner, "single_threaded", None)
    if isinstance(streams, int) and streams > 1 and single is not None:
        return single, streams
    return runner, 1


class TorchRunner:
    """Eager torch on `device` (`cpu`, `cuda`...).

    On CUDA the network and its inputs use the channels-last memory format (what cuDNN's
    convolutions run fastest in) and each batch goes up from pinned memory without blocking;
    features come back as float32 on the CPU. `half` runs the network in float16 on CUDA: off
    by default, and for use only where tests/ml/test_cuda.py shows its features agree with
    float32 on that GPU (cosine >= 0.999 and the same predicted labels). On a CPU it is
    ignored: float32, the default memory format, as before.
    """

    def __init__(self, device: str = "cpu", *, half: bool = False) -> None:
        self.device = device
        self.half = half
        self._models: dict[str, torch.nn.Module] = {}
        self._lock = threading.Lock()

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def run(self, backbone: str, batch: np.ndarray) -> np.ndarray:
        import torch

        from app.ml.backbones import load_backbone

        model = load_backbone(backbone, self.device)
        if not self.on_cuda:
            with torch.inference_mode():
                inputs = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
                return model(inputs).float().cpu().numpy()
        model = self._prepare(backbone, model)
        dtype = torch.float16 if self.half else torch.float32
        with torch.inference_mode():
            host = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).pin_memory()
            inputs = host.to(self.device, non_blocking=True).to(
                dtype=dtype, memory_format=torch.channels_last)
            features = model(inputs).float().to("cpu", non_blocking=True)
            torch.cuda.current_stream(torch.device(self.device)).synchronize()
            return features.numpy()

    def _prepare(self, backbone: str, model: torch.nn.Module) -> torch.nn.Module:
        """The CUDA model of `backbone`, converted once: channels-last in place (harmless to
        the other users of load_backbone's cached module, whose inputs any layout suits), and
        with `half` a float16 copy of its own, so they keep float32."""
        import torch

        with self._lock:
            prepared = self._models.get(backbone)
            if prepared is None:
                prepared = model.to(memory_format=torch.channels_last)
                if self.half:
                    prepared = copy.deepcopy(prepared).half()
                self._models[backbone] = prepared
        return prepared


def _network(backbone: str) -> Network:
    network = BACKBONES[backbone].network
    if network is None:
        raise ValueError(f"{backbone!r} is a composite backbone; run its components")
    return network


def export_path(cache_dir: Path, backbone: str) -> Path:
    """Where the export of `backbone` from its current weights lives in `cache_dir`."""
    weights = _network(backbone).weights_sha256[:16]
    return cache_dir / f"{backbone}-{weights}-r{EXPORT_RECIPE}.onnx"


def _parity_batch(network: Network) -> np.ndarray:
    """A fixed batch in the network's input range; odd size, to exercise the dynamic axis."""
    rng = np.random.default_rng(20261202)
    return rng.standard_normal((3, 3, network.input_size, network.input_size)).astype(np.float32)


def _export(backbone: str, path: Path) -> None:
    """Write the ONNX export of `backbone` to `path` atomically (temp file, fsync, rename)."""
    import torch

    from app.ml.backbones import load_backbone

    network = _network(backbone)
    model = load_backbone(backbone, "cpu")
    example = torch.from_numpy(_parity_batch(network)[:2])
    batch = torch.export.Dim("batch", min=1, max=4096)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        program = torch.onnx.export(model, (example,), input_names=["input"],
                                    output_names=["features"], dynamic_shapes=({0: batch},),
                                    dynamo=True, verbose=False)
        if program is None:  # only without dynamo; here for the type checker
            raise RuntimeError(f"torch.onnx.export returned no program for {backbone}")
        program.save(str(temp))
        with temp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class OnnxRunner:
    """ONNX Runtime on the CPU, one session per network per process, made on first use.

    `threads` caps each session's intra-op pool (None: ONNX Runtime's default, every core);
    sessions run one operator at a time, so a request never takes more than that many cores.
    `spin`: whether the pool's threads keep spin-waiting after a run (ONNX Runtime's default)
    or park as soon as it returns; they spin between the operators of a run either way.

    `single_threaded` runs the same checked exports in sessions without a pool, each call on
    its caller's thread, for `streams` (= `threads`, or every core) callers at once: the bulk
    path (`bulk_runner`). Its sessions are made only when bulk work first asks for them.
    """

    def __init__(self, cache_dir: Path, *, threads: int | None = None,
                 spin: bool = False) -> None:
        self.cache_dir = cache_dir
        self.threads = threads
        self.spin = spin
        self.streams = threads or available_cores()
        self._sessions: dict[str, onnxruntime.InferenceSession | None] = {}
        self._single: dict[str, onnxruntime.InferenceSession | None] = {}
        self._lock = threading.Lock()
        self._fallback = TorchRunner("cpu")
        self.single_threaded: Runner = _SingleThreaded(self)

    def run(self, backbone: str, batch: np.ndarray) -> np.ndarray:
        return self._run(self.session(backbone), backbone, batch)

    def _run(self, session: onnxruntime.InferenceSession | None, backbone: str,
             batch: np.ndarray) -> np.ndarray:
        if session is None:  # the export disagreed with torch: torch it is
            return self._fallback.run(backbone, batch)
        inputs = {"input": np.ascontiguousarray(batch, dtype=np.float32)}
        return np.asarray(session.run(None, inputs)[0], dtype=np.float32)

    def single_session(self, backbone: str) -> onnxruntime.InferenceSession | None:
        """A session of the backbone's checked export without an intra-op pool (None where
        the export failed its check); built once, after the pooled one."""
        if backbone in self._single:
            return self._single[backbone]
        checked = self.session(backbone)
        with self._lock:
            if backbone not in self._single:
                self._single[backbone] = None if checked is None else self._load(
                    export_path(self.cache_dir, backbone), threads=1)
            return self._single[backbone]

    def session(self, backbone: str) -> onnxruntime.InferenceSession | None:
        """The backbone's session (None if its export does not match torch); builds it once."""
        if backbone in self._sessions:  # every run asks: no lock once it is built
            return self._sessions[backbone]
        with self._lock:  # held while building, so concurrent first calls export once
            if backbone not in self._sessions:
                self._sessions[backbone] = self._build(backbone)
            return self._sessions[backbone]

    def _build(self, backbone: str) -> onnxruntime.InferenceSession | None:
        path = export_path(self.cache_dir, backbone)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.cache_dir / f".{backbone}.lock"):  # one exporter per host
            session = self._load(path) if path.is_file() else None
            if session is None:
                log.info("onnx.export backbone=%s path=%s", backbone, path)
                _export(backbone, path)
                session = self._load(path)
        if session is None:
            raise RuntimeError(f"ONNX Runtime cannot load the fresh export {path}")
        difference = self.parity(backbone, session)
        if difference > PARITY_TOLERANCE:
            log.error("onnx.parity_failed backbone=%s max_abs_diff=%.3g: using torch",
                      backbone, difference)
            return None
        log.info("onnx.ready backbone=%s max_abs_diff=%.3g", backbone, difference)
        from app.ml.backbones import release_backbone

        release_backbone(backbone, "cpu")  # the export and the check were its last uses here
        return session

    def _load(self, path: Path, *,
              threads: int | None = None) -> onnxruntime.InferenceSession | None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        # The pool's threads spin between the operators of a run, which saves a wake-up per
        # operator (about a millisecond of a 5 ms MobileNetV2 pass), and stop spinning as soon
        # as the run returns, so between runs they take nothing from decoding and the web
        # server; `spin` keeps them spinning after runs too, ONNX Runtime's default
        # (docs/EXPERIMENTS.md, "Threads" and "Serving overhead").
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop",
                                         "0" if self.spin else "1")
        threads = threads or self.threads
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            return onnxruntime.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001  (a damaged cached file: export again)
            log.warning("onnx.cache_unreadable path=%s: exporting again", path, exc_info=True)
            path.unlink(missing_ok=True)
            return None

    def parity(self, backbone: str, session: onnxruntime.InferenceSession) -> float:
        """Max abs difference between this session's features and torch's on a fixed batch."""
        batch = _parity_batch(_network(backbone))
        ours = np.asarray(session.run(None, {"input": batch})[0])
        return float(np.abs(ours - self._fallback.run(backbone, batch)).max())


class _SingleThreaded:
    """An OnnxRunner's networks run on the calling thread alone (OnnxRunner.single_threaded)."""

    def __init__(self, owner: OnnxRunner) -> None:
        self.owner = owner

    def run(self, backbone: str, batch: np.ndarray) -> np.ndarray:
        session = self.owner.single_session(backbone)
        if session is None or len(batch) <= SINGLE_THREADED_BATCH:  # torch takes it whole
            return self.owner._run(session, backbone, batch)
        return np.concatenate([
            self.owner._run(session, backbone, batch[start:start + SINGLE_THREADED_BATCH])
            for start in range(0, len(batch), SINGLE_THREADED_BATCH)])


class _file_lock:  # noqa: N801  (used as a context manager, like open)
    """An exclusive flock on `path`, dropped by the kernel if the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def __enter__(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *_exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def make_runner(device: str, cache_dir: Path, *, engine: str = "auto",
                threads: int | None = None, spin: bool = False) -> Runner:
    """The runner a runtime uses: `engine` `onnx`, `torch`, or `auto` (ONNX Runtime on a CPU,
    torch on any other device)."""
    if engine == "torch" or (engine == "auto" and device != "cpu"):
        return TorchRunner(device)
    if device != "cpu":
        raise ValueError(f"the ONNX engine runs on the CPU; device is {device!r}")
    return OnnxRunner(cache_dir, threads=threads, spin=spin)

