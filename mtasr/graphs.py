"""How a stateful stage runs an exported graph: in process with ONNX Runtime, or through Triton.

Both take and return the graph's own tensors (per-row scalars as [N]). ``TritonGraph`` calls the
repository's graph model by name with a BLS request; that is how the TensorRT deployment runs
(the graph models are ``tensorrt_plan`` there), and on CPU it keeps one copy of each graph in the
server however many stage instances there are. ``OrtGraph`` skips the round trip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class Graph(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def single_threaded_blas():
    """Limit numpy's BLAS to one thread in this process, from now on (or, used as a context manager, inside it).

    For processes whose heavy work is ONNX Runtime's: the stages' own numpy work (mel filterbank,
    cache updates, masks) is small, and OpenBLAS's idle worker threads spin (sched_yield) after every
    call, taking the cores ONNX Runtime and the other stage processes need. Measured here: 20 small
    matmuls 50 ms apart cost 0.93 s of CPU with 2 BLAS threads, 0.01 s with 1.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def cpu_session(path: Path, intra_op_threads: int = 0, inter_op_threads: int = 1):
    """An ONNX Runtime CPU session with full graph optimisation (0 intra-op threads: all cores).

    Idle pool threads sleep instead of spinning: a stage runs several sessions (encoder, then
    many small decoder/joint calls) and Triton runs the stages in parallel processes, so spinning
    threads steal the cores the next call needs. On 2 cores it made the full-size pipeline 25 %
    faster in one process (939 -> 703 ms per 1.12 s chunk), more under Triton.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OrtGraph:
    """An ONNX file run in this process."""

    def __init__(self, path: Path, intra_op_threads: int = 0) -> None:
        self._session = cpu_session(path, intra_op_threads)
        self._outputs = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, feeds), strict=True))


class TritonGraph:
    """A graph model of the same server, called with a BLS request (python backend only)."""

    def __init__(self, model_name: str, graph: dict) -> None:
        self.model_name = model_name
        # Per-row scalars travel as [N, 1] (Triton needs one non-batch dim) and are [N] to the graph.
        self._scalar_inputs = {t["name"] for t in graph["inputs"] if len(t["shape"]) == 1}
        self._scalar_outputs = {t["name"] for t in graph["outputs"] if len(t["shape"]) == 1}
        self._outputs = [t["name"] for t in graph["outputs"]]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import triton_python_backend_utils as pb_utils

        inputs = [
            pb_utils.Tensor(name, np.ascontiguousarray(value[:, None] if name in self._scalar_inputs else value))
            for name, value in feeds.items()
        ]
        request = pb_utils.InferenceRequest(
            model_name=self.model_name, requested_output_names=self._outputs, inputs=inputs
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"graph model '{self.model_name}' failed: {response.error().message()}")
        out = {}
        for name in self._outputs:
            value = pb_utils.get_output_tensor_by_name(response, name).as_numpy()
            out[name] = value.reshape(value.shape[0]) if name in self._scalar_outputs else value
        return out
