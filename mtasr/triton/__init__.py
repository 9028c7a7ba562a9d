"""What Triton's python backend loads: the model classes behind each repository folder's 3-line `model.py`.

`stage_model`: one stateful pipeline stage (features, diarization, speaker_kernels, asr) under the
sequence batcher; `graph_model`: one ONNX graph run with ONNX Runtime, for stages that call their graphs
through Triton. Everything else they use is plain runtime code, tested without Triton.
"""
