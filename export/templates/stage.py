"""Triton python-backend model for one stateful pipeline stage; `parameters.stage` in config.pbtxt says which."""

from mtasr.triton.stage_model import TritonPythonModel  # noqa: F401
