"""Exports: a model version as one self-contained ONNX file, built once, then served from disk.

The file (app.ml.onnx_export) is the backbone's checked ONNX export with the version's head
appended. It is built on the first download, checked against the head on the backbone's
features, and written atomically beside the version's head, as
`data/models/<model>/<version>.<key>.onnx`: `key` hashes everything the bytes depend on
besides the immutable version (the export format, the backbone exports' weights and recipe,
the NanoNet release), so a stale file is never served and deleting the version deletes it
(versions.remove_version_files).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app.db.tables import Account
from app.errors import InvalidInput, Unavailable
from app.runtime import Runtime
from app.services.models import get_model, refuse_multi_label
from app.services.versions import load_head, serving_version

if TYPE_CHECKING:
    from app.ml.engines import OnnxRunner
    from app.ml.heads import Head

log = logging.getLogger("nanonet.exports")

FORMATS = ("onnx",)
EXPORT_SUFFIX = ".onnx"

_build_lock = threading.Lock()  # one build at a time per process; downloads of built files skip it
_runners: dict[Path, OnnxRunner] = {}
_runners_lock = threading.Lock()


@dataclass(frozen=True)
class Export:
    path: Path
    filename: str  # what the download is called: <model name>-v<n>.onnx
    version: int


def nanonet_version() -> str:
    try:
        return importlib.metadata.version("nanonet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def export_version(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                   number: int | None = None, fmt: str = "onnx") -> Export:
    """The file of version `number` (default: the active one) in `fmt`, built if not yet.

    Raises InvalidInput (unknown format), NotFound (model or version), Conflict (not trained,
    version not ready or not loadable here), Unavailable (the backbone's ONNX export does not
    agree with torch on this server). Reads the database first and ends its transaction before
    building, which takes seconds the first time (exporting the backbone included).
    """
    if fmt not in FORMATS:
        raise InvalidInput(f"Unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}.",
                           code="unknown_format", details={"formats": list(FORMATS)})
    model = get_model(session, account=account, model_id=model_id)
    refuse_multi_label(model, "The ONNX export")
    version = serving_version(session, model=model, number=number)
    head, meta = load_head(runtime, version)
    facts = {"model_id": model.id, "model_name": model.name, "version": str(version.number),
             "version_id": version.id, "nanonet_version": nanonet_version()}
    artifact, number, filename = version.artifact_path, version.number, _filename(model.name,
                                                                                 version.number)
    session.commit()  # the build holds no pooled connection

    from app.ml.backbones import components
    from app.ml.engines import export_path

    engines_dir = runtime.settings.engines_dir
    backbone = meta["backbone"]
    backbone_files = {part: export_path(engines_dir, part) for part in components(backbone)}
    path = export_file(runtime.settings.models_dir / artifact, backbone_files)
    if not path.is_file():
        with _build_lock:
            if not path.is_file():  # another request may have built it meanwhile
                _build(runtime, path, head=head, meta=meta, backbone_files=backbone_files,
                       facts=facts, number=number)
    return Export(path=path, filename=filename, version=number)


def export_file(artifact: Path, backbone_files: dict[str, Path]) -> Path:
    """Where the export of the version whose head is `artifact` lives, for these backbones."""
    from app.ml.onnx_export import EXPORT_FORMAT

    recipe = json.dumps([EXPORT_FORMAT, sorted(p.name for p in backbone_files.values()),
                         nanonet_version()])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    return artifact.with_name(f"{artifact.stem}.{key}{EXPORT_SUFFIX}")


def _build(runtime: Runtime, path: Path, *, head: Head, meta: dict[str, Any],
           backbone_files: dict[str, Path], facts: dict[str, str], number: int) -> None:
    from app.ml import onnx_export
    from app.ml.heads import MultiLabelHead

    if isinstance(head, MultiLabelHead):  # refused before (refuse_multi_label): never here
        raise TypeError("a multi-label head has no ONNX export yet")
    backbone = meta["backbone"]
    runner = _onnx_runner(runtime)
    for part in backbone_files:
        if runner.session(part) is None:  # exports (and checks) it on first use
            raise Unavailable(f"The ONNX export of backbone {part} does not agree with its "
                              "torch weights on this server, so no ONNX file can be made.",
                              code="export_unavailable")
    model = onnx_export.build_model(head=head, backbone=backbone,
                                    backbone_files=backbone_files, labels=list(meta["labels"]),
                                    metadata=facts, model_version=number)
    data = model.SerializeToString()
    difference = onnx_export.parity(data, head=head, backbone=backbone,
                                    features=runner.run)
    if difference > onnx_export.PARITY_TOLERANCE:
        raise RuntimeError(f"the ONNX file of {path.name} differs from its head by "
                           f"{difference:.3g}")
    onnx_export.save_model(data, path)
    log.info("exports.built path=%s bytes=%d max_abs_diff=%.3g", path, len(data), difference)


def _onnx_runner(runtime: Runtime) -> OnnxRunner:
    """The process's ONNX runner if it has one (its checked sessions are reused), else one kept
    for exports alone (a server whose backbones run in torch, on a GPU)."""
    from app.ml.engines import OnnxRunner

    engines_dir = runtime.settings.engines_dir
    runner = runtime.runner
    inner = getattr(runner, "inner", runner)  # inside app.ml.batching.BatchingRunner
    if isinstance(inner, OnnxRunner) and inner.cache_dir == engines_dir:
        return inner
    with _runners_lock:
        if engines_dir not in _runners:
            _runners[engines_dir] = OnnxRunner(engines_dir)
        return _runners[engines_dir]


def _filename(name: str, number: int) -> str:
    """`<model name>-v<n>.onnx`, the name as a safe ASCII slug."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "model"
    return f"{slug[:80]}-v{number}{EXPORT_SUFFIX}"
