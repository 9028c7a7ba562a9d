"""The stateful stages and the ensemble that chains them, written into a model repository (their configs come
from `mtasr.export.triton_config`).

Every stage runs under Triton's sequence batcher (``oldest`` strategy, so one ``execute`` sees
chunks of many streams) with START/END/READY/CORRID controls and the deployment's idle timeout.
The ensemble wires stage outputs to stage inputs by tensor name (:data:`mtasr.protocol.STAGE_IO`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mtasr.export.triton_config import ensemble_config, stage_config
from mtasr.protocol import ENSEMBLE, STAGES

TEMPLATES = Path(__file__).resolve().parent / "templates"  # the thin model.py files copied into repositories


def write_pipeline_models(manifest: dict[str, Any], repo_dir: Path, graph_backend: str | None = None) -> None:
    """The stage models and the ensemble into `repo_dir` (next to the graph models)."""
    for name in STAGES:
        (repo_dir / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(TEMPLATES / "stage.py", repo_dir / name / "1" / "model.py")
        (repo_dir / name / "config.pbtxt").write_text(stage_config(name, manifest, graph_backend))
    (repo_dir / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)
    # Triton needs the version folder although an ensemble has no files; git keeps no empty folders.
    (repo_dir / ENSEMBLE / "1" / ".keep").write_text("")
    (repo_dir / ENSEMBLE / "config.pbtxt").write_text(ensemble_config(manifest))
