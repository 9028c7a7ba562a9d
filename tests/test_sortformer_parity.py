"""Parity of the exported Streaming Sortformer (ONNX core + numpy cache/FIFO update) with NeMo.

A tiny random-weight model (2+2 layers, speaker cache 24 / FIFO 24 frames) is built with a fixed seed
and exported once per module on the ASR encoder's chunk grid at right context 13, read off a tiny ASR
model (first chunk 105 feature frames, drop 0; later chunks 9 cached + 112 new frames, drop 2; 14
diarizer frames per chunk). The reference is what NeMo's multitalker streaming inference runs: the ASR
model's CacheAwareStreamingAudioBuffer chunks fed one stream at a time, unpadded, to
forward_streaming_step(drop_extra_pre_encoded=d). Inputs are synthetic mel-like features.

The streaming tests run both NeMo cache updates: "sync" (the model's async_streaming false, as released;
state from init_streaming_state(batch_size=1), the layout NeMo's multitalker inference uses; NeMo's
streaming_update) and "async" (async_streaming true; init_streaming_state(async_streaming=True);
streaming_update_async). The numpy update follows with sync=True / sync=False.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("nemo.collections.asr")

from mtasr.export import asr  # noqa: E402
from mtasr.export.sortformer import (  # noqa: E402
    INPUT_NAMES,
    ONNX_FILE,
    SortformerCore,
    build_sortformer,
    export_sortformer,
)
from mtasr.sortformer_state import (  # noqa: E402
    DROP_EXTRA_PRE_ENCODED,
    FIFO,
    SPKCACHE,
    SortformerParams,
    SortformerStreamState,
    core_inputs,
    init_state,
    replace_rows,
    streaming_update,
)

TOL = 1e-4
N_MELS = 128
RIGHT_CONTEXT = 13
STATE_ARRAYS = ("spkcache", "spkcache_preds", "fifo", "fifo_preds", "mean_sil_emb")
STATE_COUNTS = ("spkcache_lengths", "fifo_lengths", "n_sil_frames")
VARIANTS = ("sync", "async")


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
def asr_grid(tiny_tokenizer_dir):
    """The tiny ASR model at right context 13 (for NeMo's streaming buffer) and its streaming geometry."""
    model = asr.build_asr("tiny", tiny_tokenizer_dir, seed=0)
    asr.set_right_context(model, RIGHT_CONTEXT)
    return model, asr.streaming_geometry(model)


@pytest.fixture(scope="module")
def stream_feats() -> list[np.ndarray]:
    """Two streams, 20 s and 13 s of 10 ms feature frames, [n_mels, T] each."""
    rng = np.random.default_rng(1234)
    return [_synthetic_conversation(rng, n) for n in (2000, 1300)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, stream_feats, asr_grid):
    _, grid = asr_grid
    model = build_sortformer("tiny", seed=0)
    # As NeMo's multitalker streaming inference configures the diarizer: the chunks are the ASR's.
    sm = model.sortformer_modules
    sm.chunk_len = sm.chunk_left_context = sm.chunk_right_context = 0
    _spread_speaker_head(model, torch.from_numpy(stream_feats[0][None]))
    out_dir: Path = tmp_path_factory.mktemp("sortformer")
    exported = export_sortformer(
        model,
        out_dir,
        chunk_feature_frames=grid["chunk_feature_frames"][1] + grid["pre_encode_cache_frames"][1],
        drop_extra_pre_encoded=grid["drop_extra_pre_encoded"],
    )
    graph = exported["graph"]
    info = {**exported["geometry"], "inputs": graph["inputs"], "outputs": graph["outputs"]}
    sess = ort.InferenceSession(str(out_dir / graph["file"]), providers=["CPUExecutionProvider"])
    return model, info, sess, out_dir


def _asr_chunks(asr_model, feats: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """One stream [n_mels, T] through NeMo's CacheAwareStreamingAudioBuffer: [(chunk [T_chunk, n_mels], drop)]."""
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    buffer = CacheAwareStreamingAudioBuffer(asr_model, online_normalization=False)
    buffer.append_processed_signal(torch.from_numpy(feats)[None])
    drop = int(asr_model.encoder.streaming_cfg.drop_extra_pre_encoded)
    chunks = []
    for step, (chunk, length) in enumerate(buffer):
        assert int(length[0]) == chunk.shape[2]  # one stream alone: chunks are not padded
        chunks.append((chunk[0].T.numpy().copy(), 0 if step == 0 else drop))
    return chunks


def test_export_describes_graph_and_asr_chunk_geometry(exported, asr_grid) -> None:
    _, info, sess, out_dir = exported
    _, grid = asr_grid
    assert (grid["chunk_feature_frames"], grid["pre_encode_cache_frames"]) == ([105, 112], [0, 9])
    assert (grid["drop_extra_pre_encoded"], grid["encoder_frames_per_chunk"]) == (2, 14)
    assert [p.name for p in out_dir.iterdir()] == [ONNX_FILE]
    assert [i["name"] for i in info["inputs"]] == list(INPUT_NAMES) == [i.name for i in sess.get_inputs()]
    assert [o["name"] for o in info["outputs"]] == [o.name for o in sess.get_outputs()]
    assert info["inputs"][0] == {"name": "chunk", "dtype": "float32", "shape": [-1, 121, N_MELS]}
    assert info["inputs"][-1] == {"name": DROP_EXTRA_PRE_ENCODED, "dtype": "int64", "shape": [-1]}
    assert info["outputs"][0]["shape"] == [-1, -1, 4]
    params = SortformerParams.from_dict(info)
    assert (params.chunk_feature_frames, params.drop_extra_pre_encoded, params.chunk_frames) == (121, 2, 14)
    assert params.chunk_frames == grid["encoder_frames_per_chunk"]  # one diarizer frame per encoder frame
    assert (params.spkcache_len, params.fifo_len, params.n_spk) == (24, 24, 4)
    assert params.subsampling_factor == 8 and math.isclose(params.frame_len_s, 0.08)
    assert info["preprocessor"]["features"] == N_MELS and info["preprocessor"]["window_stride"] == 0.01


# Per row: speaker cache length, FIFO length, (chunk feature frames, drop). 105/drop 0 is a stream's first
# chunk, 121/drop 2 a later one, 29/drop 2 a short last chunk, 0 a stream with no audio left.
CORE_CASES = {
    "empty": ([0, 0], [0, 0], [(105, 0), (121, 2)]),
    "partial": ([5, 17], [24, 3], [(121, 2), (105, 0)]),
    "full": ([24, 24], [24, 24], [(121, 2), (121, 2)]),
    "mixed": ([0, 24], [24, 0], [(105, 0), (121, 2)]),
    "short_last_chunk": ([24, 24], [24, 11], [(121, 2), (29, 2)]),
    "ended_stream": ([24, 24], [24, 11], [(121, 2), (0, 2)]),
}


def _core_feeds(info: dict, spk_lens: list[int], fifo_lens: list[int], chunks: list[tuple[int, int]], seed: int):
    rng = np.random.default_rng(seed)
    d = info["emb_dim"]
    # The padding past each row's length is noise on purpose: the graph must not look at it.
    return {
        "chunk": rng.normal(-3.0, 2.0, (2, info["chunk_feature_frames"], info["n_mels"])).astype(np.float32),
        "chunk_lengths": np.array([n for n, _ in chunks], np.int64),
        "spkcache": rng.normal(0.0, 1.0, (2, info["spkcache_len"], d)).astype(np.float32),
        "spkcache_lengths": np.array(spk_lens, np.int64),
        "fifo": rng.normal(0.0, 1.0, (2, info["fifo_len"], d)).astype(np.float32),
        "fifo_lengths": np.array(fifo_lens, np.int64),
        DROP_EXTRA_PRE_ENCODED: np.array([drop for _, drop in chunks], np.int64),
    }


@contextmanager
def _nemo_variant(model, variant: str) -> Iterator[None]:
    """Run forward_streaming_step with the sync (as configured) or the async cache update."""
    saved = model.async_streaming
    model.async_streaming = variant == "async"
    try:
        yield
    finally:
        model.async_streaming = saved


def _nemo_init_state(model, variant: str):
    """NeMo's state of one stream: the sync layout as the multitalker inference makes it, or the async one."""
    sm = model.sortformer_modules
    if variant == "sync":
        return sm.init_streaming_state(batch_size=1)
    return sm.init_streaming_state(batch_size=1, async_streaming=True)


def _nemo_state_arrays(ref, params: SortformerParams) -> dict[str, np.ndarray | None]:
    """A NeMo state of one stream in our fixed-size layout (sync states are zero-padded, lengths from shapes).

    spkcache_preds is None for a sync state whose cache was never compressed (NeMo keeps none until then).
    """
    out = {name: getattr(ref, name).numpy() for name in ("mean_sil_emb", "n_sil_frames")}
    if ref.spkcache_lengths is not None:  # async layout
        for name in (*STATE_ARRAYS, "spkcache_lengths", "fifo_lengths"):
            out[name] = getattr(ref, name).numpy()
        return out

    def pad(t: torch.Tensor | None, n: int) -> np.ndarray | None:
        return None if t is None else np.pad(t.numpy(), ((0, 0), (0, n - t.shape[1]), (0, 0)))

    out.update(
        spkcache=pad(ref.spkcache, params.spkcache_len),
        spkcache_preds=pad(ref.spkcache_preds, params.spkcache_len),
        spkcache_lengths=np.array([ref.spkcache.shape[1]], np.int64),
        fifo=pad(ref.fifo, params.fifo_len),
        fifo_preds=pad(ref.fifo_preds, params.fifo_len),
        fifo_lengths=np.array([ref.fifo.shape[1]], np.int64),
    )
    return out


def _state_diff(state: SortformerStreamState, ref, params: SortformerParams) -> float:
    """Max abs diff of one stream's state from NeMo's; the lengths and silence count must be equal."""
    ref_arrays = _nemo_state_arrays(ref, params)
    for name in STATE_COUNTS:
        np.testing.assert_array_equal(getattr(state, name), ref_arrays[name], err_msg=name)
    worst = 0.0
    for name in STATE_ARRAYS:
        if ref_arrays[name] is None:  # sync, before the first compression
            assert name == "spkcache_preds" and not state.spkcache_compressed[0]
            continue
        ours = getattr(state, name)
        assert ours.shape == ref_arrays[name].shape, name
        worst = max(worst, float(np.abs(ours - ref_arrays[name]).max()))
    return worst


def _nemo_step_outputs(model, feeds: dict, b: int) -> dict:
    """forward_streaming_step on row b alone, unpadded: the predictions and chunk embeddings it updates with."""
    sm = model.sortformer_modules
    n, drop = int(feeds["chunk_lengths"][b]), int(feeds[DROP_EXTRA_PRE_ENCODED][b])
    if n == 0:  # NeMo cannot pre-encode zero frames; a masked chunk gives no frames (and nothing to drop)
        chunk, drop = torch.zeros(1, feeds["chunk"].shape[1], N_MELS), 0
    else:
        chunk = torch.from_numpy(feeds["chunk"][b : b + 1, :n])
    # The async layout takes the padded rows with lengths; per stream the model half of the step is
    # the same in both layouts (the sync one splices the same frames, unpadded).
    state = sm.init_streaming_state(batch_size=1, async_streaming=True)
    state.spkcache = torch.from_numpy(feeds["spkcache"][b : b + 1]).clone()
    state.spkcache_lengths = torch.from_numpy(feeds["spkcache_lengths"][b : b + 1]).clone()
    state.fifo = torch.from_numpy(feeds["fifo"][b : b + 1]).clone()
    state.fifo_lengths = torch.from_numpy(feeds["fifo_lengths"][b : b + 1]).clone()
    captured: dict = {}
    original = sm.streaming_update_async

    def capture(streaming_state, chunk, chunk_lengths, preds, lc=0, rc=0):
        captured.update(preds=preds.numpy().copy(), embs=chunk.numpy().copy(), lengths=chunk_lengths.numpy().copy())
        captured.update(lc=lc, rc=rc)
        return original(streaming_state, chunk, chunk_lengths, preds, lc, rc)

    sm.streaming_update_async = capture
    try:
        with torch.no_grad(), _nemo_variant(model, "async"):
            model.forward_streaming_step(
                processed_signal=chunk,
                processed_signal_length=torch.tensor([n]),
                streaming_state=state,
                total_preds=torch.zeros(1, 0, sm.n_spk),
                drop_extra_pre_encoded=drop,
            )
    finally:
        del sm.streaming_update_async
    assert captured["lc"] == captured["rc"] == 0
    return captured


@pytest.mark.parametrize("case", list(CORE_CASES))
def test_core_graph_matches_nemo_forward_streaming_step_per_row(exported, case: str) -> None:
    """First, later, short and empty chunks in one call: each row as NeMo computes that stream alone, unpadded."""
    model, info, sess, _ = exported
    feeds = _core_feeds(info, *CORE_CASES[case], seed=len(case))
    with torch.no_grad():
        core = SortformerCore(model, info["drop_extra_pre_encoded"])(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))
    outputs = {"torch": [t.numpy() for t in core], "onnx": sess.run(None, feeds)}
    worst = 0.0
    for b in range(2):
        ref = _nemo_step_outputs(model, feeds, b)
        n_chunk = int(ref["lengths"][0])
        total = int(feeds["spkcache_lengths"][b] + feeds["fifo_lengths"][b]) + n_chunk
        assert ref["preds"].shape[1] == total
        for preds, embs, lengths in outputs.values():
            assert preds.shape[1] == info["spkcache_len"] + info["fifo_len"] + info["chunk_frames"]
            assert embs.shape[1] == info["chunk_frames"] and int(lengths[b]) == n_chunk
            worst = max(worst, np.abs(preds[b, :total] - ref["preds"][0]).max())
            assert not preds[b, total:].any()
            if n_chunk:
                worst = max(worst, np.abs(embs[b, :n_chunk] - ref["embs"][0, :n_chunk]).max())
        assert outputs["onnx"][0][b, :total].min() > 0  # the valid frames are real predictions
    print(f"core parity ({case}): max abs diff {worst:.2e}")
    assert worst <= TOL


# Stream 1 starts 3 chunks after stream 0: its first chunk (drop 0) shares a call with stream 0's later ones.
STREAM_STARTS = (0, 3)


def _grid_calls(params: SortformerParams, stream_chunks: list, starts=STREAM_STARTS, n_steps: int | None = None):
    """Per step, one batch of the streams that have a chunk then: (rows, feats, lengths, drops), rows right-padded."""
    end = max(start + len(chunks) for start, chunks in zip(starts, stream_chunks, strict=True))
    for step in range(end if n_steps is None else n_steps):
        rows = [s for s, start in enumerate(starts) if start <= step < start + len(stream_chunks[s])]
        feats = np.zeros((len(rows), params.chunk_feature_frames, params.n_mels), np.float32)
        lengths, drops = np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
        for i, s in enumerate(rows):
            chunk, drop = stream_chunks[s][step - starts[s]]
            feats[i, : len(chunk)], lengths[i], drops[i] = chunk, len(chunk), drop
        if rows:
            yield rows, feats, lengths, drops


def _onnx_streams(sess, params: SortformerParams, stream_chunks: list, n_steps: int | None = None, trim: bool = True):
    """ONNX core + numpy update; one state per stream, gathered into a batch per call and split back.

    The update is the one the params name (sync unless params.async_streaming); `trim` feeds the cache
    and FIFO as wide as the batch's longest row (as the in-process stages do) instead of at full size.
    """
    states = [init_state(params, 1) for _ in stream_chunks]
    chunk_preds: list[list[np.ndarray]] = [[] for _ in stream_chunks]
    call_drops = []
    for rows, feats, lengths, drops in _grid_calls(params, stream_chunks, n_steps=n_steps):
        batch = SortformerStreamState.stack([states[s] for s in rows])
        preds, embs, emb_lengths = sess.run(None, core_inputs(batch, feats, lengths, drops, trim=trim))
        batch, cp = streaming_update(params, batch, embs, emb_lengths, preds, sync=not params.async_streaming)
        for i, s in enumerate(rows):
            states[s] = batch.select([i])
            chunk_preds[s].append(cp[i, : emb_lengths[i]])
        call_drops.append(set(drops.tolist()))
    return states, chunk_preds, call_drops


def _nemo_stream(model, chunks: list[tuple[np.ndarray, int]], variant: str):
    """One stream alone through NeMo's forward_streaming_step (the variant's update). Counts compressions."""
    sm = model.sortformer_modules
    calls = []
    original = sm._compress_spkcache

    def counting(emb_seq, preds, mean_sil_emb, permute_spk=False):
        calls.append(emb_seq.shape[0])
        return original(emb_seq, preds, mean_sil_emb, permute_spk)

    sm._compress_spkcache = counting
    try:
        state = _nemo_init_state(model, variant)
        total = torch.zeros((1, 0, sm.n_spk))
        chunk_preds = []
        with torch.no_grad(), _nemo_variant(model, variant):
            for feats, drop in chunks:
                n_before = total.shape[1]
                state, total = model.forward_streaming_step(
                    processed_signal=torch.from_numpy(feats)[None],
                    processed_signal_length=torch.tensor([feats.shape[0]]),
                    streaming_state=state,
                    total_preds=total,
                    drop_extra_pre_encoded=drop,
                )
                chunk_preds.append(total[0, n_before:].numpy())
    finally:
        del sm._compress_spkcache
    return state, chunk_preds, calls


def _variant_params(info: dict, variant: str) -> SortformerParams:
    params = SortformerParams.from_dict(info)
    assert params.async_streaming is False  # the export's config, as released
    return replace(params, async_streaming=variant == "async")


def _other(variant: str) -> str:
    return "async" if variant == "sync" else "sync"


@pytest.mark.parametrize("variant", VARIANTS)
def test_streams_on_the_asr_chunk_grid_match_nemo_forward_streaming_step_through_cache_compressions(
    exported, asr_grid, stream_feats, variant: str
) -> None:
    model, info, sess, _ = exported
    params = _variant_params(info, variant)
    stream_chunks = [_asr_chunks(asr_grid[0], feats) for feats in stream_feats]
    for chunks in stream_chunks:  # NeMo's grid: 105-frame first chunk, 9+112 later, a shorter last one
        widths = [len(c) for c, _ in chunks]
        assert widths[0] == 105 and set(widths[1:-1]) == {121} and 0 < widths[-1] < 121
        assert [d for _, d in chunks] == [0] + [2] * (len(chunks) - 1)

    states, chunk_preds, call_drops = _onnx_streams(sess, params, stream_chunks)
    assert {0, 2} in call_drops  # a stream's first chunk was batched with another's later chunk
    # The same streams with the other update: it must not pass for this variant's reference.
    other_params = replace(params, async_streaming=not params.async_streaming)
    _, other_chunk_preds, _ = _onnx_streams(sess, other_params, stream_chunks)

    worst = other_worst = 0.0
    n_compressions = []
    for s, chunks in enumerate(stream_chunks):
        ref_state, ref_preds, calls = _nemo_stream(model, chunks, variant)
        n_compressions.append(len(calls))
        assert [len(p) for p in chunk_preds[s]] == [len(p) for p in ref_preds]
        assert {len(p) for p in ref_preds[:-1]} == {14} and 0 < len(ref_preds[-1]) < 14
        worst = max(worst, max(np.abs(c - r).max() for c, r in zip(chunk_preds[s], ref_preds, strict=True)))
        other_worst = max(
            other_worst, max(np.abs(c - r).max() for c, r in zip(other_chunk_preds[s], ref_preds, strict=True))
        )
        # The whole state after the last chunk too (NeMo alone sizes the FIFO pop by the true chunk length).
        state = states[s]
        worst = max(worst, _state_diff(state, ref_state, params))
        # The stream really exercised the cache: speech of several speakers kept, silence, placeholders.
        assert state.spkcache_compressed[0]
        assert state.n_sil_frames[0] > 0
        assert (state.spkcache_preds[0] > 0.5).any(axis=0).sum() >= 2
        assert (state.spkcache_preds[0].sum(axis=1) == 0).any()
    assert min(n_compressions) >= 5 and sum(n_compressions) >= 15, n_compressions
    print(
        f"streaming parity ({variant}): max abs diff {worst:.2e}, compressions per stream {n_compressions}; "
        f"the {_other(variant)} update differs by {other_worst:.2e}"
    )
    assert worst <= TOL
    assert other_worst > 100 * TOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_numpy_update_matches_nemo_streaming_update_on_identical_predictions(
    exported, asr_grid, stream_feats, variant: str
) -> None:
    """The update alone, fed the same core outputs, reproduces NeMo's update of each stream at every step.

    sync: NeMo's streaming_update on the sync-layout state; async: streaming_update_async. At each stream's
    first compression the other variant's update, on the same inputs, must differ from NeMo's.
    """
    model, info, _, _ = exported
    params = _variant_params(info, variant)
    sync = variant == "sync"
    sm = model.sortformer_modules
    core = SortformerCore(model, params.drop_extra_pre_encoded)
    stream_chunks = [_asr_chunks(asr_grid[0], feats) for feats in stream_feats]
    states = [init_state(params, 1) for _ in stream_chunks]
    refs = [_nemo_init_state(model, variant) for _ in stream_chunks]
    worst = 0.0
    first_compression_gaps = []  # per stream: the other update's distance from NeMo's at the first compression
    with torch.no_grad():
        for rows, feats, lengths, drops in _grid_calls(params, stream_chunks):
            batch = SortformerStreamState.stack([states[s] for s in rows])
            feeds = core_inputs(batch, feats, lengths, drops)
            preds, embs, emb_lens = (t.numpy() for t in core(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES)))
            new_batch, cp = streaming_update(params, batch, embs, emb_lens, preds, sync=sync)
            other, _ = streaming_update(params, batch, embs, emb_lens, preds, sync=not sync)
            for i, s in enumerate(rows):
                first_compression = bool(new_batch.spkcache_compressed[i]) and not batch.spkcache_compressed[i]
                states[s] = new_batch.select([i])
                n = int(emb_lens[i])  # NeMo's stream alone: an unpadded chunk of n frames
                chunk, stream_preds = torch.from_numpy(embs[i : i + 1, :n]), torch.from_numpy(preds[i : i + 1])
                if sync:
                    refs[s], ref_cp = sm.streaming_update(refs[s], chunk, stream_preds, 0, 0)
                else:
                    refs[s], ref_cp = sm.streaming_update_async(refs[s], chunk, torch.tensor([n]), stream_preds, 0, 0)
                worst = max(worst, np.abs(cp[i, :n] - ref_cp[0].numpy()).max(), np.abs(cp[i, n:]).max(initial=0))
                worst = max(worst, _state_diff(states[s], refs[s], params))
                if first_compression:
                    ref_arrays = _nemo_state_arrays(refs[s], params)
                    gap = max(
                        np.abs(other.spkcache[i] - ref_arrays["spkcache"][0]).max(),
                        np.abs(other.spkcache_preds[i] - ref_arrays["spkcache_preds"][0]).max(),
                    )
                    first_compression_gaps.append(float(gap))
    print(
        f"update parity ({variant}): max abs diff {worst:.2e}; the {_other(variant)} update at the first "
        f"compressions differs by {first_compression_gaps}"
    )
    assert worst <= 1e-6
    assert len(first_compression_gaps) == len(stream_chunks) and min(first_compression_gaps) > 1e-2


