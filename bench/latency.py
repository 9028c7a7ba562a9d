"""Chunk latency of a served repository: N concurrent streams, each paced in real time.

    python -m mtasr.bench.latency EXPORT/model_repository --streams 8 [--seconds 20] [--protocol http]

Starts tritonserver on the repository, opens N gRPC (or HTTP, through the checking front) streams
that each send one chunk per chunk duration (a live speaker) of a synthesised conversation, and
reports the time from sending a chunk to receiving its response (p50, p90, p99, max), the real-time
factor per stream and the server's resident memory (tritonserver plus its python-backend processes)
idle and under load.
A quick measurement tool; the full benchmark with perf_analyzer and NeMo beside it is `mtasr bench`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np


def _stream(client, sequence_id: int, audio: np.ndarray, out: list[float]) -> None:
    chunk = client.settings().chunk_samples
    chunks = (audio[i : i + chunk] for i in range(0, len(audio), chunk))
    out.extend(update.latency_s for update in client.stream(chunks, sequence_id, realtime=True))


def measure(repo: Path, streams: int, seconds: float, protocol: str = "grpc") -> dict[str, float]:
    from mtasr.client.stream import StreamingClient
    from mtasr.deployment import load_manifest
    from mtasr.server import TritonServer, local_server_config
    from mtasr.training.mixtures import make_conversation

    manifest = load_manifest(repo)
    rate = manifest["asr"]["features"]["sample_rate"]
    audios = []
    for k in range(streams):
        audio = make_conversation(2 + k % 2, seed=k).audio
        audios.append(np.tile(audio, int(np.ceil(seconds * rate / len(audio))))[: int(seconds * rate)])
    with TritonServer(local_server_config(repo, startup_timeout_s=600)) as server:
        client = StreamingClient(server.address(protocol), protocol=protocol, timeout_s=60)
        period = client.settings().chunk_s
        idle = server.rss_mb()
        latencies: list[list[float]] = [[] for _ in range(streams)]
        threads = [
            threading.Thread(target=_stream, args=(client, 1000 + k, audios[k], latencies[k])) for k in range(streams)
        ]
        peak = idle
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, server.rss_mb())
            time.sleep(0.5)
    flat = np.array([x for per in latencies for x in per])
    expected = sum(-(-len(a) // client.settings().chunk_samples) for a in audios)
    if len(flat) != expected:
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
    parser = argparse.ArgumentParser(prog="python -m mtasr.bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_repository", type=Path)
    parser.add_argument("--streams", type=int, default=1, help="concurrent real-time streams (default: 1)")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per stream (default: 20)")
    parser.add_argument(
        "--protocol", choices=["grpc", "http"], default="grpc", help="how clients stream (default: grpc)"
    )
    args = parser.parse_args(argv)
    result = measure(args.model_repository, args.streams, args.seconds, args.protocol)
    print(
        f"{result['streams']} stream(s), {result['chunks']} chunks of {result['chunk_s']:.2f} s: latency "
        f"p50 {result['p50_ms']:.0f} ms, p90 {result['p90_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
        f"max {result['max_ms']:.0f} ms; mean latency / chunk length {result['rtf']:.3f}; server memory "
        f"{result['rss_idle_mb']:.0f} MB idle, {result['rss_peak_mb']:.0f} MB peak"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
