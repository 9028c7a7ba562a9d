"""What a chunk costs once a stream is long: the diarizer's speaker cache and FIFO full.

Sortformer re-encodes its speaker cache and FIFO with every chunk. Both start empty and fill as
the stream goes on (the full-size diarizer holds 188 + 188 frames, 30 s), and both sides feed them
only as full as they are, so the benchmark's short streams show the cheap start of a stream. This
measures one long stream chunk by chunk, batch 1, on both sides one after the other:

- served: the exported repository's stages in this process (`LocalPipeline`, what each stage
  model runs inside Triton, without Triton's own overhead);
- NeMo: its streaming multitalker loop (`mtasr.bench.nemo_streaming`), one step per chunk.

The median chunk time before the cache holds a short benchmark stream's worth and after it is
full are the two figures reported, with where a served chunk's time goes once full (each graph's
ONNX Runtime calls, and the rest: features, cache and state updates, gating, glue).

`python -m mtasr.bench.steady REPO [--seconds 40] [--streams N] [--threads T]` prints the served side's split
alone, for one stream or for N streams stepped together (each step one batch, as Triton batches streams that
arrive together), and the process's CPU time a chunk: the stages' own cost at that batch size and thread count,
without Triton's.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class SteadyCost:
    model: str
    latency_s: float  # the chunk length
    stream_s: float  # audio of the measured stream
    fill_s: float  # stream time by which the diarizer's speaker cache and FIFO are full
    early_s: float  # the "early" chunks end by this stream time (the benchmark streams' length)
    served_early_ms: float  # median chunk time, chunks ending by early_s (the first one excluded)
    served_full_ms: float  # median chunk time, chunks starting after fill_s
    nemo_early_ms: float
    nemo_full_ms: float
    # Mean ms per chunk once full: each graph's calls (diarizer, pre_encoder, encoder, decoder, joint) and "other".
    served_full_split_ms: dict[str, float] = field(default_factory=dict)
    # Mean ONNX Runtime calls per chunk once full, per graph (greedy decoding calls decoder and joint per step).
    served_full_calls: dict[str, float] = field(default_factory=dict)

    @property
    def served_full_rtf(self) -> float:
        return self.served_full_ms / (1000 * self.latency_s)

    @property
    def nemo_full_rtf(self) -> float:
        return self.nemo_full_ms / (1000 * self.latency_s)


def diarizer_fill_s(manifest: dict) -> float:
    """Stream time after which the diarizer's speaker cache and FIFO hold all they can."""
    geometry = manifest["diarizer"]["geometry"]
    return (geometry["spkcache_len"] + geometry["fifo_len"]) * geometry["frame_len_s"]


def chunk_windows(n_chunks: int, chunk_s: float, early_s: float, fill_s: float) -> tuple[list[int], list[int]]:
    """(early, full): indices of the chunks that end by `early_s` (the first, warm-up heavy, excluded)
    and of the chunks that start once the cache is full (the last, a padded partial chunk, excluded)."""
    early = [k for k in range(1, n_chunks - 1) if (k + 1) * chunk_s <= early_s + 1e-9]
    full = [k for k in range(n_chunks - 1) if k * chunk_s >= fill_s - 1e-9]
    return early, full


def _median_ms(seconds: list[float], indices: list[int]) -> float:
    return 1000 * float(np.median([seconds[k] for k in indices])) if indices else float("nan")


CALLS = "calls"  # a chunk's record: {"total": s, graph: s, ..., CALLS: {graph: n}, CPU: s}
CPU = "cpu"  # the process's CPU time over the step (every thread): wall time x the cores it kept busy


class _TimedGraph:
    """A graph whose calls add their wall time to `seconds[name]` and count in `calls[name]`."""

    def __init__(self, graph, name: str, seconds: dict[str, float], calls: dict[str, int]) -> None:
        self._graph, self._name, self._seconds, self._calls = graph, name, seconds, calls

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            return self._graph.run(feeds)
        finally:
            self._seconds[self._name] += time.perf_counter() - started
            self._calls[self._name] += 1


