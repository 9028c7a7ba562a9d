"""Writing ONNX graphs: one call that exports, consolidates weights and describes the result."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtasr.export.graph_rewrites import exportable_conv_lengths, graph_rewrites

# Protobuf cannot hold a model over 2 GiB; above this many weight bytes we write external data.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_500_000_000

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(float16)": "float16",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class GraphSpec:
    """The names that identify a graph's tensors everywhere (graph, manifest, Triton configs)."""

    file: str
    inputs: list[str]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)


def export_onnx(
    module: torch.nn.Module,
    example_inputs: dict[str, torch.Tensor],
    spec: GraphSpec,
    out_dir: Path,
    opset: int = 17,
    rewrites: bool = True,
) -> dict[str, Any]:
    """Export `module` to `out_dir/spec.file` and return its manifest entry (names, dtypes, shapes, and
    the names of its dynamic axes). `rewrites`: traced with `export.graph_rewrites` (False: NeMo's modules as
    they are, but for the length rule the exporter needs; for comparisons).

    Weights go into the graph file, or into exactly one `<file>.data` beside it when the graph is
    too large for protobuf (the TorchScript exporter alone would write one file per tensor).
    """
    import onnx
    import onnxruntime as ort

    args = tuple(example_inputs[name] for name in spec.inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / spec.file
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        raw = Path(tmp) / spec.file
        with torch.no_grad(), graph_rewrites() if rewrites else exportable_conv_lengths():
            torch.onnx.export(
                module,
                args,
                str(raw),
                dynamo=False,
                input_names=spec.inputs,
                output_names=spec.outputs,
                dynamic_axes=spec.dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
            )
        proto = onnx.load(str(raw), load_external_data=True)
        external_data = save_onnx(proto, target)
        del proto
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    session.run(None, {name: example_inputs[name].numpy() for name in spec.inputs})  # proves it runs
    return dict(describe_onnx(session, target, external_data=external_data), dim_names=dim_names(spec.dynamic_axes))


def dim_names(dynamic_axes: dict[str, dict[int, str]]) -> dict[str, dict[str, str]]:
    """A graph's dynamic axes as its manifest entry names them ({tensor: {axis: name}}): which axes are the
    same size (a batch, a frame count), what the serving configs and TensorRT profiles are built from."""
    return {tensor: {str(axis): name for axis, name in axes.items()} for tensor, axes in dynamic_axes.items()}


def save_onnx(proto, target: Path) -> str | None:
    """Write `proto` (weights loaded) to `target`, its weights inline or, when protobuf cannot hold
    them, in exactly one `<target name>.data` beside it; return that file's name, or None."""
    import onnx

    weight_bytes = sum(len(t.raw_data) for t in proto.graph.initializer)
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD_BYTES
    data_name = target.name + ".data"
    (target.parent / data_name).unlink(missing_ok=True)
    onnx.save_model(
        proto,
        str(target),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=1024,
    )
    if not external:
        return None
    # onnx creates the data file private (0600); a server in a container runs as another user.
    (target.parent / data_name).chmod(0o644)
    return data_name


def describe_onnx(session, path: Path, external_data: str | None = None) -> dict[str, Any]:
    """The manifest entry of the graph at `path`, loaded as `session`: files, size, every tensor."""

    def tensors(items) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "dtype": _ORT_TYPES[t.type],
                "shape": [d if isinstance(d, int) else -1 for d in t.shape],
            }
            for t in items
        ]

    size = path.stat().st_size + ((path.parent / external_data).stat().st_size if external_data else 0)
    return {
        "file": path.name,
        "external_data": external_data,
        "bytes": size,
        "inputs": tensors(session.get_inputs()),
        "outputs": tensors(session.get_outputs()),
    }
