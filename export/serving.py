"""config.pbtxt for the stateful stages and the ensemble that chains them, from the export manifest.

Every stage runs under Triton's sequence batcher (``oldest`` strategy, so one ``execute`` sees
chunks of many streams) with START/END/READY/CORRID controls and the deployment's idle timeout.
The ensemble wires stage outputs to stage inputs by tensor name (:data:`mtasr.stages.STAGE_IO`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mtasr.deployment import ENSEMBLE, STAGES, ServingSettings, chunk_geometry, max_chunk_samples
from mtasr.protocol import CONTROL_CORRID, CONTROL_END, CONTROL_READY, CONTROL_START
from mtasr.stages import CLIENT_INPUTS, CLIENT_OUTPUTS, STAGE_IO

TEMPLATES = Path(__file__).resolve().parent / "templates"  # the thin model.py files copied into repositories

# Triton slots per stream the stages admit (`max_sequences`). The features stage refuses a START
# beyond `max_sequences` with "server full"; Triton keeps that refused sequence's slot until the
# idle timeout (or an END), so the spare slots let refusals be answered at once instead of queueing
# new streams silently behind held ones.
SEQUENCE_SLOTS_PER_STREAM = 2


def _tensors(kind: str, tensors: list[tuple[str, str, list[int]]], ragged: bool = False) -> str:
    blocks = []
    for name, dtype, dims in tensors:
        lines = [f'    name: "{name}"', f"    data_type: {dtype}", f"    dims: [ {', '.join(map(str, dims))} ]"]
        if ragged and -1 in dims:  # streams send chunks of different lengths in one batch
            lines.append("    allow_ragged_batch: true")
        blocks.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]\n"


def _control(name: str, kind: str, body: str) -> str:
    return f'    {{\n      name: "{name}"\n      control [ {{ kind: {kind} {body} }} ]\n    }}'


def _parameters(values: dict[str, Any]) -> str:
    entries = [f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()]
    return "parameters [\n" + ",\n".join(entries) + "\n]\n"


def stage_config(name: str, manifest: dict[str, Any], graph_backend: str | None = None) -> str:
    deploy = manifest["deployment"]
    settings = ServingSettings.from_manifest(manifest, **({"graph_backend": graph_backend} if graph_backend else {}))
    inputs, outputs = STAGE_IO[name]
    flag = "int32_false_true: [ 0, 1 ]"
    controls = ",\n".join(
        [
            _control(CONTROL_START, "CONTROL_SEQUENCE_START", flag),
            _control(CONTROL_END, "CONTROL_SEQUENCE_END", flag),
            _control(CONTROL_READY, "CONTROL_SEQUENCE_READY", flag),
            _control(CONTROL_CORRID, "CONTROL_SEQUENCE_CORRID", "data_type: TYPE_UINT64"),
        ]
    )
    text = f'name: "{name}"\nbackend: "python"\nmax_batch_size: {deploy["max_streams_per_batch"]}\n'
    text += _tensors("input", inputs, ragged=True) + _tensors("output", outputs)
    text += (
        "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {int(settings.sequence_idle_s * 1e6)}\n"
        "  oldest {\n"
        f"    max_candidate_sequences: {SEQUENCE_SLOTS_PER_STREAM * deploy['max_sequences']}\n"
        f"    max_queue_delay_microseconds: {deploy['max_queue_delay_us']}\n"
        "  }\n"
        f"  control_input [\n{controls}\n  ]\n"
        "}\n"
    )
    text += f"instance_group [\n  {{\n    count: {deploy['stage_instances']}\n    kind: KIND_CPU\n  }}\n]\n"
    params = {"stage": name, **settings.to_strings(), "intra_op_threads": deploy["intra_op_threads"]}
    return text + _parameters(params)


def ensemble_config(manifest: dict[str, Any]) -> str:
    text = (
        f'name: "{ENSEMBLE}"\nplatform: "ensemble"\nmax_batch_size: {manifest["deployment"]["max_streams_per_batch"]}\n'
    )
    text += _tensors("input", CLIENT_INPUTS) + _tensors("output", CLIENT_OUTPUTS)
    steps = []
    for name in STAGES:
        inputs, outputs = STAGE_IO[name]
        maps = [f'      input_map {{ key: "{t}" value: "{t}" }}' for t, _, _ in inputs]
        maps += [f'      output_map {{ key: "{t}" value: "{t}" }}' for t, _, _ in outputs]
        steps.append(f'    {{\n      model_name: "{name}"\n      model_version: -1\n' + "\n".join(maps) + "\n    }")
    text += "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"
    return text + _parameters(stream_parameters(manifest))


def stream_parameters(manifest: dict[str, Any]) -> dict[str, int]:
    """What a client needs to stream, published in the ensemble's config (`get_model_config`)."""
    features = manifest["asr"]["features"]
    chunk = chunk_geometry(manifest).shift_frames[1] * features["hop_length"]
    return {
        "sample_rate": features["sample_rate"],
        "chunk_samples": chunk,
        "max_chunk_samples": max_chunk_samples(manifest, ServingSettings.from_manifest(manifest)),
    }


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