def served_chunk_seconds(
    repo: Path,
    audios: list[np.ndarray],
    first_stream: int = 1,
    starts: list[int] | None = None,
    intra_op_threads: int = 0,
) -> list[dict]:
    """Per step of `audios` (one stream each, stream i from step `starts[i]`, default 0: a step is one batch
    with a chunk of every live stream) through the repository's stages in this process: its wall time
    ("total"), each graph's share of it (seconds per graph name) and each graph's calls (`CALLS`). Each graph runs
    `intra_op_threads` ONNX Runtime threads (0: ONNX Runtime's default, every core)."""
    from mtasr.deployment import chunk_samples, load_manifest, local_graphs
    from mtasr.graphs import single_threaded_blas
    from mtasr.local_pipeline import LocalPipeline, streams_in_lockstep, streams_stepped

    manifest = load_manifest(repo)
    graph_seconds: dict[str, float] = defaultdict(float)
    graph_calls: dict[str, int] = defaultdict(int)
    plain = local_graphs(repo, manifest, intra_op_threads)
    pipeline = LocalPipeline(repo, graphs=lambda name: _TimedGraph(plain(name), name, graph_seconds, graph_calls))
    chunk = chunk_samples(manifest)
    warm_up = [audio[: 2 * chunk] for audio in audios]  # ONNX Runtime's first calls at this batch size
    streams_in_lockstep(pipeline.step, warm_up, chunk, first_stream + len(audios))
    steps = []

    def timed_step(requests):
        graph_seconds.clear()
        graph_calls.clear()
        started, cpu_started = time.perf_counter(), time.process_time()
        results = pipeline.step(requests)
        steps.append(
            {
                "total": time.perf_counter() - started,
                **graph_seconds,
                CALLS: dict(graph_calls),
                CPU: time.process_time() - cpu_started,
            }
        )
        return results

    with single_threaded_blas():  # as in the served stage processes (mtasr.triton.stage_model)
        streams_stepped(timed_step, audios, chunk, first_stream, starts or [0] * len(audios))
    return steps


def split_ms(chunks: list[dict[str, float]], indices: list[int]) -> dict[str, float]:
    """Mean ms per chunk over `indices` of each graph, and of the rest ("other"); they add up to the mean total."""
    if not indices:
        return {}
    names = sorted({name for k in indices for name in chunks[k]} - {"total", CALLS, CPU})
    split = {name: 1000 * float(np.mean([chunks[k].get(name, 0.0) for k in indices])) for name in names}
    split["other"] = 1000 * float(np.mean([chunks[k]["total"] for k in indices])) - sum(split.values())
    return split


def calls_per_chunk(chunks: list[dict], indices: list[int]) -> dict[str, float]:
    """Mean graph calls per chunk over `indices`, per graph."""
    names = sorted({name for k in indices for name in chunks[k].get(CALLS, {})})
    return {name: float(np.mean([chunks[k][CALLS].get(name, 0) for k in indices])) for name in names}


def format_calls(calls: dict[str, float]) -> str:
    return ", ".join(f"{name} {n:.1f}" for name, n in calls.items())


def format_split(split: dict[str, float]) -> str:
    """`split_ms` as one line: "<total> ms = <name> <ms>, ..."."""
    return f"{sum(split.values()):.0f} ms = " + ", ".join(f"{name} {ms:.0f}" for name, ms in split.items())


def measure_steady_cost(
    repo: Path,
    models,
    asr: Path,
    diarizer: Path,
    audio: np.ndarray,
    name: str,
    latency_s: float,
    early_s: float,
    *,
    all_slots_active: bool,
) -> SteadyCost:
    """Both sides on one long stream (see the module's docstring); `models` is NeMo's restored pair."""
    from mtasr.bench.nemo_streaming import run_nemo_multitalker
    from mtasr.bench.plan import SAMPLE_RATE, right_context_for
    from mtasr.deployment import load_manifest

    fill_s = diarizer_fill_s(load_manifest(repo))
    chunks = served_chunk_seconds(repo, [audio])
    served = [c["total"] for c in chunks]
    rc = right_context_for(latency_s)
    nemo = run_nemo_multitalker(
        asr, diarizer, audio, rc, models=models, all_slots_active=all_slots_active, diar_cache=None
    ).step_s
    early, full = chunk_windows(len(served), latency_s, early_s, fill_s)
    nemo_early, nemo_full = chunk_windows(len(nemo), latency_s, early_s, fill_s)
    return SteadyCost(
        name,
        latency_s,
        len(audio) / SAMPLE_RATE,
        fill_s,
        early_s,
        _median_ms(served, early),
        _median_ms(served, full),
        _median_ms(nemo, nemo_early),
        _median_ms(nemo, nemo_full),
        split_ms(chunks, full),
        calls_per_chunk(chunks, full),
    )


