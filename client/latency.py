"""Chunk latency of a served repository: N concurrent streams, each paced in real time.

    python -m mtasr.client.latency EXPORT/model_repository --streams 8 [--seconds 20]

Starts tritonserver on the repository, opens N gRPC streams that each send one chunk per chunk
duration (a live speaker) of a synthesised conversation, and reports the time from sending a
chunk to receiving its response (p50, p90, p99, max), the real-time factor per stream and the
server's resident memory (tritonserver plus its python-backend processes) idle and under load.
A quick measurement tool; the full benchmark with perf_analyzer is `mtasr bench` (issue 7).
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np


def _rss_mb(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def _stream(address: str, sequence_id: int, chunks: list[np.ndarray], period_s: float, out: list[float]) -> None:
    import tritonclient.grpc as grpcclient

    from mtasr.deployment import ENSEMBLE
    from mtasr.stages import AUDIO

    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(address)
    client.start_stream(callback=lambda result, error: answers.put((result, error, time.perf_counter())))
    try:
        start = time.perf_counter()
        for k, chunk in enumerate(chunks):
            # A live source: chunk k is complete at (k + 1) * period after the stream began.
            time.sleep(max(0.0, start + (k + 1) * period_s - time.perf_counter()))
            tensor = grpcclient.InferInput(AUDIO, [1, len(chunk)], "FP32")
            tensor.set_data_from_numpy(chunk[None])
            sent = time.perf_counter()
            client.async_stream_infer(
                ENSEMBLE, [tensor], sequence_id=sequence_id, sequence_start=k == 0, sequence_end=k == len(chunks) - 1
            )
            _, error, received = answers.get(timeout=300)
            if error is not None:
                raise RuntimeError(str(error))
            out.append(received - sent)
    finally:
        client.stop_stream()
        client.close()


def measure(repo: Path, streams: int, seconds: float) -> dict[str, float]:
    from mtasr.deployment import load_manifest, models_to_load
    from mtasr.mixtures import make_conversation
    from mtasr.server import ServerConfig, TritonServer

    manifest = load_manifest(repo)
    rate = manifest["asr"]["features"]["sample_rate"]
    chunk = manifest["asr"]["streaming"]["shift_feature_frames"][1] * manifest["asr"]["features"]["hop_length"]
    period = chunk / rate
    audios = []
    for k in range(streams):
        audio = make_conversation(2 + k % 2, seed=k).audio
        audio = np.tile(audio, int(np.ceil(seconds * rate / len(audio))))[: int(seconds * rate)]
        audios.append([np.ascontiguousarray(audio[i : i + chunk]) for i in range(0, len(audio), chunk)])
    config = ServerConfig(
        model_repository=repo,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        startup_timeout_s=600,
        load_models=models_to_load(manifest),  # what `mtasr serve` loads
    )
    with TritonServer(config) as server:
        idle = _rss_mb(server.pid)
        latencies: list[list[float]] = [[] for _ in range(streams)]
        threads = [
            threading.Thread(target=_stream, args=(server.address("grpc"), 1000 + k, audios[k], period, latencies[k]))
            for k in range(streams)
        ]
        peak = idle
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, _rss_mb(server.pid))
            time.sleep(0.5)
    flat = np.array([x for per in latencies for x in per])
    if len(flat) != sum(len(a) for a in audios):
        raise RuntimeError("a stream failed before the end; see the errors above")
    return {
        "streams": streams,
        "chunk_s": period,
        "chunks": len(flat),
        "p50_ms": 1000 * float(np.percentile(flat, 50)),
        "p90_ms": 1000 * float(np.percentile(flat, 90)),
        "p99_ms": 1000 * float(np.percentile(flat, 99)),
        "max_ms": 1000 * float(flat.max()),
        "rtf": float(flat.mean() / period),
        "rss_idle_mb": idle,
        "rss_peak_mb": peak,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtasr.client.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_repository", type=Path)
    parser.add_argument("--streams", type=int, default=1, help="concurrent real-time streams (default: 1)")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per stream (default: 20)")
    args = parser.parse_args(argv)
    result = measure(args.model_repository, args.streams, args.seconds)
    print(
        f"{result['streams']} stream(s), {result['chunks']} chunks of {result['chunk_s']:.2f} s: latency "
        f"p50 {result['p50_ms']:.0f} ms, p90 {result['p90_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
        f"max {result['max_ms']:.0f} ms; mean latency / chunk length {result['rtf']:.3f}; server memory "
        f"{result['rss_idle_mb']:.0f} MB idle, {result['rss_peak_mb']:.0f} MB peak"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
