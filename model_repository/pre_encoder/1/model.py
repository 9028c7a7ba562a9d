"""Triton python-backend model serving this folder's `model.onnx` (see mtasr.triton.graph_model)."""

from mtasr.triton.graph_model import TritonPythonModel  # noqa: F401
