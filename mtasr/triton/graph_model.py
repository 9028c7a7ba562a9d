"""Python-backend model that serves one exported ONNX graph with ONNX Runtime.

The PyPI tritonserver has no onnxruntime backend, so graphs run inside python-backend models. Every
request of an `execute()` batch whose non-batch shapes agree goes through ONE session call;
a malformed request gets its own error and the others are still answered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mtasr.deployment import load_manifest, serving_threads, stage_of_graph
from mtasr.graphs import cpu_session

_NUMPY_DTYPES = {
    "TYPE_FP32": np.float32,
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
    "TYPE_FP16": np.float16,
}


def _thread_counts(parameters: dict[str, Any]) -> tuple[int, int]:
    """(intra-op, inter-op) ONNX Runtime threads from the model config's `parameters`."""

    def param(key: str, default: int) -> int:
        value = parameters.get(key, {}).get("string_value", "")
        return int(value) if value else default

    return param("intra_op_threads", 0), param("inter_op_threads", 1)


def check_input(name: str, array: np.ndarray, dtype: type, dims: list[int]) -> str | None:
    """Why `array` cannot be the batched input `name` (dims exclude the batch dimension), or None."""
    if array.dtype != dtype:
        return f"input '{name}' must be {np.dtype(dtype).name}, got {array.dtype.name}"
    if array.ndim != len(dims) + 1:
        return f"input '{name}' must have {len(dims) + 1} dimensions, got shape {list(array.shape)}"
    for axis, (got, want) in enumerate(zip(array.shape[1:], dims, strict=True), start=1):
        if want != -1 and got != want:
            return f"input '{name}' dimension {axis} must be {want}, got {got}"
    if array.shape[0] == 0:
        return f"input '{name}' is empty"
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        return f"input '{name}' holds NaN or infinite values"
    return None


def _model_dims(tensor_config: dict[str, Any]) -> list[int]:
    if "reshape" in tensor_config:
        return [int(d) for d in tensor_config["reshape"].get("shape", [])]
    return [int(d) for d in tensor_config["dims"]]


class TritonPythonModel:
    """Serves `<version>/model.onnx`; tensor names, dtypes and dims come from config.pbtxt."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        # A `reshape` is what the model sees (per-row scalars: dims [1] on the wire, [] here).
        self.inputs = [(i["name"], _NUMPY_DTYPES[i["data_type"]], _model_dims(i)) for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        graph = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        intra_op, inter_op = _thread_counts(config.get("parameters", {}))
        manifest = load_manifest(Path(args["model_repository"]).parent)
        threads = serving_threads(manifest, intra_op, stage_of_graph(args["model_name"]))
        self.session = cpu_session(graph, threads, inter_op)

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            arrays, error = [], None
            for name, dtype, dims in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None:
                    error = f"missing input '{name}'"
                    break
                array = tensor.as_numpy()
                error = check_input(name, array, dtype, dims)
                if error:
                    break
                arrays.append(array)
            if error:
                responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(error))
                continue
            # Requests stack into one call when all their non-batch dims agree.
            key = tuple(a.shape[1:] for a in arrays)
            groups.setdefault(key, []).append((index, arrays))

        for members in groups.values():
            sizes = [arrays[0].shape[0] for _, arrays in members]
            feeds = {
                name: np.concatenate([arrays[i] for _, arrays in members]) for i, (name, _, _) in enumerate(self.inputs)
            }
            try:
                results = self.session.run(self.outputs, feeds)
            except Exception as err:  # a graph failure answers these requests only
                for index, _ in members:
                    responses[index] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"graph failed: {err}")
                    )
                continue
            offsets = np.cumsum([0, *sizes])
            for (index, _), start, stop in zip(members, offsets[:-1], offsets[1:], strict=True):
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(value[start:stop]))
                    for name, value in zip(self.outputs, results, strict=True)
                ]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self) -> None:
        self.session = None
