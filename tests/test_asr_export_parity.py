"""The exported ASR graphs compute what NeMo's multitalker model computes (max abs diff <= 1e-4)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mtasr.export import asr
from mtasr.graph_io import (
    ENCODER_INPUTS,
    ENCODER_INSTANCE_INPUTS,
    PRE_ENCODE_MODES,
    PRE_ENCODER_INPUTS,
    PRE_ENCODER_OUTPUTS,
)

TOLERANCE = 1e-4
N_CHUNKS = 5


@pytest.fixture(scope="module", params=PRE_ENCODE_MODES)
def exported(request, tiny_tokenizer_dir, tmp_path_factory):
    """Both encoder layouts: the front end in its own graph (once per stream when served) or in the encoder."""
    model = asr.build_asr("tiny", tiny_tokenizer_dir, seed=3)
    out = tmp_path_factory.mktemp("asr_graphs")
    # NeMo's own cache layout (layer inputs), so caches compare directly; the default, projected keys and
    # values, has its own test below.
    entry = asr.export_asr(model, out, right_context=13, channel_cache="input", pre_encode=request.param)
    return model, entry, sessions_of(entry, out)


def sessions_of(entry: dict, out) -> dict[str, ort.InferenceSession]:
    return {name: ort.InferenceSession(str(out / g["file"])) for name, g in entry["graphs"].items()}


def run_encoder(sessions: dict, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One encoder step from the whole encoder's inputs, through whichever layout was exported."""
    if "pre_encoder" not in sessions:
        return sessions["encoder"].run(None, {name: feeds[name] for name in ENCODER_INPUTS})
    pre_encoded = sessions["pre_encoder"].run(None, {name: feeds[name] for name in PRE_ENCODER_INPUTS})
    layer_feeds = dict(zip(PRE_ENCODER_OUTPUTS, pre_encoded, strict=True))
    layer_feeds.update({name: feeds[name] for name in ENCODER_INSTANCE_INPUTS})
    return sessions["encoder"].run(None, layer_feeds)


def nemo_stream_step(model, inputs: dict[str, torch.Tensor]):
    """NeMo's own parallel multitalker step: pre-encode + drop, masks set on the model, cache-aware step."""
    drop = int(inputs["drop_extra_pre_encoded"][0])
    assert bool((inputs["drop_extra_pre_encoded"] == drop).all()), "NeMo steps a whole batch alike"
    # NeMo's streaming buffer hands over unpadded chunks.
    features = inputs["features"][:, :, : int(inputs["feature_lengths"].max())]
    x, lengths = model.encoder.pre_encode(x=features.transpose(1, 2), lengths=inputs["feature_lengths"])
    x, lengths = x[:, drop:], (lengths.to(torch.int64) - drop).clamp(min=0)
    model.set_speaker_targets(inputs["speaker_mask"], inputs["background_mask"])
    try:
        encoded, encoded_len, channel, time, channel_len = model.encoder.cache_aware_stream_step(
            processed_signal=x,
            processed_signal_length=lengths,
            cache_last_channel=inputs["cache_last_channel"].transpose(0, 1),
            cache_last_time=inputs["cache_last_time"].transpose(0, 1),
            cache_last_channel_len=inputs["cache_last_channel_len"],
            keep_all_outputs=False,
            bypass_pre_encode=True,
        )
    finally:
        model.clear_speaker_targets()
    return encoded, encoded_len, channel.transpose(0, 1), time.transpose(0, 1), channel_len


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def test_encoder_graph_matches_nemo_over_consecutive_chunks_with_per_instance_speaker_masks(exported):
    model, _, sessions = exported
    batch = 3
    channel, time, channel_len = (
        t.transpose(0, 1) if t.ndim > 1 else t for t in model.encoder.get_initial_cache_state(batch_size=batch)
    )
    ort_state = nemo_state = (channel.contiguous(), time.contiguous(), channel_len)
    for step in range(N_CHUNKS):
        inputs = asr.example_encoder_inputs(model, batch, first_chunk=step == 0, seed=step + 10)
        # Each instance of the batch plays a different speaker: different target and background masks.
        inputs["speaker_mask"][0] = 1.0
        inputs["speaker_mask"][1] = 0.0
        inputs["background_mask"][2] = 0.0
        assert not torch.equal(inputs["speaker_mask"][1], inputs["speaker_mask"][2])

        with torch.no_grad():
            nemo_inputs = dict(
                inputs,
                cache_last_channel=nemo_state[0],
                cache_last_time=nemo_state[1],
                cache_last_channel_len=nemo_state[2],
            )
            nemo_out = nemo_stream_step(model, nemo_inputs)
        ort_inputs = {k: v.numpy() for k, v in inputs.items()}
        ort_inputs.update(
            cache_last_channel=ort_state[0], cache_last_time=ort_state[1], cache_last_channel_len=ort_state[2]
        )
        ort_inputs = {k: np.asarray(v) for k, v in ort_inputs.items()}
        ort_out = run_encoder(sessions, ort_inputs)

        for name, got, want in zip(asr.ENCODER_SPEC.outputs, ort_out, nemo_out, strict=True):
            assert got.shape == tuple(want.shape), name
            assert max_diff(got, want.numpy()) <= TOLERANCE, f"chunk {step}: {name} differs"
        # Carry each side's own caches forward: errors would accumulate if the graph drifted.
        ort_state = (ort_out[2], ort_out[3], ort_out[4])
        nemo_state = nemo_out[2:]

    # The channel cache filled up to its limit over the chunks, so the full-cache path ran too.
    assert int(np.min(ort_state[2])) == model.encoder.streaming_cfg.last_channel_cache_size


