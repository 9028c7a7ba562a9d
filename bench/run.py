"""`mtasr bench`: the served pipeline under perf_analyzer, side by side with NeMo's PyTorch loop.

For each model set and latency setting (chunk 0.16 / 0.56 / 1.12 s = encoder right context
1 / 6 / 13) the run

1. exports the checkpoints at that right context, once per export variant of the plan (`VARIANTS`;
   cached under OUT/work/exports),
2. serves the variants at once, holds streams open on each fresh server at 1.12 s to measure memory per
   stream and per speaker instance, then runs NVIDIA's perf_analyzer with real multi-speaker mixtures as
   sequences (one sequence = one stream, one request = one chunk): a concurrency sweep over gRPC
   streaming and over HTTP, each variant in turn at every concurrency,
3. runs NeMo's own streaming multitalker loop (`mtasr.bench.nemo_streaming`) in PyTorch on the same
   checkpoints and audio, B streams batched per step the way NeMo's script batches a manifest,

and writes OUT/report.md, OUT/latency.png and OUT/results.json (`mtasr.bench.report`).

Served and NeMo figures of one setting come from the same machine in the same run, one after the
other (never concurrently), so their ratio is meaningful even on a noisy host.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from mtasr.bench.accuracy import Int8Cost
from mtasr.bench.plan import (
    ALL_SLOTS_ACTIVE,
    BASELINE_VARIANT,
    MODEL_SETS,
    PLANS,
    SAMPLE_RATE,
    VARIANTS,
    BenchPlan,
    ExportVariant,
    bench_audio,
    conversation_audio,
    right_context_for,
    with_overrides,
)
from mtasr.bench.results import BenchResult, LoadPoint, Memory, MemoryPoint
from mtasr.protocol import STAGES

logger = logging.getLogger(__name__)


def _log(message: str) -> None:
    logger.info(message)


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
        from mtasr.export.random_models import build_random_pair

        _log(f"building the random {model} pair in {folder}")
        build_random_pair(model, folder)
    return asr, diarizer


def export_for(
    asr: Path,
    diarizer: Path,
    out_dir: Path,
    *,
    right_context: int,
    max_streams: int,
    variant: ExportVariant,
    all_slots_active: bool,
) -> Path:
    """An export at `right_context`, reused when the checkpoints and settings match (a subprocess:
    the export's torch memory is returned when it ends); `max_streams` per batch unless the variant sets it."""
    from mtasr.export.checkpoints import sha256_of
    from mtasr.export.quantize import QUANTIZED_GRAPHS, quantization_settings

    key = {
        "asr": sha256_of(asr),
        "diarizer": sha256_of(diarizer),
        "right_context": right_context,
        "max_streams": variant.max_streams or max_streams,
        "int8": quantization_settings(list(QUANTIZED_GRAPHS)) if variant.int8 else False,  # a changed scheme re-exports
        "export_options": variant.export_options(),
        "all_slots_active": all_slots_active,
        "diarizer_cache": "checkpoint",
    }
    key_file = out_dir / "bench-key.json"
    repo = out_dir / "model_repository"
    if key_file.is_file() and json.loads(key_file.read_text()) == key and (repo / "manifest.json").is_file():
        return repo
    cmd = [sys.executable, "-m", "mtasr.cli", "export", "--asr", str(asr), "--diarizer", str(diarizer)]
    cmd += ["--output", str(out_dir), "--right-context", str(right_context), "--overwrite"]
    cmd += [] if variant.max_streams else ["--max-streams", str(max_streams)]
    cmd += variant.export_options()
    cmd += ["--all-slots-active"] if all_slots_active else []
    # Each pair is served with its own diarizer cache (the tiny one's fills within the steady-state stream;
    # the full pair's is the script's 188/188 anyway), and NeMo's loop runs with the same (`diar_cache=None`).
    cmd += ["--diarizer-cache", "checkpoint"]
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

    from mtasr import DEMO_CONVERSATION
    from mtasr.bench.accuracy import measure_int8_cost
    from mtasr.client.formats import SEGLST_SUFFIX

    _log(f"{name} @ {latency_s:.2f} s: int8 against fp32 on the same audio")
    demo, rate = sf.read(DEMO_CONVERSATION, dtype="float32")
    if rate != SAMPLE_RATE:
        raise RuntimeError(f"{DEMO_CONVERSATION} is at {rate} Hz, expected {SAMPLE_RATE}")
    reference = DEMO_CONVERSATION.with_suffix(SEGLST_SUFFIX)
    return measure_int8_cost(
        fp32_repo,
        int8_repo,
        name,
        latency_s,
        [demo, audios[0]],
        [reference, None],
        work / "int8-cost" / name.replace(" ", "-"),
    )


# ------------------------------------------------------------------------------------------ served


def _metrics_text(server) -> str:
    return urllib.request.urlopen(server.url("metrics"), timeout=10).read().decode()


def _samples(metrics_text: str):
    """(metric name, labels text, value) of each labelled sample in Prometheus text (comments skipped)."""
    for line in metrics_text.splitlines():
        metric, brace, rest = line.partition("{")
        if brace and not line.startswith("#"):
            labels, _, value = rest.rpartition("} ")
            yield metric, labels, float(value)


def _metric(server, name: str) -> float:
    """`name` summed over its labels (every stage instance)."""
    return sum(value for metric, _, value in _samples(_metrics_text(server)) if metric == name)


# Triton's cumulative per-model counters that say how busy each pipeline stage was.
_STAGE_COUNTERS = {
    "nv_inference_count": "requests",
    "nv_inference_exec_count": "executions",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_infer_duration_us": "compute_us",
}
_MODEL_LABEL = re.compile(r'model="([^"]+)"')


def stage_counters(metrics_text: str) -> dict[str, dict[str, float]]:
    """Per pipeline stage (`mtasr.protocol.STAGES`), its counters in Triton's metrics text."""
    counters = {stage: dict.fromkeys(_STAGE_COUNTERS.values(), 0.0) for stage in STAGES}
    for metric, labels, value in _samples(metrics_text):
        model = _MODEL_LABEL.search(labels)
        if metric in _STAGE_COUNTERS and model and model.group(1) in counters:
            counters[model.group(1)][_STAGE_COUNTERS[metric]] += value
    return counters


def stage_load(before: dict, after: dict, seconds: float) -> dict[str, dict[str, float]]:
    """Per stage between two `stage_counters` `seconds` apart: requests per execution ("batch"), the share of
    the wall time its process spent executing ("busy": Triton charges every request of an execution the whole
    execution, so the executions' time is the requests' total over the batch), and the mean time a request
    waited for it ("queue_ms")."""
    load = {}
    for stage, end in after.items():
        delta = {k: v - before.get(stage, {}).get(k, 0.0) for k, v in end.items()}
        if delta["executions"] > 0:
            load[stage] = {
                "batch": delta["requests"] / delta["executions"],
                "busy": delta["compute_us"] * delta["executions"] / delta["requests"] / (1e6 * seconds),
                "queue_ms": delta["queue_us"] / delta["requests"] / 1000,
            }
    return load


def _children_cpu_seconds() -> float:
    """CPU time of this process's finished child processes (perf_analyzer's, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


CLIENT_PROCESS = "perf_analyzer"


def cpu_per_chunk(
    before: dict[str, float], after: dict[str, float], client_s: float, chunks: float
) -> dict[str, float]:
    """CPU ms each process used per chunk served between two `TritonServer.cpu_seconds`: the server's processes
    (by stage) and the load generator (`CLIENT_PROCESS`, `client_s` seconds), which shares the machine."""
    if chunks <= 0:
        return {}
    used = {name: seconds - before.get(name, 0.0) for name, seconds in after.items()}
    used[CLIENT_PROCESS] = client_s
    return {name: 1000 * seconds / chunks for name, seconds in used.items()}


def _wait_streams_closed(server, timeout_s: float = 30.0) -> None:
    from mtasr.triton.stage_model import OPEN_STREAMS_METRIC

    deadline = time.monotonic() + timeout_s
    while _metric(server, OPEN_STREAMS_METRIC) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)


def sweep(
    servers: list[tuple[str, object]],
    plan: BenchPlan,
    latency_s: float,
    data: Path,
    chunk_s: float,
    work: Path,
    unstable: list[str],
) -> list[LoadPoint]:
    """perf_analyzer at every concurrency, gRPC streaming then HTTP, on each (name, server) in turn at each
    concurrency, the order reversed from one concurrency to the next (A B, B A, ...), so variants of one
    setting meet the same machine conditions; one LoadPoint each, except where no stable measurement came
    twice (named in `unstable`)."""
    from mtasr.bench import perf_analyzer as pa

    binary = pa.provision()
    points = []
    for protocol, streaming, system in (("grpc", True, "gRPC stream"), ("http", False, "HTTP")):
        for step, concurrency in enumerate(plan.concurrency):
            for name, server in servers if step % 2 == 0 else servers[::-1]:
                folder = work / name.replace(" ", "-")
                folder.mkdir(parents=True, exist_ok=True)
                _log(f"{name} @ {latency_s:.2f} s: perf_analyzer {system}, {concurrency} stream(s)")
                run = functools.partial(
                    pa.run,
                    binary,
                    server.address(protocol),
                    protocol,
                    data,
                    concurrency,
                    streaming=streaming,
                    measurement_ms=plan.measurement_ms,
                    csv_path=folder / f"perf-{protocol}-c{concurrency}.csv",
                    percentile=None,  # stabilise on the mean: p99 of a few dozen chunks is too noisy to
                )
                what = f"{name} @ {latency_s:.2f} s, {system}, {concurrency} stream(s)"
                counters, started = stage_counters(_metrics_text(server)), time.monotonic()
                server_cpu, client_cpu = server.cpu_seconds(), _children_cpu_seconds()
                result = _stable_run(run, plan, server, what)
                after = stage_counters(_metrics_text(server))
                stages = stage_load(counters, after, time.monotonic() - started)
                cpu = cpu_per_chunk(
                    server_cpu,
                    server.cpu_seconds(),
                    _children_cpu_seconds() - client_cpu,
                    after[STAGES[0]]["requests"] - counters[STAGES[0]]["requests"],
                )
                if result is None:
                    unstable.append(what)
                    continue
                (folder / f"perf-{protocol}-c{concurrency}.txt").write_text(result.stdout)
                ms = result.latency_ms
                points.append(
                    LoadPoint(
                        name,
                        latency_s,
                        system,
                        concurrency,
                        result.throughput,
                        result.throughput * chunk_s,
                        ms["p50"],
                        ms["p90"],
                        ms["p99"],
                        stages,
                        cpu,
                    )
                )
                _wait_streams_closed(server)
    return points


def _stable_run(run, plan: BenchPlan, server, what: str):
    """One perf_analyzer measurement; when none was stable, once more, longer and more tolerant (sequence
    boundaries make short windows uneven); None when that failed too."""
    from mtasr.bench import perf_analyzer as pa

    try:
        return run(stability_percentage=plan.stability_percentage, max_trials=plan.max_trials)
    except pa.PerfAnalyzerError as err:
        if "no stable measurement" not in str(err):
            raise
    _log(f"{what}: no stable measurement within {plan.stability_percentage:g} %; retrying at 2x")
    _wait_streams_closed(server)
    try:
        return run(stability_percentage=2 * plan.stability_percentage, max_trials=2 * plan.max_trials)
    except pa.PerfAnalyzerError as err:
        if "no stable measurement" not in str(err):
            raise
    _wait_streams_closed(server)
    return None


def measure_memory(server, repo: Path, plan: BenchPlan, model: str) -> Memory:
    """On a server that has served nothing yet: hold 1..N streams open (three chunks sent, no END),
    read its memory and speaker instances at each step, fit memory = base + a * streams + b *
    speakers over the open-stream points, then close every stream."""
    import itertools

    from mtasr.client.stream import StreamingClient
    from mtasr.deployment import load_manifest
    from mtasr.stages import CacheShapes
    from mtasr.training.mixtures import make_conversation
    from mtasr.triton.stage_model import SPEAKER_STATES_METRIC

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
        speakers = int(_metric(server, SPEAKER_STATES_METRIC))
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
    from mtasr.bench.nemo_streaming import run_nemo_multitalker

    rc = right_context_for(latency_s)
    # Warm-up: NeMo's first pass through a stream is several times slower (lazy set-up).
    all_slots = model in ALL_SLOTS_ACTIVE
    run_nemo_multitalker(asr, diarizer, audios[0], rc, models=models, all_slots_active=all_slots, diar_cache=None)
    points, active = [], float("nan")
    for batch in plan.nemo_batches:
        _log(f"{model} @ {latency_s:.2f} s: NeMo PyTorch, {batch} stream(s) per batch")
        result = run_nemo_multitalker(
            asr, diarizer, audios[:batch], rc, models=models, all_slots_active=all_slots, diar_cache=None
        )
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
    repos: dict[str, Path],
    plan: BenchPlan,
    latency: float,
    audios: list[np.ndarray],
    run_dir: Path,
    unstable: list[str],
) -> tuple[list[LoadPoint], list[Memory]]:
    """The variants of one setting ({name: export}) served at once: memory on each fresh server (at the
    memory setting), then one sweep alternating between them."""
    import contextlib

    from mtasr.bench import perf_analyzer as pa
    from mtasr.deployment import chunk_samples, load_manifest
    from mtasr.server import TritonServer, local_server_config

    chunks = {chunk_samples(load_manifest(repo)) for repo in repos.values()}
    if len(chunks) != 1:
        raise RuntimeError(f"the variants of one setting must share a chunk size, got {sorted(chunks)}")
    (chunk,) = chunks
    streams = [pa.split_chunks(a, chunk) for a in audios]
    data = pa.write_input_data(streams, run_dir / "input.json")
    mean_chunk_s = float(np.mean([len(c) for s in streams for c in s])) / SAMPLE_RATE
    memory_here = latency == plan.measured_latency_s
    with contextlib.ExitStack() as stack:
        servers = []
        for name, repo in repos.items():
            server = stack.enter_context(TritonServer(local_server_config(repo, startup_timeout_s=600)))
            _log(f"{name} @ {latency:.2f} s: server up, {server.rss_mb():.0f} MB")
            servers.append((name, server))
        memory = [measure_memory(server, repos[name], plan, name) for name, server in servers] if memory_here else []
        points = sweep(servers, plan, latency, data, mean_chunk_s, run_dir, unstable)
        for m, (_, server) in zip(memory, servers, strict=True):
            m.after_sweep_mb = server.rss_mb()
    return points, memory


def bench_nemo(
    model: str,
    asr: Path,
    diarizer: Path,
    steady_repo: Path | None,
    plan: BenchPlan,
    audios: list[np.ndarray],
    result: BenchResult,
) -> None:
    """NeMo's loop at every latency of the plan, then one long stream chunk by chunk on both sides
    (`steady_repo`: the baseline export at the plan's measured latency)."""
    from mtasr.bench.nemo_streaming import load_models

    models = load_models(asr, diarizer)
    for latency in plan.latencies_s:
        points, active = nemo_points(models, asr, diarizer, audios, plan, model, latency)
        result.points += points
        result.active_speakers[f"{model} @ {latency:.2f} s"] = active
    if plan.steady_stream_s and steady_repo is not None:
        from mtasr.bench.steady import measure_steady_cost

        _log(f"{model} @ {plan.measured_latency_s:.2f} s: one {plan.steady_stream_s:g} s stream, chunk by chunk")
        result.steady.append(
            measure_steady_cost(
                steady_repo,
                models,
                asr,
                diarizer,
                conversation_audio(plan.speakers, 100, plan.steady_stream_s),
                model,
                plan.measured_latency_s,
                plan.stream_s,
                all_slots_active=model in ALL_SLOTS_ACTIVE,
            )
        )


def run_bench(plan: BenchPlan, out_dir: Path) -> BenchResult:
    """Everything the plan asks, in order. The report folder is rewritten after every setting, so
    an interrupted run leaves the figures it had."""
    from mtasr.bench import perf_analyzer as pa
    from mtasr.bench import report as bench_report

    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    result = BenchResult(plan, setup=machine_setup())

    def save() -> None:
        result.seconds = time.monotonic() - started
        bench_report.write(result, out_dir)

    pa.provision()
    audios = bench_audio(plan)
    for model in plan.models:
        asr, diarizer = checkpoints_for(model, work)
        exports: dict[tuple[str, float], Path] = {}  # (variant, latency) -> export
        for latency in plan.latencies_s:
            rc = right_context_for(latency)
            names = [
                v
                for v in plan.variants
                if v == BASELINE_VARIANT or plan.variant_latencies_s is None or latency in plan.variant_latencies_s
            ]
            for variant_name in names:
                exports[(variant_name, latency)] = export_for(
                    asr,
                    diarizer,
                    work / "exports" / f"{model}-{variant_name}-rc{rc}",
                    right_context=rc,
                    max_streams=max(8, *plan.concurrency),
                    variant=VARIANTS[variant_name],
                    all_slots_active=model in ALL_SLOTS_ACTIVE,
                )
            repos = {model + VARIANTS[v].suffix: exports[(v, latency)] for v in names}
            run_dir = work / "runs" / f"{model}-{latency:.2f}s"
            points, memory = bench_served(repos, plan, latency, audios, run_dir, result.unstable)
            result.points += points
            result.memory += memory
            save()
            for variant_name in names:
                if VARIANTS[variant_name].int8:
                    fp32, int8 = exports[(BASELINE_VARIANT, latency)], exports[(variant_name, latency)]
                    result.int8_costs.append(
                        int8_cost(fp32, int8, model + VARIANTS[variant_name].suffix, latency, audios, work)
                    )
                    save()
        # NeMo runs the checkpoints: one run serves every variant's comparison
        bench_nemo(model, asr, diarizer, exports.get((BASELINE_VARIANT, plan.measured_latency_s)), plan, audios, result)
        save()
    save()
    _log(f"done in {result.seconds / 60:.1f} min: {out_dir / bench_report.REPORT}")
    return result


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
    described = ", ".join(f"{name} ({variant.describe()})" for name, variant in VARIANTS.items())
    parser.add_argument(
        "--variants",
        type=lambda s: tuple(s.split(",")),
        help=f"exports of the same checkpoints served side by side, alternating at each concurrency: {described}; "
        f"{BASELINE_VARIANT} is always benched (default: full {', '.join(PLANS['full'].variants)}, the others at "
        f"1.12 s only; quick {', '.join(PLANS['quick'].variants)})",
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
            variants=args.variants and (BASELINE_VARIANT, *(v for v in args.variants if v != BASELINE_VARIANT)),
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
