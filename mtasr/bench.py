"""`mtasr bench`: the served pipeline under perf_analyzer, side by side with NeMo's PyTorch loop.

For each model set and latency setting (chunk 0.16 / 0.56 / 1.12 s = encoder right context
1 / 6 / 13) the run

1. exports the checkpoints at that right context (cached under OUT/work/exports),
2. serves the export, reads the idle server's memory, and runs NVIDIA's perf_analyzer with real
   multi-speaker mixtures as sequences (one sequence = one stream, one request = one chunk): a
   concurrency sweep over gRPC streaming and over HTTP; at 1.12 s it then holds streams open to
   measure memory per stream and per speaker instance,
3. runs NeMo's own streaming multitalker loop (`mtasr.nemo_streaming`) in PyTorch on the same
   checkpoints and audio, B streams batched per step the way NeMo's script batches a manifest,

and writes OUT/report.md, OUT/latency.png and OUT/results.json (`mtasr.bench_report`).

Served and NeMo figures of one setting come from the same machine in the same run, one after the
other (never concurrently), so their ratio is meaningful even on a noisy host.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path

import numpy as np

from mtasr.bench_accuracy import Int8Cost
from mtasr.bench_steady import SteadyCost

ENCODER_FRAME_S = 0.08  # FastConformer 8x subsampling of 10 ms features
SAMPLE_RATE = 16000
MODEL_SETS = ("tiny", "full", "default")
# Random-weight diarizers activate speakers whatever the audio says (the full-size one: always the
# same two of four). These sets run with every speaker slot active on both sides: the worst-case load.
ALL_SLOTS_ACTIVE = ("tiny", "full")


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
    int8: bool = False  # also bench the int8-quantised export of every model set ...
    int8_latencies_s: tuple[float, ...] | None = None  # ... at these settings (None: every one)
    # One stream this long (past the diarizer's cache fill) timed chunk by chunk on both sides, at the
    # memory setting (mtasr.bench_steady); None: not measured.
    steady_stream_s: float | None = None

    def __post_init__(self) -> None:
        unknown = set(self.models) - set(MODEL_SETS)
        if unknown:
            raise ValueError(f"unknown model sets {sorted(unknown)}; choose from {', '.join(MODEL_SETS)}")
        for latency in self.latencies_s:
            right_context_for(latency)
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
        measurement_ms=1500,
        max_trials=4,
        stability_percentage=100.0,
    ),
    # The headline: full-size architecture and the default models at the three latency settings, fp32
    # and int8. On 2 cores throughput saturates by 2-4 streams, so the sweep stops at 4.
    "full": BenchPlan(
        "full",
        models=("full", "default"),
        latencies_s=(0.16, 0.56, 1.12),
        concurrency=(1, 2, 4),
        nemo_batches=(1, 2, 4),
        stream_s=8.0,
        memory_streams=(1, 2, 3, 4, 6, 8),
        int8=True,
        int8_latencies_s=(1.12,),
        steady_stream_s=40.0,  # the full-size diarizer's cache is full after 30 s
    ),
}


# ------------------------------------------------------------------------------------------ results


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


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- preparing


def checkpoints_for(model: str, work_dir: Path) -> tuple[Path, Path]:
    """The (.nemo ASR, .nemo diarizer) of a model set; random pairs are built once into work_dir."""
    if model == "default":
        from mtasr.training.defaults import DEFAULT_CHECKPOINTS

        asr, diarizer = DEFAULT_CHECKPOINTS["asr"], DEFAULT_CHECKPOINTS["diarizer"]
        missing = [str(p) for p in (asr, diarizer) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"the default checkpoints are missing: {', '.join(missing)}")
        return asr, diarizer
    folder = work_dir / "checkpoints" / model
    asr, diarizer = folder / "asr.nemo", folder / "diarizer.nemo"
    if not (asr.is_file() and diarizer.is_file()):
        from mtasr.random_models import build_random_pair

        _log(f"building the random {model} pair in {folder}")
        build_random_pair(model, folder)
    return asr, diarizer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_for(
    asr: Path,
    diarizer: Path,
    out_dir: Path,
    *,
    right_context: int,
    max_streams: int,
    int8: bool,
    all_slots_active: bool,
) -> Path:
    """An export at `right_context`, reused when the checkpoints and settings match (a subprocess:
    the export's torch memory is returned when it ends)."""
    from mtasr.export.quantize import quantization_settings

    key = {
        "asr": _sha256(asr),
        "diarizer": _sha256(diarizer),
        "right_context": right_context,
        "max_streams": max_streams,
        "int8": quantization_settings() if int8 else False,  # a changed scheme re-exports
        "all_slots_active": all_slots_active,
    }
    key_file = out_dir / "bench-key.json"
    repo = out_dir / "model_repository"
    if key_file.is_file() and json.loads(key_file.read_text()) == key and (repo / "manifest.json").is_file():
        return repo
    cmd = [sys.executable, "-m", "mtasr.cli", "export", "--asr", str(asr), "--diarizer", str(diarizer)]
    cmd += ["--output", str(out_dir), "--right-context", str(right_context), "--max-streams", str(max_streams)]
    cmd += ["--overwrite", *(["--int8"] if int8 else []), *(["--all-slots-active"] if all_slots_active else [])]
    _log(f"exporting {out_dir.name} ...")
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"export failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    key_file.write_text(json.dumps(key, indent=1) + "\n")
    _log(f"exported {out_dir.name} in {time.monotonic() - started:.0f} s")
    return repo


def int8_cost(
    fp32_repo: Path, int8_repo: Path, name: str, latency_s: float, audios: list[np.ndarray], work: Path
) -> Int8Cost:
    """int8 against fp32 on the demo conversation (held-out sentences in the default models' voices, with a
    reference transcript) and the first benchmark stream."""
    import soundfile as sf

    from mtasr.bench_accuracy import measure_int8_cost
    from mtasr.client.formats import SEGLST_SUFFIX
    from mtasr.training.defaults import DEMO_CONVERSATION

    _log(f"{name} @ {latency_s:.2f} s: int8 against fp32 on the same audio")
    demo, rate = sf.read(DEMO_CONVERSATION, dtype="float32")
    if rate != SAMPLE_RATE:
        raise RuntimeError(f"{DEMO_CONVERSATION} is at {rate} Hz, expected {SAMPLE_RATE}")
    reference = DEMO_CONVERSATION.with_suffix(SEGLST_SUFFIX)
    return measure_int8_cost(
        fp32_repo, int8_repo, name, latency_s, [demo, audios[0]], [reference, None], work / "int8-cost"
    )


def conversation_audio(speakers: int, seed: int, seconds: float) -> np.ndarray:
    """A real mixture of `speakers` espeak-ng voices with overlaps, repeated to `seconds`."""
    from mtasr.mixtures import make_conversation

    samples = int(round(seconds * SAMPLE_RATE))
    audio = make_conversation(speakers, seed=seed).audio
    return np.tile(audio, -(-samples // len(audio)))[:samples].astype(np.float32)


def bench_audio(plan: BenchPlan) -> list[np.ndarray]:
    """One conversation of `plan.speakers` voices per stream, `plan.stream_s` long."""
    return [conversation_audio(plan.speakers, 100 + k, plan.stream_s) for k in range(plan.streams)]


# ------------------------------------------------------------------------------------------ served


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def _wait_streams_closed(server, timeout_s: float = 30.0) -> None:
    from mtasr.triton_stage import OPEN_STREAMS_METRIC

    deadline = time.monotonic() + timeout_s
    while _metric(server.url("metrics"), OPEN_STREAMS_METRIC) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)


def sweep(
    server, plan: BenchPlan, model: str, latency_s: float, data: Path, chunk_s: float, work: Path, unstable: list[str]
) -> list[LoadPoint]:
    """perf_analyzer at every concurrency, gRPC streaming then HTTP; one LoadPoint each, except
    where no stable measurement came twice (named in `unstable`)."""
    from mtasr.client import perf_analyzer as pa

    binary = pa.provision()
    points = []
    for protocol, streaming, system in (("grpc", True, "gRPC stream"), ("http", False, "HTTP")):
        for concurrency in plan.concurrency:
            _log(f"{model} @ {latency_s:.2f} s: perf_analyzer {system}, {concurrency} stream(s)")
            run = functools.partial(
                pa.run,
                binary,
                server.address(protocol),
                protocol,
                data,
                concurrency,
                streaming=streaming,
                measurement_ms=plan.measurement_ms,
                csv_path=work / f"perf-{protocol}-c{concurrency}.csv",
                percentile=None,  # stabilise on the mean: p99 of a few dozen chunks is too noisy to
            )
            try:
                result = run(stability_percentage=plan.stability_percentage, max_trials=plan.max_trials)
            except pa.PerfAnalyzerError as err:
                if "no stable measurement" not in str(err):
                    raise
                # Sequence boundaries make short windows uneven: once more, longer and more tolerant.
                _log(f"no stable measurement within {plan.stability_percentage:g} %; retrying at 2x")
                _wait_streams_closed(server)
                try:
                    result = run(stability_percentage=2 * plan.stability_percentage, max_trials=2 * plan.max_trials)
                except pa.PerfAnalyzerError as again:
                    if "no stable measurement" not in str(again):
                        raise
                    unstable.append(f"{model} @ {latency_s:.2f} s, {system}, {concurrency} stream(s)")
                    _wait_streams_closed(server)
                    continue
            (work / f"perf-{protocol}-c{concurrency}.txt").write_text(result.stdout)
            ms = result.latency_ms
            points.append(
                LoadPoint(
                    model,
                    latency_s,
                    system,
                    concurrency,
                    result.throughput,
                    result.throughput * chunk_s,
                    ms["p50"],
                    ms["p90"],
                    ms["p99"],
                )
            )
            _wait_streams_closed(server)
    return points


def measure_memory(server, repo: Path, plan: BenchPlan, model: str) -> Memory:
    """On a server that has served nothing yet: hold 1..N streams open (three chunks sent, no END),
    read its memory and speaker instances at each step, fit memory = base + a * streams + b *
    speakers over the open-stream points, then close every stream."""
    import itertools

    from mtasr.client.stream import StreamingClient
    from mtasr.deployment import load_manifest
    from mtasr.mixtures import make_conversation
    from mtasr.stages import CacheShapes
    from mtasr.triton_stage import SPEAKER_STATES_METRIC

    idle = server.rss_mb()
    client = StreamingClient(server.address("grpc"), timeout_s=120)
    chunk = client.settings().chunk_samples
    points = [MemoryPoint(0, 0, idle)]
    # Streams of 1, 2, 3, 4 speakers in turn, so that speaker instances do not grow in step with streams.
    audios = [make_conversation(1 + k % 4, seed=200 + k).audio for k in range(max(plan.memory_streams))]
    ids = [50_000 + k for k in range(len(audios))]
    for target in sorted(plan.memory_streams):
        for k in range(points[-1].streams, target):
            audio = audios[k]
            chunks = (audio[i : i + chunk] for i in itertools.count(0, chunk))  # never the last: stays open
            for _ in itertools.islice(client.stream(chunks, ids[k]), 3):
                pass
        time.sleep(0.5)
        speakers = int(_metric(server.url("metrics"), SPEAKER_STATES_METRIC))
        points.append(MemoryPoint(target, speakers, server.rss_mb()))
        _log(f"{model}: {target} open stream(s), {speakers} speaker instance(s), {points[-1].rss_mb:.0f} MB")
    for sequence_id in ids:
        for _ in client.stream([], sequence_id):  # an END alone: the stream's state is freed
            pass
    shapes = CacheShapes.from_manifest(load_manifest(repo)["asr"]["streaming"])
    state_mb = 4 * (np.prod(shapes.channel) + np.prod(shapes.time)) / 2**20
    per_stream, per_speaker = fit_memory(points[1:])
    first = points[1].rss_mb - idle if len(points) > 1 else 0.0
    return Memory(model, idle, first, points, per_stream, per_speaker, float(state_mb))


def fit_memory(points: list[MemoryPoint]) -> tuple[float | None, float | None]:
    """(MB per stream, MB per speaker instance) by least squares; per speaker only when the points
    vary speakers independently of streams (else streams absorb their speakers' memory)."""
    if len(points) < 2:
        return None, None
    rss = np.array([p.rss_mb for p in points])
    streams = np.array([p.streams for p in points], float)
    speakers = np.array([p.speaker_states for p in points], float)
    both = np.stack([np.ones_like(streams), streams, speakers], 1)
    if len(points) >= 3 and np.linalg.matrix_rank(both) == 3 and np.linalg.cond(both) < 1e3:
        coef = np.linalg.lstsq(both, rss, rcond=None)[0]
        return float(coef[1]), float(coef[2])
    coef = np.linalg.lstsq(both[:, :2], rss, rcond=None)[0]
    return float(coef[1]), None


# -------------------------------------------------------------------------------------------- NeMo


def nemo_points(
    models, asr: Path, diarizer: Path, audios: list[np.ndarray], plan: BenchPlan, model: str, latency_s: float
) -> tuple[list[LoadPoint], float]:
    """NeMo's loop at every batch size; also the mean active speakers per chunk (batch 1, stream 0)."""
    from mtasr.nemo_streaming import run_nemo_multitalker

    rc = right_context_for(latency_s)
    # Warm-up: NeMo's first pass through a stream is several times slower (lazy set-up).
    all_slots = model in ALL_SLOTS_ACTIVE
    run_nemo_multitalker(asr, diarizer, audios[0], rc, models=models, all_slots_active=all_slots)
    points, active = [], float("nan")
    for batch in plan.nemo_batches:
        _log(f"{model} @ {latency_s:.2f} s: NeMo PyTorch, {batch} stream(s) per batch")
        result = run_nemo_multitalker(asr, diarizer, audios[:batch], rc, models=models, all_slots_active=all_slots)
        steps_ms = 1000 * np.array(result.step_s)
        audio_s = sum(len(a) for a in audios[:batch]) / SAMPLE_RATE
        points.append(
            LoadPoint(
                model,
                latency_s,
                "NeMo PyTorch",
                batch,
                batch * result.n_chunks / result.wall_s,
                audio_s / result.wall_s,
                *(float(np.percentile(steps_ms, q)) for q in (50, 90, 99)),
            )
        )
        if batch == plan.nemo_batches[0]:
            active = float(np.mean([len(masks) for masks in result.masks_per_chunk]))
    return points, active


# --------------------------------------------------------------------------------------------- run


def machine_setup() -> dict[str, str]:
    import os
    import platform

    import onnxruntime

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    setup = {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version()}
    setup["onnxruntime"] = onnxruntime.__version__
    try:
        import torch

        setup["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        pass
    return setup


def bench_served(
    repo: Path,
    plan: BenchPlan,
    name: str,
    latency: float,
    audios: list[np.ndarray],
    run_dir: Path,
    unstable: list[str],
) -> tuple[list[LoadPoint], Memory | None]:
    """One export served: memory on the fresh server (at the memory setting), then the sweep."""
    from mtasr.client import perf_analyzer as pa
    from mtasr.deployment import chunk_samples, load_manifest, local_server_config
    from mtasr.server import TritonServer

    chunk = chunk_samples(load_manifest(repo))
    streams = [pa.split_chunks(a, chunk) for a in audios]
    data = pa.write_input_data(streams, run_dir / "input.json")
    mean_chunk_s = float(np.mean([len(c) for s in streams for c in s])) / SAMPLE_RATE
    memory_here = latency == plan.measured_latency_s
    with TritonServer(local_server_config(repo, startup_timeout_s=600)) as server:
        _log(f"{name} @ {latency:.2f} s: server up, {server.rss_mb():.0f} MB")
        memory = measure_memory(server, repo, plan, name) if memory_here else None
        points = sweep(server, plan, name, latency, data, mean_chunk_s, run_dir, unstable)
        if memory is not None:
            memory.after_sweep_mb = server.rss_mb()
    return points, memory


def run_bench(plan: BenchPlan, out_dir: Path) -> BenchResult:
    """Everything the plan asks, in order. The report folder is rewritten after every setting, so
    an interrupted run leaves the figures it had."""
    from mtasr import bench_report
    from mtasr.client import perf_analyzer as pa
    from mtasr.nemo_streaming import load_models

    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    result = BenchResult(plan, setup=machine_setup())

    def save() -> None:
        result.seconds = time.monotonic() - started
        bench_report.write(result, out_dir)

    pa.provision()
    audios = bench_audio(plan)
    variants = [(m, False) for m in plan.models] + ([(m, True) for m in plan.models] if plan.int8 else [])
    exports: dict[tuple[str, bool, float], Path] = {}
    for model, int8 in variants:
        name = model + (bench_report.INT8_SUFFIX if int8 else "")
        asr, diarizer = checkpoints_for(model, work)
        repos = {}
        latencies = plan.latencies_s
        if int8 and plan.int8_latencies_s is not None:
            latencies = tuple(lat for lat in latencies if lat in plan.int8_latencies_s)
        for latency in latencies:
            rc = right_context_for(latency)
            repos[latency] = export_for(
                asr,
                diarizer,
                work / "exports" / f"{model}{'-int8' if int8 else ''}-rc{rc}",
                right_context=rc,
                max_streams=max(8, *plan.concurrency),
                int8=int8,
                all_slots_active=model in ALL_SLOTS_ACTIVE,
            )
        exports |= {(model, int8, latency): repo for latency, repo in repos.items()}
        for latency, repo in repos.items():
            run_dir = work / "runs" / f"{name.replace(' ', '-')}-{latency:.2f}s"
            points, memory = bench_served(repo, plan, name, latency, audios, run_dir, result.unstable)
            result.points += points
            result.memory += [memory] if memory is not None else []
            save()
        if int8:
            for latency, repo in repos.items():
                fp32 = exports.get((model, False, latency))
                if fp32 is not None:
                    result.int8_costs.append(int8_cost(fp32, repo, model, latency, audios, work))
                    save()
            continue  # NeMo runs the checkpoints: the same figures as the fp32 variant
        models = load_models(asr, diarizer)
        for latency in plan.latencies_s:
            points, active = nemo_points(models, asr, diarizer, audios, plan, name, latency)
            result.points += points
            result.active_speakers[f"{name} @ {latency:.2f} s"] = active
            save()
        steady_repo = exports.get((model, False, plan.measured_latency_s))
        if plan.steady_stream_s and steady_repo is not None:
            from mtasr.bench_steady import measure_steady_cost

            _log(f"{name} @ {plan.measured_latency_s:.2f} s: one {plan.steady_stream_s:g} s stream, chunk by chunk")
            result.steady.append(
                measure_steady_cost(
                    steady_repo,
                    models,
                    asr,
                    diarizer,
                    conversation_audio(plan.speakers, 100, plan.steady_stream_s),
                    name,
                    plan.measured_latency_s,
                    plan.stream_s,
                    all_slots_active=model in ALL_SLOTS_ACTIVE,
                )
            )
            save()
        del models
    save()
    _log(f"done in {result.seconds / 60:.1f} min: {out_dir / bench_report.REPORT}")
    return result


def with_overrides(plan: BenchPlan, **overrides) -> BenchPlan:
    """The plan with the given fields replaced (None values ignored)."""
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------------------------------- CLI


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "bench",
        help="benchmark the served pipeline (perf_analyzer) against NeMo's PyTorch streaming loop",
        description="Export each model set at each latency setting, serve it, sweep concurrent streams with "
        "perf_analyzer over gRPC streaming and HTTP, measure server memory, run NeMo's streaming multitalker "
        "loop on the same checkpoints and audio, and write OUTPUT/report.md, OUTPUT/latency.png and "
        "OUTPUT/results.json. Exports and random checkpoints are kept in OUTPUT/work and reused. "
        "--mode full takes about 50 minutes on 2 CPU cores (43 with the exports already in OUTPUT/work); "
        "--mode quick (tiny models) about 2.",
    )
    parser.add_argument("--mode", choices=sorted(PLANS), default="full", help="preset (default: full)")
    parser.add_argument("--output", "-o", type=Path, default=None, help="report folder (default: bench-MODE)")
    parser.add_argument("--models", type=lambda s: tuple(s.split(",")), help=f"model sets: {', '.join(MODEL_SETS)}")
    parser.add_argument("--latencies", type=_floats, help="chunk lengths in seconds, e.g. 0.16,0.56,1.12")
    parser.add_argument("--concurrency", type=_ints, help="concurrent streams to sweep, e.g. 1,2,4,8")
    parser.add_argument("--nemo-batches", type=_ints, help="NeMo streams per batch, e.g. 1,2,4,8")
    parser.add_argument("--stream-seconds", type=float, help="audio per stream")
    parser.add_argument(
        "--steady-seconds",
        type=float,
        help="length of the one stream timed chunk by chunk once the diarizer's cache is full (0: skip; "
        "full: 40, quick: 8)",
    )
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also bench the int8-quantised exports (full: on; quick: off)",
    )
    parser.set_defaults(func=_main)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _main(args) -> int:
    try:
        plan = with_overrides(
            PLANS[args.mode],
            models=args.models,
            latencies_s=args.latencies,
            concurrency=args.concurrency,
            nemo_batches=args.nemo_batches,
            stream_s=args.stream_seconds,
            int8=args.int8,
            steady_stream_s=args.steady_seconds,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.output or Path(f"bench-{plan.mode}")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # unwinds like Ctrl-C: the server stops, nothing is orphaned
    try:
        run_bench(plan, out)
    except (RuntimeError, FileNotFoundError) as err:  # export, perf_analyzer or server start failed
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: {out / 'report.md'} holds the settings measured so far", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print((out / "report.md").read_text())
    return 0
