"""Export: NeMo checkpoints -> ONNX graphs, manifest, TensorRT build recipe, Triton repository."""
