"""The one writer of every Triton `config.pbtxt`: graph models (python backend or TensorRT), the stateful
stages and the ensemble. Each kind is a readable template in `export/templates/*.config.pbtxt.template`
(the sequence batcher and its controls in plain sight); Python fills in only values from the manifest and
the tensor blocks from the wire names of `mtasr.protocol`."""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Any

from mtasr.deployment import ServingSettings, chunk_geometry, max_chunk_samples
from mtasr.protocol import (
    CLIENT_INPUTS,
    CLIENT_OUTPUTS,
    CONTROL_CORRID,
    CONTROL_END,
    CONTROL_READY,
    CONTROL_START,
    ENSEMBLE,
    STAGE_IO,
    STAGES,
)

# The graphs' numpy dtype names (manifest) as Triton data types.
TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "int32": "TYPE_INT32", "float16": "TYPE_FP16"}

# Triton slots per stream the stages admit (`max_sequences`). The features stage refuses a START
# beyond `max_sequences` with "server full"; Triton keeps that refused sequence's slot until the
# idle timeout (or an END), so the spare slots let refusals be answered at once instead of queueing
# new streams silently behind held ones.
SEQUENCE_SLOTS_PER_STREAM = 2

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _render(model_kind: str, **values: Any) -> str:
    """`templates/<model_kind>.config.pbtxt.template` filled in; an empty block leaves no blank line at the end."""
    template = Template((TEMPLATES / f"{model_kind}.config.pbtxt.template").read_text())
    return template.substitute(values).rstrip("\n") + "\n"


def tensor_block(kind: str, tensors: list[tuple[str, str, list[int]]], ragged: bool = False) -> str:
    """`input [...]` or `output [...]` of (name, Triton data type, dims without the batch dimension)."""
    blocks = []
    for name, dtype, dims in tensors:
        lines = [f'    name: "{name}"', f"    data_type: {dtype}"]
        if dims:
            lines.append(f"    dims: [ {', '.join(map(str, dims))} ]")
        else:  # a per-row scalar: Triton wants at least one dim, the graph wants none
            lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        if ragged and -1 in dims:  # streams send chunks of different lengths in one batch
            lines.append("    allow_ragged_batch: true")
        blocks.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]"


def _graph_tensors(tensors: list[dict[str, Any]]) -> list[tuple[str, str, list[int]]]:
    """A graph's manifest tensors; the first dimension is Triton's batch dimension."""
    return [(t["name"], TRITON_TYPES[t["dtype"]], t["shape"][1:]) for t in tensors]


def parameters(values: dict[str, Any]) -> str:
    entries = [f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()]
    return "parameters [\n" + ",\n".join(entries) + "\n]"


def graph_config(name: str, graph: dict[str, Any], max_batch_size: int, backend: str, settings: dict[str, Any]) -> str:
    """config.pbtxt for one graph model; `backend` is "python" (ONNX Runtime) or "tensorrt"."""
    python = backend == "python"
    return _render(
        "graph",
        name=name,
        platform='backend: "python"' if python else 'platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"',
        max_batch_size=max_batch_size,
        inputs=tensor_block("input", _graph_tensors(graph["inputs"])),
        outputs=tensor_block("output", _graph_tensors(graph["outputs"])),
        queue_delay_us=settings["max_queue_delay_us"],
        instances=settings["instances"],
        kind="KIND_CPU" if python else "KIND_GPU",
        parameters=parameters({"intra_op_threads": settings["intra_op_threads"], "inter_op_threads": 1})
        if python
        else "",
    )


def stage_config(name: str, manifest: dict[str, Any], graph_backend: str | None = None) -> str:
    deploy = manifest["deployment"]
    settings = ServingSettings.from_manifest(manifest, **({"graph_backend": graph_backend} if graph_backend else {}))
    inputs, outputs = STAGE_IO[name]
    return _render(
        "stage",
        name=name,
        max_batch_size=deploy["max_streams_per_batch"],
        inputs=tensor_block("input", inputs, ragged=True),
        outputs=tensor_block("output", outputs),
        idle_us=int(settings.sequence_idle_s * 1e6),
        candidate_sequences=SEQUENCE_SLOTS_PER_STREAM * deploy["max_sequences"],
        queue_delay_us=deploy["max_queue_delay_us"],
        start=CONTROL_START,
        end=CONTROL_END,
        ready=CONTROL_READY,
        corrid=CONTROL_CORRID,
        instances=deploy["stage_instances"],
        parameters=parameters({"stage": name, **settings.to_strings(), "intra_op_threads": deploy["intra_op_threads"]}),
    )


def ensemble_config(manifest: dict[str, Any]) -> str:
    steps = []
    for name in STAGES:
        inputs, outputs = STAGE_IO[name]
        maps = [f'      input_map {{ key: "{t}" value: "{t}" }}' for t, _, _ in inputs]
        maps += [f'      output_map {{ key: "{t}" value: "{t}" }}' for t, _, _ in outputs]
        steps.append(f'    {{\n      model_name: "{name}"\n      model_version: -1\n' + "\n".join(maps) + "\n    }")
    return _render(
        "ensemble",
        name=ENSEMBLE,
        max_batch_size=manifest["deployment"]["max_streams_per_batch"],
        inputs=tensor_block("input", CLIENT_INPUTS),
        outputs=tensor_block("output", CLIENT_OUTPUTS),
        steps=",\n".join(steps),
        parameters=parameters(stream_parameters(manifest)),
    )


def stream_parameters(manifest: dict[str, Any]) -> dict[str, int]:
    """What a client needs to stream, published in the ensemble's config (`get_model_config`)."""
    features = manifest["asr"]["features"]
    chunk = chunk_geometry(manifest).shift_frames[1] * features["hop_length"]
    return {
        "sample_rate": features["sample_rate"],
        "chunk_samples": chunk,
        "max_chunk_samples": max_chunk_samples(manifest, ServingSettings.from_manifest(manifest)),
    }
