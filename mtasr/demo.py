"""README's main job, for now: export the tiny models, serve them with the real Triton, use them.

Until the serving ensemble exists (issue 4) and the default models are trained (issue 6), this
exports a random-initialised tiny pair built by the project, starts tritonserver on the generated
repository, streams a synthetic 2-speaker-like signal chunk by chunk through the served encoder
(one instance per speaker slot, each with its own caches and masks) and prints what comes back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ARTIFACTS = Path("artifacts/demo")


def _ensure_export() -> Path:
    from mtasr.export.pipeline import ExportSettings, run_export
    from mtasr.random_models import build_random_pair

    # Rebuilt every run (about 10 s): a stale export from older code would mislead.
    asr_path, diar_path = build_random_pair("tiny", ARTIFACTS / "checkpoints")
    run_export(asr_path, diar_path, ARTIFACTS / "export", ExportSettings(max_streams_per_batch=2), overwrite=True)
    return ARTIFACTS / "export" / "model_repository"


def main() -> int:
    import tritonclient.grpc as grpcclient

    from mtasr.features import FeatureConfig, StreamingLogMel
    from mtasr.server import ServerConfig, TritonServer

    repo = _ensure_export()
    manifest = json.loads((repo / "manifest.json").read_text())
    streaming = manifest["asr"]["streaming"]
    encoder = {t["name"]: t for t in manifest["graphs"]["encoder"]["inputs"]}
    features = StreamingLogMel(FeatureConfig.from_dict(manifest["asr"]["features"]))

    sample_rate = manifest["asr"]["features"]["sample_rate"]
    t = np.arange(int(4.0 * sample_rate)) / sample_rate
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) * (t < 2.5) + 0.3 * np.sin(2 * np.pi * 330 * t) * (t > 1.5)
    frames = np.concatenate([features.accept(audio.astype(np.float32)), features.flush()], axis=1)

    config = ServerConfig(model_repository=repo, http_port=0, grpc_port=0, metrics_port=0)
    print(f"starting tritonserver on {repo}", flush=True)
    with TritonServer(config) as server:
        client = grpcclient.InferenceServerClient(server.address("grpc"))
        slots = 2
        caches = {
            name: np.zeros([slots, *encoder[name]["shape"][1:]], dtype=np.float32)
            for name in ("cache_last_channel", "cache_last_time")
        }
        cache_len = np.zeros(slots, dtype=np.int64)
        first, later = streaming["chunk_feature_frames"]
        pre_cache = streaming["pre_encode_cache_frames"][1]
        t_enc = streaming["encoder_frames_per_chunk"]
        start, step = 0, 0
        while start < frames.shape[1]:
            size = first if step == 0 else later
            lo = max(0, start - (0 if step == 0 else pre_cache))
            chunk = frames[:, lo : start + size]
            padded = np.zeros([frames.shape[0], later + pre_cache], dtype=np.float32)
            padded[:, : chunk.shape[1]] = chunk
            masks = np.stack([np.full(t_enc, 1.0 if s == step % 2 else 0.0, np.float32) for s in range(slots)])
            feeds = {
                "features": np.repeat(padded[None], slots, axis=0),
                "feature_lengths": np.full(slots, chunk.shape[1], np.int64),
                "cache_last_channel": caches["cache_last_channel"],
                "cache_last_time": caches["cache_last_time"],
                "cache_last_channel_len": cache_len,
                "speaker_mask": masks,
                "background_mask": 1.0 - masks,
                "drop_extra_pre_encoded": np.full(slots, 0 if step == 0 else streaming["drop_extra_pre_encoded"]),
            }
            inputs = []
            for name, value in feeds.items():
                if value.ndim == 1:  # per-row scalars travel as [N, 1] (config: dims [1], reshape [])
                    value = value[:, None]
                tensor = grpcclient.InferInput(
                    name, list(value.shape), "FP32" if value.dtype == np.float32 else "INT64"
                )
                tensor.set_data_from_numpy(value)
                inputs.append(tensor)
            result = client.infer("encoder", inputs)
            caches["cache_last_channel"] = result.as_numpy("next_cache_last_channel")
            caches["cache_last_time"] = result.as_numpy("next_cache_last_time")
            cache_len = result.as_numpy("next_cache_last_channel_len")
            encoded = result.as_numpy("encoded")
            # Same audio, different speaker masks: the slots' encodings differ by what the kernels inject.
            spread = float(np.max(np.abs(encoded[0] - encoded[1])))
            print(
                f"chunk {step}: {encoded.shape[2]} encoder frames per slot, max |slot 0 - slot 1| = {spread:.3f}, "
                f"cached frames per slot {cache_len.reshape(-1).tolist()}"
            )
            start += size
            step += 1
    print(
        "served the exported encoder for 2 speaker slots; per-speaker transcripts arrive with the serving "
        "ensemble (issue 4) and the trained default models (issue 6)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
