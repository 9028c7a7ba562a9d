"""Triton python-backend model serving this folder's `model.onnx` (see mtasr.triton_graph)."""

from mtasr.triton_graph import TritonPythonModel  # noqa: F401
