"""`mtasr export`: two `.nemo` checkpoints -> graphs, tokenizer, manifest and Triton repositories.

Everything is written into a staging folder beside the output and moved into place only when the
whole export succeeded, so a failure never leaves a half-written export behind.
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtasr import __version__
from mtasr.deployment import MANIFEST, STAGE_COSTS, ServingSettings
from mtasr.export.calibration import measure_stage_costs
from mtasr.export.checkpoints import (
    ASR_CLASS,
    DIARIZER_CLASS,
    TOKENIZER_FILES,
    ExportError,
    extract_tokenizer,
    inspect_checkpoint,
    load_model,
)
from mtasr.export.compatibility import NEMO_SCRIPT_DIARIZER_CACHE, check_asr_config, check_diarizer_config
from mtasr.export.kv_cache import KV_CACHE
from mtasr.export.quantize import QUANTIZED_GRAPHS
from mtasr.graph_io import PRE_ENCODE_PER_STREAM

MANIFEST_VERSION = 1
SPEAKER_SLOTS = 4


@dataclass(frozen=True)
class ExportSettings:
    right_context: int = 13
    max_streams_per_batch: int = 8
    graph_instances: int = 1
    intra_op_threads: int = 0  # 0: the cores shared among the serving processes (mtasr.deployment.serving_threads)
    max_queue_delay_us: int = 1000
    opset: int = 17
    tensorrt: bool = False
    int8: bool = False  # int8 dynamic quantisation of the graphs `int8_graphs` (mtasr.export.quantize)
    int8_graphs: tuple[str, ...] = QUANTIZED_GRAPHS
    # The encoder's channel cache: "kv" projected keys and values (mtasr.export.kv_cache), or "input" (NeMo's).
    encoder_cache: str = KV_CACHE
    # The encoder's subsampling front end: "stream" (its own graph, once per stream) or "speaker" (in the
    # encoder graph, per speaker instance, as NeMo runs it).
    pre_encode: str = PRE_ENCODE_PER_STREAM
    # Trace the graphs with export.graph_rewrites (the same values, less work); False: NeMo's modules as they are.
    graph_rewrites: bool = True
    # Diarizer (spkcache_len, fifo_len) to serve: NeMo's script's run-time values by default; None: the checkpoint's.
    diarizer_cache: tuple[int, int] | None = NEMO_SCRIPT_DIARIZER_CACHE
    stage_instances: int = 1  # Triton instances of each stateful stage
    max_sequences: int = 1024  # streams one stage instance keeps open at once
    serving: ServingSettings = field(default_factory=ServingSettings)


logger = logging.getLogger(__name__)


def _progress(message: str) -> None:
    logger.info(message)


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"output folder {out_dir} is not empty (pass --overwrite to replace it)")
    ancestor = out_dir.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    try:  # a real probe: permission bits say nothing for root or read-only file systems
        if not ancestor.is_dir():
            raise NotADirectoryError(ancestor)
        tempfile.TemporaryDirectory(dir=ancestor).cleanup()
    except OSError:
        raise ExportError(f"output folder {out_dir} is not writable") from None


def _serving_dims(manifest: dict[str, Any]) -> None:
    """The concrete non-batch dims the server feeds each graph (TensorRT profiles use them)."""
    streaming = manifest["asr"]["streaming"]
    later_chunk_frames = streaming["chunk_feature_frames"][1] + streaming["pre_encode_cache_frames"][1]
    named = {
        "T_feat": later_chunk_frames,
        "T_enc": streaming["encoder_frames_per_chunk"],
        "chunk_feat_frames": later_chunk_frames,
        "spkcache_frames": manifest["diarizer"]["geometry"]["spkcache_len"],
        "fifo_frames": manifest["diarizer"]["geometry"]["fifo_len"],
    }
    for graph in manifest["graphs"].values():
        dims = {}
        for t in graph["inputs"]:
            names = graph["dim_names"].get(t["name"], {})
            dims[t["name"]] = [
                d if d != -1 else named[names[str(axis)]] for axis, d in enumerate(t["shape"]) if axis > 0
            ]
        graph["serving_dims"] = dims


def run_export(
    asr_path: Path,
    diarizer_path: Path,
    out_dir: Path,
    settings: ExportSettings,
    overwrite: bool = False,
    progress: Callable[[str], None] = _progress,
) -> dict[str, Any]:
    """Export both checkpoints into `out_dir`; return the manifest. Raises ExportError on user errors."""
    from mtasr.export.tensorrt import require_tensorrt

    started = time.perf_counter()
    asr_info = inspect_checkpoint(asr_path, "ASR", ASR_CLASS)
    diar_info = inspect_checkpoint(diarizer_path, "diarizer", DIARIZER_CLASS)
    asr_features = check_asr_config(asr_info.config, asr_info.path)
    for note in check_diarizer_config(diar_info.config, asr_features, diar_info.path):
        progress(f"note: {note}")
    check_output_dir(out_dir, overwrite)
    if settings.int8 and settings.tensorrt:
        raise ExportError(
            "--int8 and --tensorrt do not combine: int8 graphs are for ONNX Runtime on CPU, TensorRT builds FP16 "
            "engines from the fp32 graphs (export without --int8 for those)"
        )
    unknown = set(settings.int8_graphs) - set(QUANTIZED_GRAPHS)
    if unknown or not settings.int8_graphs:
        raise ExportError(
            f"--int8-graphs takes some of {', '.join(QUANTIZED_GRAPHS)}, "
            f"got {', '.join(settings.int8_graphs) or 'none'}"
        )
    if settings.tensorrt:
        require_tensorrt()
    if not 1 <= settings.max_streams_per_batch <= 256:
        raise ExportError(f"--max-streams must be between 1 and 256, got {settings.max_streams_per_batch}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a server in a container runs as another user
    try:
        manifest = _export_into(staging, asr_info, diar_info, settings, progress)
        manifest_path = staging / "model_repository" / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")  # what the stages timed next read
        progress("timing the stages on the bundled conversation (the server shares the cores by it)")
        manifest["deployment"][STAGE_COSTS] = measure_stage_costs(staging / "model_repository")
        manifest["export_seconds"] = round(time.perf_counter() - started, 2)
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        from mtasr.export.tensorrt import write_tensorrt_variant

        if not settings.int8:  # TensorRT cannot build engines from int8 ONNX Runtime graphs
            write_tensorrt_variant(manifest, staging / "model_repository", staging / "tensorrt")
        if settings.tensorrt:
            from mtasr.export.tensorrt import build_engines

            progress("building TensorRT engines")
            build_engines(manifest, staging / "model_repository", staging / "tensorrt" / "model_repository")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"done in {manifest['export_seconds']} s: {out_dir}")
    return manifest


def _export_into(staging: Path, asr_info, diar_info, settings: ExportSettings, progress) -> dict[str, Any]:
    from mtasr.export import asr, sortformer
    from mtasr.export.quantize import quantization_settings, quantize_int8
    from mtasr.export.repository import write_python_repository
    from mtasr.features import FeatureConfig

    graphs_dir = staging / "graphs"
    repo_dir = staging / "model_repository"
    repo_dir.mkdir(parents=True)

    progress(f"loading ASR checkpoint {asr_info.path}")
    asr_model = load_model(asr_info)
    supported = asr.supported_right_contexts(asr_model)
    if settings.right_context not in supported:
        raise ExportError(
            f"right context {settings.right_context} is not supported by {asr_info.path} "
            f"(it supports {', '.join(map(str, supported))})"
        )
    progress(f"exporting ASR graphs (right context {settings.right_context})")
    asr_entry = asr.export_asr(
        asr_model,
        graphs_dir,
        settings.right_context,
        settings.opset,
        channel_cache=settings.encoder_cache,
        pre_encode=settings.pre_encode,
        graph_rewrites=settings.graph_rewrites,
    )
    asr_features = FeatureConfig.from_nemo(asr_model.cfg.preprocessor).to_dict()
    del asr_model

    progress(f"loading diarizer checkpoint {diar_info.path}")
    diar_model = load_model(diar_info)
    checkpoint_cache = sortformer.set_cache_sizes(diar_model, settings.diarizer_cache)
    progress("exporting Sortformer core graph")
    streaming = asr_entry["streaming"]  # the diarizer runs on the ASR encoder's chunks
    diar_entry = sortformer.export_sortformer(
        diar_model,
        graphs_dir,
        chunk_feature_frames=streaming["chunk_feature_frames"][1] + streaming["pre_encode_cache_frames"][1],
        drop_extra_pre_encoded=streaming["drop_extra_pre_encoded"],
        opset=settings.opset,
        graph_rewrites=settings.graph_rewrites,
    )
    diar_features = FeatureConfig.from_nemo(diar_model.cfg.preprocessor).to_dict()
    del diar_model

    exported = dict(asr_entry["graphs"], diarizer=diar_entry["graph"])
    for entry in exported.values():
        entry["quantization"] = None
    quantized = [name for name in settings.int8_graphs if name in exported] if settings.int8 else []
    for name in quantized:
        progress(f"quantising the {name} graph to int8")
        entry = exported[name]
        entry.update(quantize_int8(graphs_dir / entry["file"], external_data=entry["external_data"]))

    extract_tokenizer(asr_info.path, repo_dir)

    graphs = {
        name: dict(entry, source_file=entry["file"], file=f"{name}/1/model.onnx") for name, entry in exported.items()
    }
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "mtasr_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "speaker_slots": SPEAKER_SLOTS,
        "right_context": settings.right_context,
        "latency_s": round((settings.right_context + 1) * asr_entry["streaming"]["encoder_frame_s"], 3),
        "checkpoints": {
            role: {"file": info.path.name, "sha256": info.sha256, "class": info.target}
            for role, info in (("asr", asr_info), ("diarizer", diar_info))
        },
        "tokenizer": dict(zip(("model", "vocab"), TOKENIZER_FILES, strict=True)),
        "asr": {
            "streaming": asr_entry["streaming"],
            "decoding": asr_entry["decoding"],
            "features": asr_features,
        },
        "diarizer": {
            "geometry": diar_entry["geometry"],
            "features": diar_features,
            "checkpoint_cache": checkpoint_cache,  # what the checkpoint said, where the geometry differs
        },
        "graphs": graphs,
        "quantization": quantization_settings(quantized) if quantized else None,
        "deployment": {
            "max_streams_per_batch": settings.max_streams_per_batch,
            "instances": settings.graph_instances,
            "intra_op_threads": settings.intra_op_threads,
            "max_queue_delay_us": settings.max_queue_delay_us,
            "stage_instances": settings.stage_instances,
            "max_sequences": settings.max_sequences,
            "serving": asdict(settings.serving),
        },
    }
    _serving_dims(manifest)
    write_python_repository(manifest, graphs_dir, repo_dir)
    shutil.rmtree(graphs_dir)
    return manifest
