"""Parity of the exported Streaming Sortformer (ONNX core + numpy cache/FIFO update) with NeMo.

A tiny random-weight model (2+2 layers, speaker cache 24 / FIFO 24 frames, 8-frame chunks) is built
with a fixed seed and exported once per module. Inputs are synthetic mel-like features.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("nemo.collections.asr")

from mtasr.export.sortformer import (  # noqa: E402
    INPUT_NAMES,
    ONNX_FILE,
    SortformerCore,
    build_sortformer,
    export_sortformer,
)

from mtasr.sortformer_state import (  # noqa: E402
    SortformerParams,
    SortformerStreamState,
    core_inputs,
    init_state,
    iter_feature_chunks,
    replace_rows,
    streaming_update,
)

TOL = 1e-4
N_MELS = 128


def _synthetic_conversation(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """Mel-like features [n_mels, T]: 0.3-2 s segments of 5 "voices" (fixed spectral templates) + noise."""
    templates = rng.normal(0.0, 1.5, (5, N_MELS)).astype(np.float32) - 4.0
    feats = np.empty((n_frames, N_MELS), np.float32)
    t = 0
    while t < n_frames:
        seg = int(rng.integers(30, 200))
        feats[t : t + seg] = templates[rng.integers(0, 5)]
        t += seg
    feats += rng.normal(0.0, 0.7, feats.shape).astype(np.float32)
    return feats.T.copy()


def _spread_speaker_head(model, feats_bct: torch.Tensor) -> None:
    """Make the random model's speaker head decisive, so the cache-compression logic has work to do.

    Random weights give probabilities near 0.5 for every frame: nothing would count as speech (p > 0.5
    with positive score) or silence (sum p < 0.2), and compression would keep only placeholders. We
    rewire the two head layers (weights only; the NeMo code path is unchanged): layer 1 projects the
    transformer output on its 4 principal directions (measured on the test features), standardised;
    layer 2 turns each direction into one speaker with gain 8 and threshold 0.6. The result has silent
    frames, single-speaker frames and overlaps, like a conversation.
    """
    sm = model.sortformer_modules
    with torch.no_grad():
        emb, emb_len = model.frontend_encoder(feats_bct, torch.tensor([feats_bct.shape[2]]))
        mask = sm.length_to_mask(emb_len, emb.shape[1])
        hidden = torch.relu(model.transformer_encoder(encoder_states=emb, encoder_mask=mask))[0]
        mean = hidden.mean(0)
        _, s, vt = torch.linalg.svd(hidden - mean, full_matrices=False)
        n_spk, h = sm.n_spk, hidden.shape[1]
        std = s[:n_spk] / math.sqrt(hidden.shape[0] - 1)
        w1 = torch.zeros(h, h)
        w1[:n_spk] = vt[:n_spk] / std[:, None]
        b1 = torch.zeros(h)
        b1[:n_spk] = -(vt[:n_spk] @ mean) / std
        sm.first_hidden_to_hidden.weight.copy_(w1)
        sm.first_hidden_to_hidden.bias.copy_(b1)
        gain, thr = 8.0, 0.6
        w2 = torch.zeros(n_spk, h)
        w2[:, :n_spk] = torch.eye(n_spk) * gain
        sm.single_hidden_to_spks.weight.copy_(w2)
        sm.single_hidden_to_spks.bias.fill_(-gain * thr)


@pytest.fixture(scope="module")
def stream_feats() -> tuple[np.ndarray, np.ndarray]:
    """Two streams, 20 s and 13.4 s of 10 ms feature frames, zero-padded to one batch [2, n_mels, T]."""
    rng = np.random.default_rng(1234)
    lengths = np.array([2000, 1340], np.int64)
    feats = np.zeros((2, N_MELS, lengths.max()), np.float32)
    for b, n in enumerate(lengths):
        feats[b, :, :n] = _synthetic_conversation(rng, int(n))
    return feats, lengths


@pytest.fixture(scope="module")
def exported(tmp_path_factory, stream_feats):
    model = build_sortformer("tiny", seed=0)
    _spread_speaker_head(model, torch.from_numpy(stream_feats[0][:1]))
    out_dir: Path = tmp_path_factory.mktemp("sortformer")
    exported = export_sortformer(model, out_dir)
    graph = exported["graph"]
    info = {**exported["geometry"], "inputs": graph["inputs"], "outputs": graph["outputs"]}
    sess = ort.InferenceSession(str(out_dir / graph["file"]), providers=["CPUExecutionProvider"])
    return model, info, sess, out_dir


def _core_feeds(info: dict, spk_lens: list[int], fifo_lens: list[int], chunk_lens: list[int], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    d = info["emb_dim"]
    t_feat = (info["chunk_len"] + info["chunk_left_context"] + info["chunk_right_context"]) * info["subsampling_factor"]
    return {
        "chunk": rng.normal(-3.0, 2.0, (2, t_feat, info["n_mels"])).astype(np.float32),
        "chunk_lengths": np.array(chunk_lens, np.int64),
        "spkcache": rng.normal(0.0, 1.0, (2, info["spkcache_len"], d)).astype(np.float32),
        "spkcache_lengths": np.array(spk_lens, np.int64),
        "fifo": rng.normal(0.0, 1.0, (2, info["fifo_len"], d)).astype(np.float32),
        "fifo_lengths": np.array(fifo_lens, np.int64),
    }


CACHE_CASES = {
    "empty": ([0, 0], [0, 0], [80, 72]),
    "partial": ([5, 17], [24, 3], [80, 45]),
    "full": ([24, 24], [24, 24], [80, 80]),
    "mixed": ([0, 24], [24, 0], [72, 80]),
    "ended_stream": ([24, 24], [24, 11], [80, 0]),  # an empty chunk: the stream has no audio left
}


def test_export_describes_graph_and_streaming_geometry(exported) -> None:
    _, info, sess, out_dir = exported
    assert [p.name for p in out_dir.iterdir()] == [ONNX_FILE]
    assert [i["name"] for i in info["inputs"]] == list(INPUT_NAMES) == [i.name for i in sess.get_inputs()]
    assert [o["name"] for o in info["outputs"]] == [o.name for o in sess.get_outputs()]
    assert info["inputs"][0] == {"name": "chunk", "dtype": "float32", "shape": [-1, -1, N_MELS]}
    assert info["outputs"][0]["shape"] == [-1, -1, 4]
    params = SortformerParams.from_dict(info)
    assert (params.spkcache_len, params.fifo_len, params.chunk_len, params.n_spk) == (24, 24, 8, 4)
    assert params.subsampling_factor == 8 and math.isclose(params.frame_len_s, 0.08)
    assert info["preprocessor"]["features"] == N_MELS and info["preprocessor"]["window_stride"] == 0.01


@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_core_graph_matches_nemo_with_empty_partial_and_full_caches(exported, case: str) -> None:
    model, info, sess, _ = exported
    feeds = _core_feeds(info, *CACHE_CASES[case], seed=len(case))
    with torch.no_grad():
        ref = model.forward_for_export(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))
        core = SortformerCore(model)(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))
    got = sess.run(None, feeds)
    ref_preds, ref_embs, ref_lens = (t.numpy() for t in ref)
    n = ref_preds.shape[1]  # NeMo's output is max(total length) long; ours is S+F+T with a zero tail
    for preds in (core[0].numpy(), got[0]):
        assert np.abs(preds[:, :n] - ref_preds).max() <= TOL
        assert not preds[:, n:].any()
    for embs in (core[1].numpy(), got[1]):
        assert np.abs(embs - ref_embs).max() <= TOL
    np.testing.assert_array_equal(got[2], ref_lens)
    # Frames past each stream's total length are zero; the valid ones are real predictions.
    total = feeds["spkcache_lengths"] + feeds["fifo_lengths"] + ref_lens
    for b in range(2):
        assert not got[0][b, total[b] :].any() and got[0][b, : total[b]].min() > 0


def _nemo_stream(model, feats: np.ndarray, lengths: np.ndarray):
    """NeMo's own loop: streaming_feat_loader + forward_streaming_step (async update). Counts compressions."""
    sm = model.sortformer_modules
    calls = []
    original = sm._compress_spkcache

    def counting(emb_seq, preds, mean_sil_emb, permute_spk=False):
        calls.append(emb_seq.shape[0])
        return original(emb_seq, preds, mean_sil_emb, permute_spk)

    sm._compress_spkcache = counting
    try:
        state = sm.init_streaming_state(batch_size=feats.shape[0], async_streaming=True)
        total = torch.zeros((feats.shape[0], 0, sm.n_spk))
        chunk_preds = []
        loader = sm.streaming_feat_loader(
            torch.from_numpy(feats), torch.from_numpy(lengths), torch.zeros(len(lengths), dtype=torch.long)
        )
        with torch.no_grad():
            for _, chunk, chunk_len, left, right in loader:
                n_before = total.shape[1]
                state, total = model.forward_streaming_step(
                    processed_signal=chunk,
                    processed_signal_length=chunk_len,
                    streaming_state=state,
                    total_preds=total,
                    left_offset=left,
                    right_offset=right,
                )
                chunk_preds.append(total[:, n_before:].numpy())
    finally:
        del sm._compress_spkcache
    return state, chunk_preds, calls