def test_cache_and_fifo_cut_to_the_longest_row_change_no_prediction(exported, asr_grid, stream_feats) -> None:
    """What the in-process stages feed (cache and FIFO as wide as the batch's longest row) and what Triton graph
    models and TensorRT profiles take (full sizes) give the same predictions and states, compressions included."""
    _, info, sess, _ = exported
    params = SortformerParams.from_dict(info)
    stream_chunks = [_asr_chunks(asr_grid[0], feats) for feats in stream_feats]
    cut_states, cut_preds, _ = _onnx_streams(sess, params, stream_chunks, trim=True)
    full_states, full_preds, _ = _onnx_streams(sess, params, stream_chunks, trim=False)
    # Mid-stream, before the cache fills: the feeds are as wide as the longest row, not the full sizes.
    early, _, _ = _onnx_streams(sess, params, stream_chunks, n_steps=1)
    batch = SortformerStreamState.stack([init_state(params, 1), early[0]])
    feats = np.zeros((2, params.chunk_feature_frames, params.n_mels), np.float32)
    feeds = core_inputs(batch, feats, params.chunk_feature_frames, 2, trim=True)
    widths = feeds[SPKCACHE].shape[1], feeds[FIFO].shape[1]
    assert widths == (max(1, early[0].spkcache_lengths[0]), max(1, early[0].fifo_lengths[0]))
    assert sum(widths) < params.spkcache_len + params.fifo_len
    for s in range(len(stream_chunks)):
        for cut, full in zip(cut_preds[s], full_preds[s], strict=True):
            np.testing.assert_allclose(cut, full, atol=TOL)
        for f in fields(SortformerStreamState):
            np.testing.assert_allclose(getattr(cut_states[s], f.name), getattr(full_states[s], f.name), atol=TOL)


