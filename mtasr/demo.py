"""README's main job: export models, start Triton, stream a conversation, print per-speaker transcripts.

Until the project trains its default models (issue 6), this builds a random-initialised tiny pair,
exports it, serves it with the real tritonserver, synthesises a 2-speaker conversation with
overlap (espeak-ng) and streams it chunk by chunk through the `multitalker_asr` ensemble over
gRPC, printing each speaker's words as they arrive and the final SegLST. The pipeline is the
real one; with random weights the words are noise.
"""

from __future__ import annotations

import json
import queue
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


def stream(address: str, audio: np.ndarray, chunk_samples: int, sequence_id: int = 1) -> list[dict]:
    """Send `audio` chunk by chunk over one gRPC stream; return the responses in order."""
    import tritonclient.grpc as grpcclient

    from mtasr.deployment import ENSEMBLE
    from mtasr.stages import AUDIO, CLIENT_OUTPUTS

    names = [name for name, _, _ in CLIENT_OUTPUTS]
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    chunks = [audio[i : i + chunk_samples] for i in range(0, len(audio), chunk_samples)]
    responses = []
    try:
        for k, chunk in enumerate(chunks):
            tensor = grpcclient.InferInput(AUDIO, [1, len(chunk)], "FP32")
            tensor.set_data_from_numpy(chunk[None].astype(np.float32))
            client.async_stream_infer(
                ENSEMBLE, [tensor], sequence_id=sequence_id, sequence_start=k == 0, sequence_end=k == len(chunks) - 1
            )
            result, error = answers.get(timeout=60)
            if error is not None:
                raise RuntimeError(str(error))
            response = {name: result.as_numpy(name)[0] for name in names}
            words = [
                f"[{slot}] {word.decode()}"
                for slot, word in zip(response["WORD_SPEAKERS"].tolist(), response["WORDS"].tolist(), strict=True)
            ]
            print(f"chunk {k:3d}: {len(response['TOKEN_IDS'])} tokens; words: {' '.join(words)[:110]}", flush=True)
            responses.append(response)
    finally:
        client.stop_stream()
        client.close()
    return responses


def main() -> int:
    from mtasr.deployment import load_manifest
    from mtasr.server import ServerConfig, TritonServer

    repo = _export()
    audio = _conversation()
    manifest = load_manifest(repo)
    chunk = manifest["asr"]["streaming"]["shift_feature_frames"][1] * manifest["asr"]["features"]["hop_length"]
    config = ServerConfig(model_repository=repo, http_port=0, grpc_port=0, metrics_port=0)
    print(f"starting tritonserver on {repo}", flush=True)
    with TritonServer(config) as server:
        print(f"streaming a {len(audio) / 16000:.1f} s 2-speaker conversation in {chunk} sample chunks", flush=True)
        responses = stream(server.address("grpc"), audio, chunk)
    segments = json.loads(responses[-1]["TRANSCRIPT"][0])
    print("\nper-speaker transcript (SegLST):")
    for seg in segments:
        print(f"  {seg['speaker']} {seg['start_time']:6.2f}-{seg['end_time']:6.2f} s: {seg['words'][:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
