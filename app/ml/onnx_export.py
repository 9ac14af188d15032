"""One self-contained ONNX file per model version: preprocessed image in, probabilities out.

The graph is the backbone's cached ONNX export (app.ml.engines, already checked against torch)
with the head appended in ONNX operators that reproduce `Head.predict_proba` step by step:
for a composite backbone every component network is in the graph, each block multiplied by its
weight (features.assemble), then the blocks joined; the features are cast to float64, as the
head computes, centred on the head's mean and L2-normalised (heads.normalise), then the
logistic or prototype logits, a softmax, and a cast to float32.

Inputs take exactly what `app.ml.backbones.preprocess_array` produces, a batch of them:
float32 (N, 3, S, S), dynamic N. Components with one preprocessing recipe share one input
named `input`; components whose recipes differ (MobileNetV2 at 224 and Lite2 at 260) get one
input each, named after the component. The recipe of every input is in the model's
metadata (`preprocessing`, keyed by input name), with the labels and where the file came from.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.backbones import component_weights, components, get_network
from app.ml.features import assemble
from app.ml.heads import _EPS, LogisticHead, PrototypeHead
from app.ml.imaging import decode_image
from app.ml.registry import Network
from app.storage import atomic_writer

# Part of every built file's cache key: change it when the graph or metadata recipe changes.
EXPORT_FORMAT = 2  # 2: JPEGs decode down to draft_side, not max_side
OUTPUT = "probabilities"
SHARED_INPUT = "input"
OPSET = 20
# Max abs difference of the built file's probabilities from the head's on the backbone
# features of a fixed batch; anything near it is a bug in the graph, not rounding.
PARITY_TOLERANCE = 1e-5
# The long side decode_image shrinks every photo to before preprocessing (its default, which
# uploads and predictions use): part of the recipe a client must reproduce.
MAX_SIDE: int = inspect.signature(decode_image).parameters["max_side"].default
DRAFT_SIDE: int = min(MAX_SIDE, inspect.signature(decode_image).parameters["draft_side"].default)
_BATCH = "batch"


def recipe(network: Network) -> dict[str, Any]:
    """What a client does to a photo to get this network's input; the preprocessing metadata
    of one input, and what preprocess_array does after decode_image."""
    return {
        "decode": ("8-bit RGB, EXIF orientation applied, alpha composited on white; JPEG "
                   "decoded with Pillow draft('RGB', (draft_side, draft_side)); then, if its "
                   "long side exceeds max_side, resized so it is max_side (Lanczos, "
                   "reducing_gap 3)"),
        "draft_side": DRAFT_SIDE,
        "max_side": MAX_SIDE,
        "size": network.input_size,
        "crop_pct": network.crop_pct,
        "crop": ("centre square of crop_pct x the shorter side, resized to size x size in one "
                 "Pillow resize(box=...) with `resample`; i.e. Resize(size / crop_pct) then "
                 "CenterCrop(size)"),
        "resample": network.resample,
        "mean": list(network.mean),
        "std": list(network.std),
        "normalise": "(pixel / 255 - mean) / std per channel, in float32",
        "color": "RGB",
        "layout": "NCHW",
        "dtype": "float32",
    }


def input_groups(backbone: str) -> dict[str, tuple[str, ...]]:
    """{graph input name: the components that read it}: one `input` when every component
    preprocesses alike, else one input per component, named after it."""
    parts = components(backbone)
    recipes = {json.dumps(recipe(get_network(part)), sort_keys=True) for part in parts}
    if len(recipes) == 1:
        return {SHARED_INPUT: parts}
    return {part: (part,) for part in parts}


def preprocessing(backbone: str) -> dict[str, dict[str, Any]]:
    """{input name: its recipe (with the components it feeds)}: the `preprocessing` metadata."""
    return {name: {**recipe(get_network(parts[0])), "components": list(parts)}
            for name, parts in input_groups(backbone).items()}


def build_model(*, head: LogisticHead | PrototypeHead, backbone: str,
                backbone_files: Mapping[str, Path], labels: list[str],
                metadata: Mapping[str, str], model_version: int = 0) -> Any:
    """Return the onnx.ModelProto of backbone + head + softmax; raise ValueError.

    `backbone_files` names each component's ONNX export (engines.export_path); `metadata` adds
    to the metadata_props the file always carries (labels, preprocessing, backbone, head).
    """
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    parts = components(backbone)
    dim = sum(get_network(part).dim for part in parts)
    if head.mean.shape != (dim,):
        raise ValueError(f"the head takes {head.mean.shape[0]} features; {backbone} gives {dim}")
    n_classes = _n_classes(head)
    if len(labels) != n_classes:
        raise ValueError(f"{len(labels)} labels for a head of {n_classes} classes")

    nodes: list[Any] = []
    initializers: list[Any] = []
    value_info: list[Any] = []
    inputs = []
    ir_version = 0
    for name, readers in input_groups(backbone).items():
        size = get_network(readers[0]).input_size
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                    [_BATCH, 3, size, size]))
        for part in readers:
            nodes.append(helper.make_node("Identity", [name], [f"{part}/input"],
                                          name=f"{part}/feed"))
    blocks = []
    for part, weight in zip(parts, component_weights(backbone), strict=True):
        network = onnx.load(str(backbone_files[part]))
        ir_version = max(ir_version, network.ir_version)
        _check_export(network, part)
        network = compose.add_prefix(network, f"{part}/")
        nodes.extend(network.graph.node)
        initializers.extend(network.graph.initializer)
        value_info.extend(network.graph.value_info)
        block = network.graph.output[0].name
        if len(parts) > 1:  # assemble: each block times its float32 weight
            factor = f"head/{part}/weight"
            initializers.append(numpy_helper.from_array(np.asarray(weight, np.float32), factor))
            nodes.append(helper.make_node("Mul", [block, factor], [f"{part}/weighted"],
                                          name=f"head/{part}/weigh"))
            block = f"{part}/weighted"
        blocks.append(block)

    def const(name: str, value: np.ndarray | float) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value, np.float64), f"head/{name}"))
        return f"head/{name}"

    def op(kind: str, args: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(kind, args, [f"head/{out}"], name=f"head/{out}", **attrs))
        return f"head/{out}"

    features = (op("Concat", blocks, "features", axis=-1) if len(blocks) > 1
                else op("Identity", blocks, "features"))
    x = op("Cast", [features], "features64", to=TensorProto.DOUBLE)
    # heads.normalise: (x - mean) / max(||x - mean||, eps)
    centred = op("Sub", [x, const("mean", head.mean)], "centred")
    axes = "head/axes"
    initializers.append(numpy_helper.from_array(np.asarray([1], np.int64), axes))
    squares = op("ReduceSumSquare", [centred, axes], "squares", keepdims=1)
    norms = op("Max", [op("Sqrt", [squares], "norms"), const("eps", _EPS)], "safe_norms")
    z = op("Div", [centred, norms], "z")
    if isinstance(head, LogisticHead):  # scale * z @ W.T + b
        raw = op("MatMul", [z, const("weight_t", head.weight.T)], "zw")
        logits = op("Add", [op("Mul", [raw, const("scale", head.scale)], "scaled"),
                            const("bias", head.bias)], "logits")
    else:  # temperature * (z @ P.T, with -1 for a class without images)
        empty = np.linalg.norm(head.prototypes, axis=1) < 0.5  # as PrototypeHead._logits
        prototypes = np.where(empty[:, None], 0.0, head.prototypes)
        sims = op("MatMul", [z, const("prototypes_t", prototypes.T)], "sims")
        sims = op("Add", [sims, const("no_prototype", np.where(empty, -1.0, 0.0))], "sims_fixed")
        logits = op("Mul", [sims, const("temperature", head.temperature)], "logits")
    probabilities = op("Softmax", [logits], "probabilities64", axis=1)
    nodes.append(helper.make_node("Cast", [probabilities], [OUTPUT], name="head/output",
                                  to=TensorProto.FLOAT))

    output = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [_BATCH, n_classes])
    output.doc_string = f"class probabilities, columns in the order of `labels`: {labels}"
    graph = helper.make_graph(nodes, f"nanonet:{backbone}:{head.kind}", inputs, [output],
                              initializer=initializers, value_info=value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=ir_version or onnx.IR_VERSION,
                              producer_name="nanonet", model_version=model_version,
                              doc_string="NanoNet model: preprocessed photos in (see metadata "
                                         "`preprocessing`), class probabilities out.")
    props = {
        "labels": json.dumps(labels),
        "preprocessing": json.dumps(preprocessing(backbone)),
        "inputs": json.dumps({name: list(readers)
                              for name, readers in input_groups(backbone).items()}),
        "output": OUTPUT,
        "backbone": backbone,
        "backbone_components": json.dumps(list(parts)),
        "head": head.kind,
        "export_format": str(EXPORT_FORMAT),
        **metadata,
    }
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def _n_classes(head: LogisticHead | PrototypeHead) -> int:
    return len(head.bias) if isinstance(head, LogisticHead) else len(head.prototypes)


def _check_export(network: Any, part: str) -> None:
    graph = network.graph
    if len(graph.input) != 1 or len(graph.output) != 1 or graph.input[0].name != "input":
        raise ValueError(f"the ONNX export of {part} is not one input -> one output")
    opsets = {entry.domain: entry.version for entry in network.opset_import}
    if opsets.get("", OPSET) != OPSET or set(opsets) - {"", "ai.onnx"}:
        raise ValueError(f"the ONNX export of {part} uses opsets {opsets}, expected {OPSET}")


def save_model(model: Any, path: Path) -> None:
    """Write the model (a ModelProto or its serialised bytes) to `path` atomically."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    with atomic_writer(path) as handle:
        handle.write(data)


def parity(model: bytes | Path, *, head: LogisticHead | PrototypeHead, backbone: str,
           features: Callable[[str, np.ndarray], np.ndarray]) -> float:
    """Max abs difference between the model's (serialised, or a file) probabilities and
    head.predict_proba on `features(component, batch)` (a Runner's run), on a fixed batch of
    each input."""
    import onnxruntime  # type: ignore[import-untyped]

    rng = np.random.default_rng(20261203)
    groups = input_groups(backbone)
    feeds = {}
    for name, readers in groups.items():
        size = get_network(readers[0]).input_size
        feeds[name] = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    source = model if isinstance(model, bytes) else str(model)
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    ours = np.asarray(session.run([OUTPUT], feeds)[0])
    blocks = {part: features(part, feeds[name])
              for name, readers in groups.items() for part in readers}
    expected = head.predict_proba(assemble(backbone, blocks))
    return float(np.abs(ours - expected).max())