def _onnx_stream(sess, params: SortformerParams, feats: np.ndarray, lengths: np.ndarray):
    state = init_state(params, feats.shape[0])
    chunk_preds = []
    for chunk, chunk_len, lc, rc in iter_feature_chunks(params, feats, lengths):
        preds, embs, emb_lens = sess.run(None, core_inputs(state, chunk, chunk_len))
        state, cp = streaming_update(params, state, embs, emb_lens, preds, lc, rc)
        chunk_preds.append(cp)
    return state, chunk_preds


def test_streaming_loop_matches_nemo_forward_streaming_step_through_cache_compressions(exported, stream_feats) -> None:
    model, info, sess, _ = exported
    feats, lengths = stream_feats
    params = SortformerParams.from_dict(info)
    ref_state, ref_chunks, compress_calls = _nemo_stream(model, feats, lengths)
    state, chunks = _onnx_stream(sess, params, feats, lengths)

    # The stream really exercised the cache: compressed many times, with speech, silence and placeholders.
    assert len(compress_calls) >= 15 and sum(compress_calls) >= 25
    assert (state.n_sil_frames > 0).all()
    for b in range(2):
        active = (state.spkcache_preds[b] > 0.5).any(axis=0)
        assert active.sum() >= 2  # frames of several speakers kept
        assert (state.spkcache_preds[b].sum(axis=1) == 0).any()  # silence / unused slots

    assert len(chunks) == len(ref_chunks) == math.ceil(feats.shape[2] / (params.chunk_len * 8))
    worst = max(np.abs(c - r).max() for c, r in zip(chunks, ref_chunks, strict=True))
    assert worst <= TOL
    np.testing.assert_array_equal(state.spkcache_lengths, ref_state.spkcache_lengths.numpy())
    np.testing.assert_array_equal(state.fifo_lengths, ref_state.fifo_lengths.numpy())
    np.testing.assert_array_equal(state.n_sil_frames, ref_state.n_sil_frames.numpy())
    for name in ("spkcache", "spkcache_preds", "fifo", "fifo_preds", "mean_sil_emb"):
        ours, ref = getattr(state, name), getattr(ref_state, name).numpy()
        assert ours.shape == ref.shape, name
        assert np.abs(ours - ref).max() <= TOL, name


