"""Build the pipeline's stages from an exported repository: the manifest plus deployment settings.

The Triton stage models (``mtasr.triton.stage_model``) and the in-process pipeline
(``mtasr.local_pipeline``) both build their stages here, so they cannot drift apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from mtasr.chunker import ChunkGeometry
from mtasr.features import FeatureConfig
from mtasr.gating import SPEAKER_CONDITIONINGS, GatingConfig
from mtasr.graphs import Graph, OrtGraph
from mtasr.protocol import ENSEMBLE, MANIFEST, STAGES  # noqa: F401  (re-exported)
from mtasr.rnnt import DecoderGeometry
from mtasr.sortformer_state import SortformerParams
from mtasr.stages import AsrStage, CacheShapes, DiarizationStage, FeatureStage, SpeakerKernelStage


@dataclass(frozen=True)
class ServingSettings:
    """Deployment knobs that are not facts of the checkpoints (written into the stage configs)."""

    sequence_idle_s: float = 60.0  # a stream silent this long is dropped (Triton and the stages alike)
    max_chunk_s: float = 0.0  # longest audio per request; 0: two chunks, at least one second
    # NeMo's cache_gating_buffer_size: a slot keeps its ASR instance while the diarizer heard it in this many of the
    # latest chunks (the committed repository serves more: docs/training.md).
    gating_chunks: int = 2
    segment_gap_s: float = 1.0  # a pause this long starts a new SegLST segment
    # "onnxruntime": the stages run the graphs in their own process (CPU: a BLS call costs about a
    # millisecond, and greedy decoding makes one per step); "triton": BLS calls to the graph models
    # (the TensorRT variant always does this).
    graph_backend: str = "onnxruntime"
    # NeMo's reference builds background masks by list position, not speaker id (a bug); True
    # reproduces it, for comparisons with NeMo only.
    nemo_background_mask: bool = False
    # How the encoder is told its speaker (NeMo's script's masked_asr): "kernels" (False; the speaker
    # kernels get the diarizer's masks) or "masked" (True, the script's default: features masked).
    speaker_conditioning: str = "kernels"
    # NeMo's script's binary_diar_preds: a speaker kernel's target mask is the diarizer's probability thresholded
    # at 0.5 (what the ASR is trained on: 0/1 masks from the reference turns) instead of the probability itself
    # (False, the script's default). Background masks are thresholded either way.
    binary_speaker_masks: bool = False
    # Every speaker slot active every chunk, whatever the diarizer says: the worst-case ASR load,
    # for benchmarks of random-weight models (whose diarizer activates speakers regardless of the audio).
    all_slots_active: bool = False

    def __post_init__(self) -> None:
        if self.graph_backend not in ("triton", "onnxruntime"):
            raise ValueError(f"graph_backend must be 'triton' or 'onnxruntime', got {self.graph_backend!r}")
        if self.speaker_conditioning not in SPEAKER_CONDITIONINGS:
            raise ValueError(
                f"speaker_conditioning must be one of {', '.join(SPEAKER_CONDITIONINGS)}, "
                f"got {self.speaker_conditioning!r}"
            )
        if self.gating_chunks < 1:
            raise ValueError(f"gating_chunks must be at least 1, got {self.gating_chunks}")

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> ServingSettings:
        kinds = {f.name: f.type for f in fields(cls)}
        parsed: dict[str, Any] = {}
        for name, value in values.items():
            if name in kinds:
                parsed[name] = {"float": float, "int": int, "str": str, "bool": _as_bool}[kinds[name]](value)
        return cls(**parsed)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], **overrides: Any) -> ServingSettings:
        """The settings a repository was exported with (``manifest.json`` -> deployment), with overrides."""
        return cls(**{**manifest.get("deployment", {}).get("serving", {}), **overrides})

    def to_strings(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def _as_bool(value: str) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def models_to_load(manifest: Mapping[str, Any]) -> list[str]:
    """What a server must load: the ensemble (Triton loads its stages), plus the graph models only
    when the stages call them. Empty means everything."""
    serving = manifest.get("deployment", {}).get("serving", {})
    if serving.get("graph_backend", ServingSettings.graph_backend) == "onnxruntime":
        return [ENSEMBLE]
    return []


# The stages whose graphs take a chunk's time, and their graphs. The processes running them (the diarization and ASR
# stages' instances, or with graph_backend "triton" those graphs' models' instances) compute at the same time.
HEAVY_STAGES = {"diarization": ("diarizer",), "asr": ("pre_encoder", "encoder", "decoder", "joint")}
# Where `mtasr export` records what each stage cost per chunk (`mtasr.export.calibration`): the manifest's deployment.
STAGE_COSTS = "stage_costs_ms"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def stage_of_graph(graph: str) -> str | None:
    """The heavy stage that runs `graph` (None: no heavy stage does)."""
    return next((stage for stage, graphs in HEAVY_STAGES.items() if graph in graphs), None)


def serving_threads(
    manifest: Mapping[str, Any], configured: int, stage: str | None = None, cores: int | None = None
) -> int:
    """ONNX Runtime intra-op threads of one served process that runs graphs of `stage`: `configured` when
    above 0. 0 shares the cores among the heavy stages' processes so their thread pools add up to the
    machine, in proportion to what each stage cost per chunk when the export timed it (`STAGE_COSTS`;
    evenly when it did not), at least one each. Every process taking every core (ONNX Runtime's own
    default) oversubscribed 2 cores under load where the stages cost alike (the default pair: one thread
    each served 1.07-1.16x the streams, docs/bench/default-threads); where the ASR costs 6x the diarizer
    (the full-size pair), one thread each left a core idle (docs/bench/full-threads)."""
    if configured > 0:
        return configured
    deploy = manifest.get("deployment", {})
    local = deploy.get("serving", {}).get("graph_backend", ServingSettings.graph_backend) == "onnxruntime"
    instances = int(deploy.get("stage_instances" if local else "instances", 1))
    per_instance = max(1, (cores or available_cores()) // instances)
    costs = deploy.get(STAGE_COSTS) or {}
    heavy = [float(costs.get(name, 0.0)) for name in HEAVY_STAGES]
    if stage not in HEAVY_STAGES or min(heavy) <= 0:
        return max(1, per_instance // len(HEAVY_STAGES))
    return max(1, round(per_instance * float(costs[stage]) / sum(heavy)))


def load_manifest(repo_dir: Path) -> dict[str, Any]:
    path = Path(repo_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {repo_dir} a repository written by `mtasr export`?")
    return json.loads(path.read_text())


def chunk_geometry(manifest: Mapping[str, Any]) -> ChunkGeometry:
    return ChunkGeometry.from_manifest(manifest["asr"]["streaming"])


def chunk_samples(manifest: Mapping[str, Any]) -> int:
    """The audio of one streaming chunk, in samples: what clients send per request."""
    return chunk_geometry(manifest).shift_frames[1] * manifest["asr"]["features"]["hop_length"]


def max_chunk_samples(manifest: Mapping[str, Any], settings: ServingSettings) -> int:
    features = manifest["asr"]["features"]
    if settings.max_chunk_s > 0:
        return int(round(settings.max_chunk_s * features["sample_rate"]))
    return max(2 * chunk_samples(manifest), int(features["sample_rate"]))


GraphFactory = Callable[[str], Graph]


def local_graphs(repo_dir: Path, manifest: Mapping[str, Any], intra_op_threads: int = 0) -> GraphFactory:
    """Graphs run in process from the repository's ONNX files."""
    return lambda name: OrtGraph(Path(repo_dir) / manifest["graphs"][name]["file"], intra_op_threads)


