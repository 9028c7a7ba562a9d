"""What the encoder's projected key/value cache saves: one encoder step, NeMo's cache against it.

`python -m mtasr.bench.encoder_cache --size full --rows 4`: builds a random ASR model of that size,
exports its encoder with each channel cache (`mtasr export --encoder-cache input|kv`) at one right
context, and times one later-chunk step of `rows` (stream, speaker) rows with full caches, the two
graphs alternated (ABAB) in one process, with ONNX Runtime set up as the stages set it up. Exports
are kept in --work-dir and reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from mtasr.export.kv_cache import CHANNEL_CACHES
from mtasr.graph_io import PRE_ENCODE_PER_SPEAKER

logger = logging.getLogger(__name__)


def export_encoders(size: str, right_context: int, work_dir: Path) -> dict[str, Path]:
    """The encoder graph of one random model of `size`, once per channel cache (with `streaming.json`)."""
    paths = {cache: work_dir / f"{size}-rc{right_context}-{cache}" / "encoder.onnx" for cache in CHANNEL_CACHES}
    if all(p.is_file() and p.with_name("streaming.json").is_file() for p in paths.values()):
        return paths
    from mtasr.export import asr
    from mtasr.export.random_models import TOKENIZER_LINES
    from mtasr.export.tokenizer import pseudo_english_lines, train_tokenizer

    vocab = asr.ASR_SIZES[size].vocab_size
    tokenizer = train_tokenizer(pseudo_english_lines(TOKENIZER_LINES, 0), vocab, work_dir / f"{size}-tokenizer")
    model = asr.build_asr(size, tokenizer, seed=0).eval()
    for cache, path in paths.items():
        logger.info("exporting the %s encoder with the %s cache", size, cache)
        # The whole encoder in one graph (front end included), so the two caches compare on one call.
        entry = asr.export_asr(
            model, path.parent, right_context=right_context, channel_cache=cache, pre_encode=PRE_ENCODE_PER_SPEAKER
        )
        path.with_name("streaming.json").write_text(json.dumps(entry["streaming"]))
    return paths


def steady_feeds(streaming: dict, n_mels: int, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A later chunk of `rows` rows whose channel caches are full: a stream's steady state."""
    rng = np.random.default_rng(seed)
    frames = streaming["chunk_feature_frames"][1] + streaming["pre_encode_cache_frames"][1]
    layers, d, t_enc = streaming["n_layers"], streaming["d_model"], streaming["encoder_frames_per_chunk"]
    cache = streaming["last_channel_cache_size"]
    return {
        "features": rng.normal(-8.0, 2.0, (rows, n_mels, frames)).astype(np.float32),
        "feature_lengths": np.full(rows, frames, np.int64),
        "cache_last_channel": rng.standard_normal((rows, layers, cache, streaming["channel_cache_width"])).astype(
            np.float32
        ),
        "cache_last_time": rng.standard_normal((rows, layers, d, streaming["conv_cache_size"])).astype(np.float32),
        "cache_last_channel_len": np.full(rows, cache, np.int64),
        "speaker_mask": rng.uniform(0, 1, (rows, t_enc)).astype(np.float32),
        "background_mask": np.zeros((rows, t_enc), np.float32),
        "drop_extra_pre_encoded": np.full(rows, streaming["drop_extra_pre_encoded"], np.int64),
    }


def time_steps(paths: dict[str, Path], rows: int, repeats: int, threads: int) -> dict[str, list[float]]:
    """Seconds per call of each graph, calls alternated between the graphs."""
    from mtasr.graphs import OrtGraph

    graphs, feeds = {}, {}
    for cache, path in paths.items():
        streaming = json.loads(path.with_name("streaming.json").read_text())
        graphs[cache] = OrtGraph(path, threads)
        n_mels = graphs[cache]._session.get_inputs()[0].shape[1]  # noqa: SLF001 (features: [N, mels, T])
        feeds[cache] = steady_feeds(streaming, int(n_mels), rows)
        graphs[cache].run(feeds[cache])  # warm-up: allocations, kernel selection
    seconds: dict[str, list[float]] = {cache: [] for cache in paths}
    order = list(paths)
    for repeat in range(repeats):
        for cache in order if repeat % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            graphs[cache].run(feeds[cache])
            seconds[cache].append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtasr.bench.encoder_cache", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="full", help="random ASR size: tiny, shrunk, small or full (default full)")
    parser.add_argument("--right-context", type=int, default=13)
    parser.add_argument("--rows", type=int, default=4, help="(stream, speaker) rows per call (default 4)")
    parser.add_argument("--repeats", type=int, default=6, help="timed calls of each graph, alternated (default 6)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/bench-encoder-cache"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = export_encoders(args.size, args.right_context, args.work_dir)
    seconds = time_steps(paths, args.rows, args.repeats, args.threads)
    median = {cache: float(np.median(s)) for cache, s in seconds.items()}
    for cache, s in seconds.items():
        print(f"{cache:>5} cache: median {1000 * median[cache]:.1f} ms per step of {args.rows} rows ({len(s)} calls)")
    print(f"kv / input: {median['kv'] / median['input']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