def test_per_stream_states_gather_into_a_batch_and_split_back(exported, asr_grid, stream_feats) -> None:
    """Serving keeps one state per stream: stacking and selecting rows round-trips exactly."""
    _, info, sess, _ = exported
    params = SortformerParams.from_dict(info)
    stream_chunks = [_asr_chunks(asr_grid[0], feats[:, :700]) for feats in stream_feats]
    singles, _, _ = _onnx_streams(sess, params, stream_chunks)
    state = SortformerStreamState.stack(singles)
    again = SortformerStreamState.stack(singles[::-1]).select([1, 0])
    for f in fields(SortformerStreamState):
        np.testing.assert_array_equal(getattr(again, f.name), getattr(state, f.name))
    replace_rows(state, [0], singles[1])
    np.testing.assert_array_equal(state.spkcache[0], singles[1].spkcache[0])


def test_tensorrt_profile_spans_the_batch_at_the_graph_chunk_width(exported, asr_grid) -> None:
    """The diarizer's engine profile: 1..N rows, every row at the ASR's later-chunk width, a drop per row."""
    from mtasr.export.onnx_io import dim_names
    from mtasr.export.pipeline import _serving_dims
    from mtasr.export.sortformer import DYNAMIC_AXES
    from mtasr.export.tensorrt import engine_profiles

    _, info, _, _ = exported
    manifest = {
        "speaker_slots": 4,
        "deployment": {"max_streams_per_batch": 8},
        "asr": {"streaming": asr_grid[1]},
        "diarizer": {"geometry": info},
        "graphs": {"diarizer": {"inputs": info["inputs"], "dim_names": dim_names(DYNAMIC_AXES)}},
    }
    _serving_dims(manifest)
    profile = engine_profiles(manifest)["diarizer"]
    assert list(profile) == list(INPUT_NAMES)
    assert profile["chunk"] == {"min": [1, 121, N_MELS], "opt": [4, 121, N_MELS], "max": [8, 121, N_MELS]}
    for name in ("chunk_lengths", "spkcache_lengths", "fifo_lengths", DROP_EXTRA_PRE_ENCODED):
        assert profile[name] == {"min": [1], "opt": [4], "max": [8]}, name
    assert profile["spkcache"]["max"] == profile["fifo"]["max"] == [8, 24, info["emb_dim"]]
