"""What one `mtasr bench` run measures: the presets, the latency settings, the audio each stream sends."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mtasr.deployment import available_cores
from mtasr.training.voices import SAMPLE_RATE

ENCODER_FRAME_S = 0.08  # FastConformer 8x subsampling of 10 ms features
MODEL_SETS = ("tiny", "full", "default")
# Random-weight diarizers activate speakers whatever the audio says (the full-size one: always the
# same two of four). These sets run with every speaker slot active on both sides: the worst-case load.
ALL_SLOTS_ACTIVE = ("tiny", "full")


@dataclass(frozen=True)
class ExportVariant:
    """One way of exporting the same checkpoints, benched side by side with the others."""

    suffix: str  # appended to the model set's name in the report ("" for the baseline)
    encoder_cache: str  # `mtasr export --encoder-cache`
    int8: bool  # `mtasr export --int8`
    pre_encode: str | None = None  # `mtasr export --pre-encode`; None: its default
    threads: int | None = None  # `mtasr export --threads` (each stage's ONNX Runtime threads); None: its default
    queue_delay_us: int | None = None  # `mtasr export --max-queue-delay-us`; None: its default
    max_streams: int | None = None  # `mtasr export --max-streams` (streams per batch); None: the run's concurrency
    stage_instances: int | None = None  # `mtasr export --stage-instances`; None: its default
    int8_graphs: str | None = None  # `mtasr export --int8-graphs` (with int8); None: every graph
    nemo_graphs: bool = False  # `mtasr export --nemo-graphs`: NeMo's modules traced without export.graph_rewrites

    def export_options(self) -> list[str]:
        options = ["--encoder-cache", self.encoder_cache] + (["--int8"] if self.int8 else [])
        if self.int8_graphs is not None:
            options += ["--int8-graphs", self.int8_graphs]
        if self.pre_encode is not None:
            options += ["--pre-encode", self.pre_encode]
        if self.threads is not None:
            options += ["--threads", str(self.threads)]
        if self.queue_delay_us is not None:
            options += ["--max-queue-delay-us", str(self.queue_delay_us)]
        if self.max_streams is not None:
            options += ["--max-streams", str(self.max_streams)]
        if self.stage_instances is not None:
            options += ["--stage-instances", str(self.stage_instances)]
        if self.nemo_graphs:
            options += ["--nemo-graphs"]
        return options

    def describe(self) -> str:
        return "export " + " ".join(self.export_options())


# The baseline is today's default export; every other variant is reported against it and against NeMo.
BASELINE_VARIANT = "kvcache"
VARIANTS = {
    BASELINE_VARIANT: ExportVariant("", "kv", False),
    "input-cache": ExportVariant(" input-cache", "input", False),  # NeMo's channel-cache layout
    "int8": ExportVariant(" int8", "kv", True),
    # int8 of the ASR's encoder and prediction network only: on the default pair int8 moved tokens most through
    # the diarizer (every speaker's masks) and the joint (every emission).
    "int8-asr": ExportVariant(" int8-asr", "kv", True, int8_graphs="pre_encoder,encoder,decoder"),
    # The encoder's subsampling front end per speaker instance, inside the encoder graph, as NeMo runs it (the
    # default export runs it once per stream).
    "pre-encode-speaker": ExportVariant(" pre-encode-speaker", "kv", False, pre_encode="speaker"),
    # NeMo's modules traced as they are, without the rewrites that keep their values (export.graph_rewrites).
    "nemo-graphs": ExportVariant(" nemo-graphs", "kv", False, nemo_graphs=True),
    # Thread budgets and batching (serving settings only, the same graphs). By default the cores are shared between
    # the diarization and ASR stages' processes by what each stage cost per chunk at export
    # (`mtasr.deployment.serving_threads`); threads-all gives each of them every core (ONNX Runtime's own default),
    # threads-1 one thread each (the even share on 2 cores, this project's default before).
    "threads-all": ExportVariant(" threads-all", "kv", False, threads=available_cores()),
    "threads-1": ExportVariant(" threads-1", "kv", False, threads=1),
    "queue-5ms": ExportVariant(" queue-5ms", "kv", False, queue_delay_us=5000),
    # Batches capped below the streams in flight: when one batch carries every stream, the stages take it in
    # turn and each waits for the others; smaller batches keep the diarizer and the encoder busy together.
    "batch-4": ExportVariant(" batch-4", "kv", False, max_streams=4),
    "batch-8": ExportVariant(" batch-8", "kv", False, max_streams=8),
    # Two processes per stage (Triton spreads the streams over them), 4 streams per batch: the asr stage, busy
    # all the time in one process, may then use a second core while the diarizer's is idle.
    "instances-2": ExportVariant(" instances-2", "kv", False, max_streams=4, stage_instances=2),
}
# The variants that export the graphs differently (the quick preset runs each once).
EXPORT_PATH_VARIANTS = (BASELINE_VARIANT, "input-cache", "int8")


def variant_of(model: str) -> tuple[str, str]:
    """(model set, variant) of a report's model name, e.g. "full int8" -> ("full", "int8")."""
    for name, variant in VARIANTS.items():
        if variant.suffix and model.endswith(variant.suffix):
            return model.removesuffix(variant.suffix), name
    return model, BASELINE_VARIANT