def _main() -> int:
    import argparse

    from mtasr.bench.plan import SAMPLE_RATE, conversation_audio
    from mtasr.deployment import chunk_samples, load_manifest

    parser = argparse.ArgumentParser(
        prog="python -m mtasr.bench.steady",
        description="Time long 4-speaker streams chunk by chunk through an exported repository's stages in this "
        "process, and print where a chunk's time goes before and after the diarizer's cache is full.",
    )
    parser.add_argument("repo", type=Path, help="exported model repository (with manifest.json)")
    parser.add_argument("--seconds", type=float, default=40.0, help="stream length (default 40)")
    parser.add_argument("--early-seconds", type=float, default=8.0, help="the early window's end (default 8)")
    parser.add_argument(
        "--streams",
        type=int,
        default=1,
        help="streams stepped together, each step one batch with a chunk of every stream, as the served stages "
        "see streams that arrive together (default 1)",
    )
    parser.add_argument(
        "--staggered",
        action="store_true",
        help="with --streams N: streams of different ages, as a server sees streams that started at different "
        "times: stream i starts i/N of a stream's length after the first, and each is followed by a new one "
        "when it ends; timed over one stream's length once all N are live",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per graph (default 0: its own default, every core; the server shares the cores "
        "between its stage processes, mtasr.deployment.serving_threads)",
    )
    args = parser.parse_args()
    if args.streams < 1:
        parser.error("--streams must be at least 1")
    manifest = load_manifest(args.repo)
    chunk_s = chunk_samples(manifest) / SAMPLE_RATE
    if args.staggered:
        return _main_staggered(args.repo, args.streams, args.seconds, chunk_s, args.threads)
    audios = [conversation_audio(4, 100 + i, args.seconds) for i in range(args.streams)]
    steps = served_chunk_seconds(args.repo, audios, intra_op_threads=args.threads)
    fill_s = diarizer_fill_s(manifest)
    windows = chunk_windows(len(steps), chunk_s, args.early_seconds, fill_s)
    labels = (f"first {args.early_seconds:g} s", f"after {fill_s:.1f} s (cache full)")
    batch = f"steps of {args.streams} chunks" if args.streams > 1 else "chunks"
    for label, indices in zip(labels, windows, strict=True):
        split = split_ms(steps, indices)
        if not split:
            print(f"{label}: no {batch} (stream too short)")
            continue
        print(f"{label}: {len(indices)} {batch} of {1000 * chunk_s:.0f} ms, mean {format_split(split)}")
        print(_rate_line(steps, indices, args.streams, chunk_s))
    return 0


def _rate_line(steps: list[dict], indices: list[int], streams: int, chunk_s: float) -> str:
    """Over `indices` of `steps` (each a step of `streams` chunks): the audio processed per second, the process's
    CPU time per chunk (all its threads: what a chunk costs a machine whose cores are all busy) and each graph's
    calls a step."""
    step_s = float(np.mean([steps[k]["total"] for k in indices]))
    cpu_ms = 1000 * float(np.mean([steps[k][CPU] for k in indices])) / streams
    calls = format_calls(calls_per_chunk(steps, indices))
    return (
        f"  {streams * chunk_s / step_s:.1f} audio s/s in this process, {cpu_ms:.0f} ms CPU a chunk; "
        f"graph calls per step: {calls}"
    )


def _main_staggered(repo: Path, streams: int, seconds: float, chunk_s: float, threads: int) -> int:
    from mtasr.bench.plan import conversation_audio

    n_chunks = max(1, round(seconds / chunk_s))
    conversations = [conversation_audio(4, 100 + i, seconds) for i in range(streams)]
    # The first round fills the server with streams of every age; the second, the same audio as new streams, is timed.
    starts = [i * n_chunks // streams + round_ * n_chunks for round_ in range(2) for i in range(streams)]
    steps = served_chunk_seconds(repo, conversations * 2, starts=starts, intra_op_threads=threads)
    timed = list(range(n_chunks, 2 * n_chunks))
    split = split_ms(steps, timed)
    print(f"{streams} streams of {seconds:g} s at evenly spread ages: {len(timed)} steps, mean {format_split(split)}")
    print(_rate_line(steps, timed, streams, chunk_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