def test_speaker_masks_change_the_encoding(exported):
    model, _, sessions = exported
    inputs = {k: v.numpy() for k, v in asr.example_encoder_inputs(model, 1, first_chunk=False).items()}
    first = run_encoder(sessions, inputs)[0]
    inputs["speaker_mask"] = 1.0 - inputs["speaker_mask"]
    second = run_encoder(sessions, inputs)[0]
    assert max_diff(first, second) > 1e-3


def test_prediction_network_graph_matches_nemo(exported):
    model, _, sessions = exported
    inputs = asr.example_decoder_inputs(model, batch=4, seed=1)
    with torch.no_grad():
        state = [
            inputs["state_h"].transpose(0, 1).contiguous(),
            inputs["state_c"].transpose(0, 1).contiguous(),
        ]
        g, (h, c) = model.decoder.predict(inputs["targets"], state=state, add_sos=False, batch_size=None)
    got = sessions["decoder"].run(None, {k: v.numpy() for k, v in inputs.items()})
    assert max_diff(got[0], g[:, 0].numpy()) <= TOLERANCE
    assert max_diff(got[1], h.transpose(0, 1).numpy()) <= TOLERANCE
    assert max_diff(got[2], c.transpose(0, 1).numpy()) <= TOLERANCE


def test_joint_graph_matches_nemo(exported):
    model, _, sessions = exported
    inputs = asr.example_joint_inputs(model, batch=5, seed=2)
    with torch.no_grad():
        want = model.joint.joint(inputs["encoder_frame"][:, None], inputs["prediction"][:, None])[:, 0, 0]
    got = sessions["joint"].run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    assert got.shape == (5, model.decoder.vocab_size + 1)
    assert max_diff(got, want.numpy()) <= TOLERANCE


def test_every_supported_right_context_exports_with_its_own_chunk_geometry(tiny_tokenizer_dir, tmp_path):
    model = asr.build_asr("tiny", tiny_tokenizer_dir, seed=0)
    frames = {}
    for right_context in asr.supported_right_contexts(model):
        asr.set_right_context(model, right_context)
        frames[right_context] = asr.streaming_geometry(model)["encoder_frames_per_chunk"]
    assert frames == {0: 1, 1: 2, 6: 7, 13: 14}


def test_unsupported_right_context_is_refused(tiny_tokenizer_dir):
    model = asr.build_asr("tiny", tiny_tokenizer_dir, seed=0)
    with pytest.raises(ValueError, match="right context 5 is not supported"):
        asr.set_right_context(model, 5)