def test_numpy_update_matches_nemo_streaming_update_async_on_identical_predictions(exported, stream_feats) -> None:
    """The update alone, fed NeMo's own core outputs, reproduces NeMo's state at every step."""
    model, info, _, _ = exported
    feats, lengths = stream_feats
    params = SortformerParams.from_dict(info)
    sm = model.sortformer_modules
    ref = sm.init_streaming_state(batch_size=2, async_streaming=True)
    state = init_state(params, 2)
    worst = 0.0
    with torch.no_grad():
        for chunk, chunk_len, lc, rc in iter_feature_chunks(params, feats, lengths):
            feeds = core_inputs(state, chunk, chunk_len)
            preds, embs, emb_lens = (
                t.numpy() for t in model.forward_for_export(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))
            )
            ref, ref_cp = sm.streaming_update_async(
                ref, torch.from_numpy(embs), torch.from_numpy(emb_lens), torch.from_numpy(preds), lc, rc
            )
            state, cp = streaming_update(params, state, embs, emb_lens, preds, lc, rc)
            worst = max(worst, np.abs(cp - ref_cp.numpy()).max())
            for name in ("spkcache", "spkcache_preds", "fifo", "fifo_preds", "mean_sil_emb"):
                worst = max(worst, np.abs(getattr(state, name) - getattr(ref, name).numpy()).max())
            np.testing.assert_array_equal(state.spkcache_lengths, ref.spkcache_lengths.numpy())
            np.testing.assert_array_equal(state.fifo_lengths, ref.fifo_lengths.numpy())
    assert worst <= 1e-6


def test_per_stream_states_gather_into_a_batch_and_split_back(exported, stream_feats) -> None:
    """Serving keeps one state per stream: stacking and selecting rows round-trips exactly."""
    _, info, sess, _ = exported
    feats, lengths = stream_feats
    state, _ = _onnx_stream(sess, SortformerParams.from_dict(info), feats[:, :, :400], np.minimum(lengths, 400))
    singles = [state.select([b]) for b in range(2)]
    again = SortformerStreamState.stack(singles[::-1]).select([1, 0])
    for f in fields(SortformerStreamState):
        np.testing.assert_array_equal(getattr(again, f.name), getattr(state, f.name))
    replace_rows(state, [0], singles[1])
    np.testing.assert_array_equal(state.spkcache[0], singles[1].spkcache[0])
