"""What a chunk costs once a stream is long: the diarizer's speaker cache and FIFO full.

Sortformer re-encodes its speaker cache and FIFO with every chunk. Both start empty and fill as
the stream goes on (the full-size diarizer holds 188 + 188 frames, 30 s), and both sides feed them
only as full as they are, so the benchmark's short streams show the cheap start of a stream. This
measures one long stream chunk by chunk, batch 1, on both sides one after the other:

- served: the exported repository's stages in this process (`LocalPipeline`, what each stage
  model runs inside Triton, without Triton's own overhead);
- NeMo: its streaming multitalker loop (`mtasr.nemo_streaming`), one step per chunk.

The median chunk time before the cache holds a short benchmark stream's worth and after it is
full are the two figures reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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


def served_chunk_seconds(repo: Path, audio: np.ndarray, stream: int = 1) -> list[float]:
    """Wall time of each chunk of `audio` through the repository's stages in this process."""
    from mtasr.deployment import chunk_samples, load_manifest
    from mtasr.local_pipeline import LocalPipeline

    pipeline = LocalPipeline(repo)
    chunk = chunk_samples(load_manifest(repo))
    pipeline.transcribe(audio[: 2 * chunk], chunk, stream=stream + 1)  # warm-up: ONNX Runtime's first calls
    pieces = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
    seconds = []
    for k, piece in enumerate(pieces):
        started = time.perf_counter()
        (result,) = pipeline.step([(stream, piece, k == 0, k == len(pieces) - 1)])
        seconds.append(time.perf_counter() - started)
        if isinstance(result, Exception):
            raise result
    return seconds


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
    from mtasr.bench import SAMPLE_RATE, right_context_for
    from mtasr.deployment import load_manifest
    from mtasr.nemo_streaming import run_nemo_multitalker

    fill_s = diarizer_fill_s(load_manifest(repo))
    served = served_chunk_seconds(repo, audio)
    rc = right_context_for(latency_s)
    nemo = run_nemo_multitalker(asr, diarizer, audio, rc, models=models, all_slots_active=all_slots_active).step_s
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
    )
