"""The feature chunker cuts exactly the chunks NeMo's CacheAwareStreamingAudioBuffer cuts, whatever
pieces the audio arrives in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtasr.chunker import ChunkGeometry, FeatureChunker


@pytest.fixture(scope="module")
def tiny_asr(tiny_tokenizer_dir):
    from mtasr.export.asr import build_asr

    return build_asr("tiny", tiny_tokenizer_dir)


def nemo_chunks(model, feats: np.ndarray):
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    buffer = CacheAwareStreamingAudioBuffer(model=model, online_normalization=False, pad_and_drop_preencoded=False)
    buffer.append_processed_signal(torch.from_numpy(feats)[None], stream_id=-1)
    return [(c[0].numpy(), int(n[0])) for c, n in buffer]


@pytest.mark.parametrize("right_context", [13, 0])
@pytest.mark.parametrize("n_frames", [1, 7, 104, 105, 112, 113, 224, 225, 331, 500])
def test_chunks_equal_nemo_streaming_buffer(tiny_asr, right_context, n_frames):
    from mtasr.export.asr import set_right_context, streaming_geometry

    set_right_context(tiny_asr, right_context)
    geometry = ChunkGeometry.from_manifest(streaming_geometry(tiny_asr))
    n_mels = 128
    feats = np.random.default_rng(n_frames).standard_normal((n_mels, n_frames)).astype(np.float32)
    expected = nemo_chunks(tiny_asr, feats)

    chunker = FeatureChunker(geometry, n_mels)
    rng = np.random.default_rng(0)
    pieces, at = [], 0
    while at < n_frames:  # frames arrive in uneven pieces
        step = int(rng.integers(1, 40))
        pieces.append(chunker.accept(feats[:, at : at + step]))
        at += step
    pieces.append(chunker.finish())
    got = [(c.features[k], int(c.lengths[k]), int(c.drop[k])) for c in pieces for k in range(len(c))]

    assert len(got) == len(expected)
    for index, ((chunk, length, drop), (want, want_len)) in enumerate(zip(got, expected, strict=True)):
        assert length == want_len
        assert drop == (0 if index == 0 else geometry.drop_extra_pre_encoded)
        assert chunk.shape == (geometry.padded_frames, n_mels)
        np.testing.assert_array_equal(chunk[:length].T, want[:, :length])
        assert not chunk[length:].any()
