"""Triton model repositories generated from the export manifest: every value is read from it.

Two variants share model names and tensor names:
- `model_repository/`: python-backend models running the ONNX graphs with ONNX Runtime (CPU here,
  any Triton build);
- `tensorrt/model_repository/`: `tensorrt_plan` models whose engines `tensorrt/build_engines.sh`
  builds on the target GPU (inside NVIDIA's Triton container, which has trtexec).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mtasr.export.checkpoints import TOKENIZER_FILES
from mtasr.export.serving import TEMPLATES, write_pipeline_models

TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "int32": "TYPE_INT32", "float16": "TYPE_FP16"}
# Files at the repository root (Triton loads only folders as models).
ROOT_FILES = ("manifest.json", *TOKENIZER_FILES)


def _tensor_block(kind: str, tensors: list[dict[str, Any]]) -> str:
    blocks = []
    for t in tensors:
        dims = t["shape"][1:]  # the first dimension is Triton's batch dimension
        lines = [f'    name: "{t["name"]}"', f"    data_type: {TRITON_TYPES[t['dtype']]}"]
        if dims:
            lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
        else:  # a per-row scalar: Triton wants at least one dim, the graph wants none
            lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        blocks.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]\n"


def graph_config(name: str, graph: dict[str, Any], max_batch_size: int, backend: str, settings: dict[str, Any]) -> str:
    """config.pbtxt for one graph model; `backend` is "python" (ONNX Runtime) or "tensorrt"."""
    head = [f'name: "{name}"']
    if backend == "python":
        head.append('backend: "python"')
        kind = "KIND_CPU"
    else:
        head += ['platform: "tensorrt_plan"', 'default_model_filename: "model.plan"']
        kind = "KIND_GPU"
    head.append(f"max_batch_size: {max_batch_size}")
    text = "\n".join(head) + "\n"
    text += _tensor_block("input", graph["inputs"]) + _tensor_block("output", graph["outputs"])
    text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {settings['max_queue_delay_us']}\n}}\n"
    text += f"instance_group [\n  {{\n    count: {settings['instances']}\n    kind: {kind}\n  }}\n]\n"
    if backend == "python":
        params = {"intra_op_threads": settings["intra_op_threads"], "inter_op_threads": 1}
        entries = [f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()]
        text += "parameters [\n" + ",\n".join(entries) + "\n]\n"
    return text


def max_batch(manifest: dict[str, Any], graph_name: str) -> int:
    """Rows per graph call: speaker instances for the ASR graphs, streams for the diarizer."""
    deploy = manifest["deployment"]
    streams = deploy["max_streams_per_batch"]
    return streams if graph_name == "diarizer" else streams * manifest["speaker_slots"]


def write_python_repository(manifest: dict[str, Any], graphs_dir: Path, repo_dir: Path) -> None:
    """Lay out the ONNX Runtime variant: `<graph>/config.pbtxt`, `<graph>/1/{model.py,model.onnx}`."""
    settings = manifest["deployment"]
    for name, graph in manifest["graphs"].items():
        version_dir = repo_dir / name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(graphs_dir / graph["source_file"], version_dir / "model.onnx")
        if graph.get("external_data"):
            shutil.move(graphs_dir / graph["external_data"], version_dir / graph["external_data"])
        shutil.copy2(TEMPLATES / "onnx_graph.py", version_dir / "model.py")
        (repo_dir / name / "config.pbtxt").write_text(
            graph_config(name, graph, max_batch(manifest, name), "python", settings)
        )
    write_pipeline_models(manifest, repo_dir)
