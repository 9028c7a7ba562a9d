"""What one `mtasr bench` run found, as written to results.json and read back for the report.

Nothing here imports the runner or the report, so both can import it (no cycle)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields

from mtasr.bench.accuracy import Int8Cost
from mtasr.bench.plan import BASELINE_VARIANT, BenchPlan
from mtasr.bench.steady import SteadyCost


@dataclass
class LoadPoint:
    """One row of the table: a system at one concurrency (served) or batch size (NeMo)."""

    model: str
    latency_s: float  # the setting: chunk length
    system: str  # "gRPC stream", "HTTP", "NeMo PyTorch"
    concurrency: int
    chunks_per_s: float
    audio_s_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    # Served only: per pipeline stage over the measurement (Triton's metrics), see `mtasr.bench.run.stage_load`.
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    # Served only: CPU ms per chunk of each process, the load generator's too (`mtasr.bench.run.cpu_per_chunk`).
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rtf(self) -> float:
        """Processing time per second of audio for each stream: concurrency / audio seconds per second."""
        return self.concurrency / self.audio_s_per_s if self.audio_s_per_s > 0 else float("inf")

    @property
    def realtime(self) -> bool:
        """Every stream keeps up (RTF < 1) and 99 % of chunks are answered within a chunk length."""
        return self.rtf < 1 and self.p99_ms < 1000 * self.latency_s

    def to_dict(self) -> dict:
        return {**asdict(self), "rtf": self.rtf, "realtime": self.realtime}


@dataclass
class MemoryPoint:
    streams: int
    speaker_states: int
    rss_mb: float


@dataclass
class Memory:
    model: str
    idle_mb: float  # the server after start, before any request
    first_stream_mb: float  # what the first open stream added: its state and one-time set-up (arenas)
    points: list[MemoryPoint]  # idle, then each number of open streams
    per_stream_mb: float | None
    per_speaker_mb: float | None  # measured, when the run separates it from per stream
    speaker_state_mb: float  # encoder cache bytes of one speaker instance, from the manifest's shapes
    after_sweep_mb: float | None = None  # after the perf_analyzer sweep, every stream closed


@dataclass
class BenchResult:
    plan: BenchPlan
    points: list[LoadPoint] = field(default_factory=list)
    memory: list[Memory] = field(default_factory=list)
    active_speakers: dict[str, float] = field(default_factory=dict)  # "model @ latency" -> mean per chunk
    setup: dict[str, str] = field(default_factory=dict)  # machine, versions
    unstable: list[str] = field(default_factory=list)  # perf_analyzer points never stable (not reported)
    int8_costs: list[Int8Cost] = field(default_factory=list)  # int8 export against fp32, same audio
    steady: list[SteadyCost] = field(default_factory=list)  # chunk cost once the diarizer's cache is full
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, data: dict) -> BenchResult:
        """A result back from its results.json (`to_dict`), e.g. to render its report again."""

        def fields_of(kind, values: dict):
            return kind(**{f.name: values[f.name] for f in dataclass_fields(kind) if f.name in values})

        plan = {k: tuple(v) if isinstance(v, list) else v for k, v in data["plan"].items()}
        if "int8" in plan:  # written before variants: fp32, and int8 at `int8_latencies_s`
            plan["variants"] = (BASELINE_VARIANT, "int8") if plan.pop("int8") else (BASELINE_VARIANT,)
            plan["variant_latencies_s"] = plan.pop("int8_latencies_s", None)
        memory = []
        for m in data["memory"]:
            memory.append(fields_of(Memory, {**m, "points": [MemoryPoint(**p) for p in m["points"]]}))
        return cls(
            BenchPlan(**plan),
            points=[fields_of(LoadPoint, p) for p in data["points"]],
            memory=memory,
            active_speakers=data["active_speakers"],
            setup=data["setup"],
            unstable=data["unstable"],
            int8_costs=[fields_of(Int8Cost, c) for c in data["int8_costs"]],
            steady=[fields_of(SteadyCost, c) for c in data.get("steady", [])],
            seconds=data["seconds"],
        )

    def to_dict(self) -> dict:
        return {
            "plan": asdict(self.plan),
            "points": [p.to_dict() for p in self.points],
            "memory": [asdict(m) for m in self.memory],
            "active_speakers": self.active_speakers,
            "setup": self.setup,
            "unstable": self.unstable,
            "int8_costs": [
                {**asdict(c), "token_change_rate": c.token_change_rate, "flip_rate": c.flip_rate}
                for c in self.int8_costs
            ],
            "steady": [
                {**asdict(c), "served_full_rtf": c.served_full_rtf, "nemo_full_rtf": c.nemo_full_rtf}
                for c in self.steady
            ],
            "seconds": self.seconds,
        }