def build_stage(
    name: str, manifest: Mapping[str, Any], repo_dir: Path, settings: ServingSettings, graphs: GraphFactory
):
    """One stage, ready to `process` requests."""
    idle = settings.sequence_idle_s
    geometry = chunk_geometry(manifest)
    if name == "features":
        features = FeatureConfig.from_dict(manifest["asr"]["features"])
        max_streams = manifest.get("deployment", {}).get("max_sequences")
        return FeatureStage(features, geometry, max_chunk_samples(manifest, settings), idle, max_streams)
    if name == "diarization":
        params = SortformerParams.from_dict(manifest["diarizer"]["geometry"])
        # Graph models served by Triton (and TensorRT profiles) take the full cache sizes their configs declare.
        trim = settings.graph_backend == "onnxruntime"
        return DiarizationStage(params, graphs("diarizer"), idle, trim_cache=trim)
    if name == "speaker_kernels":
        slots, width = manifest["speaker_slots"], geometry.encoder_frames_per_chunk
        gating = GatingConfig(
            width,
            settings.gating_chunks,
            max_active=slots,
            nemo_background_mask=settings.nemo_background_mask,
            all_active=settings.all_slots_active,
            conditioning=settings.speaker_conditioning,
            binary_targets=settings.binary_speaker_masks,
        )
        return SpeakerKernelStage(gating, slots, width, geometry.padded_frames, idle)
    if name == "asr":
        from mtasr.transcript import Tokenizer

        return AsrStage(
            geometry,
            DecoderGeometry.from_manifest(manifest["asr"]["decoding"]),
            CacheShapes.from_manifest(manifest["asr"]["streaming"]),
            graphs("encoder"),
            graphs("decoder"),
            graphs("joint"),
            Tokenizer(Path(repo_dir) / manifest["tokenizer"]["model"]),
            idle,
            settings.segment_gap_s,
            # Repositories exported before the front end had its own graph run it inside the encoder.
            pre_encoder=graphs("pre_encoder") if "pre_encoder" in manifest["graphs"] else None,
        )
    raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
