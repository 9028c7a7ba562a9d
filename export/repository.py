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
from mtasr.export.triton_config import graph_config

# Files at the repository root (Triton loads only folders as models).
ROOT_FILES = ("manifest.json", *TOKENIZER_FILES)


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