def test_first_chunks_right_padded_batch_with_later_chunks(exported):
    """A stream's first chunk, padded to the later chunks' length, gives NeMo's unpadded first step."""
    model, _, sessions = exported
    first = asr.example_encoder_inputs(model, 1, first_chunk=True, seed=5)
    later = asr.example_encoder_inputs(model, 1, first_chunk=False, seed=6)
    assert first["features"].shape == later["features"].shape
    assert first["feature_lengths"][0] < later["feature_lengths"][0]
    first["features"][:, :, int(first["feature_lengths"][0]) :] = 7.0  # padding content must not matter
    mixed = {k: torch.cat([first[k], later[k]]) for k in first}
    got = run_encoder(sessions, {k: v.numpy() for k, v in mixed.items()})
    with torch.no_grad():
        want_first = nemo_stream_step(model, first)
        want_later = nemo_stream_step(model, later)
    for i, want in enumerate([want_first, want_later]):
        for name, got_tensor, want_tensor in zip(asr.ENCODER_SPEC.outputs, got, want, strict=True):
            assert max_diff(got_tensor[i : i + 1], want_tensor.numpy()) <= TOLERANCE, (i, name)


def test_encoder_with_a_projected_key_value_cache_computes_what_nemo_does(exported, tmp_path):
    """The default export caches each layer's projected keys and values, not its inputs: a chunk projects
    only its own frames. Over consecutive chunks, different masks per row and a cache that fills up, the
    outputs are NeMo's (its cache taken through the same projections), within the same tolerance."""
    from mtasr.export.kv_cache import KV_CACHE, project_channel_cache

    model, input_cache_entry, _ = exported
    layout = PRE_ENCODE_MODES[0] if "pre_encoder" in input_cache_entry["graphs"] else PRE_ENCODE_MODES[1]
    entry = asr.export_asr(model, tmp_path, right_context=13, channel_cache=KV_CACHE, pre_encode=layout)
    streaming = entry["streaming"]
    assert streaming["channel_cache"] == KV_CACHE and streaming["channel_cache_width"] == 2 * streaming["d_model"]
    sessions = sessions_of(entry, tmp_path)
    batch = 3
    channel, time, channel_len = (
        t.transpose(0, 1) if t.ndim > 1 else t for t in model.encoder.get_initial_cache_state(batch_size=batch)
    )
    nemo_state = (channel.contiguous(), time.contiguous(), channel_len)
    # Zeros, not the projection of NeMo's zeros: cache frames not yet filled are masked out of attention.
    kv_state = (np.zeros((batch, *channel.shape[1:3], 2 * channel.shape[3]), np.float32), time.numpy(), channel_len)
    for step in range(N_CHUNKS):
        inputs = asr.example_encoder_inputs(model, batch, first_chunk=step == 0, seed=step + 20)
        inputs["speaker_mask"][0] = 1.0
        inputs["speaker_mask"][1] = 0.0
        with torch.no_grad():
            nemo_out = nemo_stream_step(
                model,
                dict(
                    inputs,
                    cache_last_channel=nemo_state[0],
                    cache_last_time=nemo_state[1],
                    cache_last_channel_len=nemo_state[2],
                ),
            )
        feeds = {k: v.numpy() for k, v in inputs.items()}
        feeds.update(
            cache_last_channel=kv_state[0], cache_last_time=kv_state[1], cache_last_channel_len=np.asarray(kv_state[2])
        )
        got = run_encoder(sessions, {k: np.asarray(v) for k, v in feeds.items()})
        want = list(nemo_out)
        with torch.no_grad():
            want[2] = project_channel_cache(model, nemo_out[2])
        for name, g, w in zip(asr.ENCODER_SPEC.outputs, got, want, strict=True):
            if name == "next_cache_last_channel":
                # Only the filled frames carry meaning (the rest is masked out of attention).
                filled = int(np.min(got[4]))
                g, w = (
                    g[:, :, -filled:] if filled else g[:, :, :0],
                    w.numpy()[:, :, -filled:] if filled else w.numpy()[:, :, :0],
                )
            assert max_diff(g, w) <= TOLERANCE, f"chunk {step}: {name} differs"
        kv_state = (got[2], got[3], got[4])
        nemo_state = nemo_out[2:]
    assert int(np.min(kv_state[2])) == model.encoder.streaming_cfg.last_channel_cache_size
