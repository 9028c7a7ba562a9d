"""README's main job: export models, start Triton, stream a conversation, print per-speaker transcripts.

Until the project trains its default models (issue 6), this builds a random-initialised tiny pair,
exports it, serves it with the real tritonserver, synthesises a 2-speaker conversation with
overlap (espeak-ng) and streams it chunk by chunk through the `multitalker_asr` ensemble over
gRPC, printing each speaker's words as they arrive and the final SegLST. The pipeline is the
real one; with random weights the words are noise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ARTIFACTS = Path("artifacts/demo")


def _export() -> Path:
    from mtasr.export.pipeline import ExportSettings, run_export
    from mtasr.random_models import build_random_pair

    # Rebuilt every run (about 10 s): a stale export from older code would mislead.
    asr_path, diar_path = build_random_pair("tiny", ARTIFACTS / "checkpoints")
    run_export(asr_path, diar_path, ARTIFACTS / "export", ExportSettings(max_streams_per_batch=2), overwrite=True)
    return ARTIFACTS / "export" / "model_repository"


def _conversation() -> np.ndarray:
    from mtasr.mixtures import espeak_available, make_conversation

    if not espeak_available():
        raise SystemExit("the demo speaks its conversation with espeak-ng: apt-get install espeak-ng")
    return make_conversation(2, seed=2).audio


def print_update(update) -> None:
    """One line per chunk: how many tokens, and the words it completed."""
    words = " ".join(f"[{w.speaker}] {w.text}" for w in update.words)
    print(f"chunk {update.index:3d}: {len(update.token_ids)} tokens; words: {words[:110]}", flush=True)


def main() -> int:
    from mtasr.client.stream import StreamingClient
    from mtasr.server import ServerConfig, TritonServer

    repo = _export()
    audio = _conversation()
    config = ServerConfig(model_repository=repo, http_port=0, grpc_port=0, metrics_port=0)
    print(f"starting tritonserver on {repo}", flush=True)
    with TritonServer(config) as server:
        client = StreamingClient(server.address("grpc"))
        settings = client.settings()
        print(
            f"streaming a {len(audio) / settings.sample_rate:.1f} s 2-speaker conversation "
            f"in {settings.chunk_samples} sample chunks",
            flush=True,
        )
        transcript = client.transcribe(audio, on_update=print_update)
    print("\nper-speaker transcript (SegLST):")
    for seg in transcript.seglst:
        print(f"  {seg['speaker']} {seg['start_time']:6.2f}-{seg['end_time']:6.2f} s: {seg['words'][:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