def right_context_for(latency_s: float) -> int:
    """The encoder right context whose chunk is `latency_s` long (0.16 s -> 1, 1.12 s -> 13)."""
    frames = round(latency_s / ENCODER_FRAME_S)
    if frames < 1 or abs(frames * ENCODER_FRAME_S - latency_s) > 1e-6:
        raise ValueError(f"latency {latency_s} s is not a whole number of {ENCODER_FRAME_S} s encoder frames")
    return frames - 1


@dataclass(frozen=True)
class BenchPlan:
    """What one `mtasr bench` run measures."""

    mode: str
    models: tuple[str, ...]
    latencies_s: tuple[float, ...]
    concurrency: tuple[int, ...]  # perf_analyzer concurrent streams, gRPC streaming and HTTP
    nemo_batches: tuple[int, ...]  # NeMo streams per batch
    speakers: int = 4  # speakers in every benchmark stream
    stream_s: float = 12.0  # audio per stream
    memory_streams: tuple[int, ...] = (1, 2, 4, 8)  # streams held open for the memory figures
    memory_latency_s: float = 1.12
    measurement_ms: int = 8000  # perf_analyzer window
    max_trials: int = 6
    stability_percentage: float = 25.0
    variants: tuple[str, ...] = (BASELINE_VARIANT,)  # exports of every model set (VARIANTS), the baseline first ...
    variant_latencies_s: tuple[float, ...] | None = None  # ... the others at these settings (None: every one)
    # One stream this long (past the diarizer's cache fill) timed chunk by chunk on both sides, at the
    # memory setting (mtasr.bench.steady); None: not measured.
    steady_stream_s: float | None = None

    def __post_init__(self) -> None:
        unknown = set(self.models) - set(MODEL_SETS)
        if unknown:
            raise ValueError(f"unknown model sets {sorted(unknown)}; choose from {', '.join(MODEL_SETS)}")
        for latency in self.latencies_s:
            right_context_for(latency)
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
        if not self.variants or self.variants[0] != BASELINE_VARIANT:
            raise ValueError(
                f"the baseline variant {BASELINE_VARIANT!r} comes first: the others are measured against it"
            )
        if min(self.concurrency + self.nemo_batches + self.memory_streams) < 1:
            raise ValueError("concurrency, batch and stream counts must be >= 1")
        if not 1 <= self.speakers <= 4:
            raise ValueError("speakers must be 1..4")

    @property
    def measured_latency_s(self) -> float:
        """The setting of the memory and long-stream figures: `memory_latency_s`, else the last one benched."""
        return self.memory_latency_s if self.memory_latency_s in self.latencies_s else self.latencies_s[-1]

    @property
    def streams(self) -> int:
        """Distinct conversations in the input data: one per concurrent stream at most."""
        return max(self.concurrency + self.nemo_batches + self.memory_streams)


PLANS = {
    # The suite's: tiny random models, one latency, two concurrency levels; about two minutes.
    "quick": BenchPlan(
        "quick",
        models=("tiny",),
        latencies_s=(1.12,),
        concurrency=(1, 2),
        nemo_batches=(1, 2),
        stream_s=4.0,
        memory_streams=(1, 2),
        steady_stream_s=8.0,  # the tiny diarizer's cache is full after 3.84 s
        variants=EXPORT_PATH_VARIANTS,  # every export path once, on tiny models
        measurement_ms=1000,
        max_trials=3,
        stability_percentage=100.0,
    ),
    # The headline: full-size architecture and the default models at the three latency settings, and at
    # 1.12 s NeMo's input cache and int8 beside the baseline. On 2 cores throughput saturates by 2-4
    # streams, so the sweep stops at 4.
    "full": BenchPlan(
        "full",
        models=("full", "default"),
        latencies_s=(0.16, 0.56, 1.12),
        concurrency=(1, 2, 4),
        nemo_batches=(1, 2, 4),
        stream_s=8.0,
        memory_streams=(1, 2, 3, 4, 6, 8),
        variants=(BASELINE_VARIANT, "input-cache", "int8"),
        variant_latencies_s=(1.12,),
        steady_stream_s=40.0,  # the full-size diarizer's cache is full after 30 s
    ),
}


def with_overrides(plan: BenchPlan, **overrides) -> BenchPlan:
    """The plan with the given fields replaced (None values ignored)."""
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})


def conversation_audio(speakers: int, seed: int, seconds: float) -> np.ndarray:
    """A real mixture of `speakers` espeak-ng voices with overlaps, repeated to `seconds`."""
    from mtasr.training.mixtures import make_conversation

    samples = int(round(seconds * SAMPLE_RATE))
    audio = make_conversation(speakers, seed=seed).audio
    return np.tile(audio, -(-samples // len(audio)))[:samples].astype(np.float32)


def bench_audio(plan: BenchPlan) -> list[np.ndarray]:
    """One conversation of `plan.speakers` voices per stream, `plan.stream_s` long."""
    return [conversation_audio(plan.speakers, 100 + k, plan.stream_s) for k in range(plan.streams)]
