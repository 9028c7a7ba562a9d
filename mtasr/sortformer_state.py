"""Streaming Sortformer state between chunks: speaker cache + FIFO update, in numpy.

This reproduces, per stream, NeMo's ``SortformerModules.streaming_update`` (``sync=True``) or
``streaming_update_async`` (``sync=False``), whichever ``SortformerEncLabelModel.forward_streaming_step``
runs for the model's ``async_streaming`` setting, including the speaker cache compression (silence
profile, log-score, boosting, top-k frame selection). NeMo's multitalker streaming inference
initialises the diarizer state in the sync layout (``init_streaming_state(batch_size)``), so it runs
only with ``async_streaming`` false (the released checkpoints) and the sync update; callers pass
``sync=not params.async_streaming``.

For one stream fed unpadded chunks with no left/right offsets (how NeMo's multitalker inference feeds
the diarizer) the two NeMo updates differ only in the speaker-cache predictions used by the first
compression. Async keeps, for every cached frame, the predictions it had when it left the FIFO (its
"first compression" branch is dead code: the predictions start at 0, never negative). Sync keeps no
cache predictions until the cache first overflows; then it takes this step's predictions over the
frames already in the cache, followed by the popped FIFO frames' predictions, and compresses; from
then on popped predictions are appended as in async. Everything else (what enters and leaves the
FIFO, the pop length, FIFO predictions, silence profile, compression) is the same.

Chunks are the ASR encoder's (NeMo's multitalker streaming inference feeds the diarizer the ASR
model's ``CacheAwareStreamingAudioBuffer`` chunks with ``drop_extra_pre_encoded`` and no left/right
offsets): every row is ``chunk_feature_frames`` wide (the later-chunk length incl. the pre-encode
cache); a stream's first chunk (no pre-encode cache, drop 0) and its last chunk are right-padded, their
true widths in the lengths. A caller loops::

    state = init_state(params, batch_size)
    for feats, feat_lengths, drops in chunks:  # [B, chunk_feature_frames, n_mels], [B], [B]
        preds, embs, emb_lengths = session.run(None, core_inputs(state, feats, feat_lengths, drops))
        state, chunk_preds = streaming_update(
            params, state, embs, emb_lengths, preds, sync=not params.async_streaming
        )
        # stream b's new frames: chunk_preds[b, : emb_lengths[b]]

The state arrays are fixed size (``spkcache_len`` / ``fifo_len`` frames) with per-stream lengths,
which is the layout the exported core graph takes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

# Tensor names of the exported core graph (export/sortformer.py uses these).
CHUNK = "chunk"
CHUNK_LENGTHS = "chunk_lengths"
SPKCACHE = "spkcache"
SPKCACHE_LENGTHS = "spkcache_lengths"
FIFO = "fifo"
FIFO_LENGTHS = "fifo_lengths"
SPKCACHE_FIFO_CHUNK_PREDS = "spkcache_fifo_chunk_preds"
CHUNK_PRE_ENCODE_EMBS = "chunk_pre_encode_embs"
CHUNK_PRE_ENCODE_LENGTHS = "chunk_pre_encode_lengths"
DROP_EXTRA_PRE_ENCODED = "drop_extra_pre_encoded"


@dataclass(frozen=True)
class SortformerParams:
    """Streaming geometry and cache-update parameters (from the export's geometry dict)."""

    spkcache_len: int
    fifo_len: int
    spkcache_update_period: int
    n_spk: int
    emb_dim: int
    subsampling_factor: int
    n_mels: int
    chunk_feature_frames: int  # feature frames of every row of a core call (later ASR chunk incl. pre-encode cache)
    drop_extra_pre_encoded: int  # pre-encoded frames a later chunk drops (its pre-encode cache); 0 on a first chunk
    chunk_frames: int  # pre-encoded frames per row after the drop: the most a chunk adds
    spkcache_sil_frames_per_spk: int = 3
    pred_score_threshold: float = 0.25
    max_index: int = 99999
    scores_boost_latest: float = 0.05
    sil_threshold: float = 0.2
    strong_boost_rate: float = 0.75
    weak_boost_rate: float = 1.5
    min_pos_scores_rate: float = 0.5
    frame_len_s: float = 0.08
    async_streaming: bool = False  # the model's cfg.async_streaming: which NeMo update to reproduce

    @classmethod
    def from_dict(cls, geometry: Mapping[str, Any]) -> SortformerParams:
        """Build from the export's geometry dict; keys that are not parameters are ignored.

        ``async_streaming`` is False when the geometry does not record it (the released checkpoints'
        setting, and the one NeMo's multitalker streaming inference runs with).
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in geometry.items() if k in names})


@dataclass
class SortformerStreamState:
    """Per-batch streaming state; row b belongs to stream b. Arrays past a stream's length are zero."""

    spkcache: np.ndarray  # [B, spkcache_len, D] float32
    spkcache_lengths: np.ndarray  # [B] int64
    spkcache_preds: np.ndarray  # [B, spkcache_len, n_spk] float32
    fifo: np.ndarray  # [B, fifo_len, D] float32
    fifo_lengths: np.ndarray  # [B] int64
    fifo_preds: np.ndarray  # [B, fifo_len, n_spk] float32
    mean_sil_emb: np.ndarray  # [B, D] float32
    n_sil_frames: np.ndarray  # [B] int64
    spkcache_compressed: np.ndarray  # [B] bool: the speaker cache has been compressed at least once

    @property
    def batch_size(self) -> int:
        return int(self.spkcache.shape[0])

    def select(self, rows: np.ndarray | list[int]) -> SortformerStreamState:
        """The state of some streams (e.g. to gather a batch out of per-stream states)."""
        idx = np.asarray(rows, dtype=np.int64)
        return SortformerStreamState(**{f.name: getattr(self, f.name)[idx].copy() for f in fields(self)})

    @staticmethod
    def stack(states: list[SortformerStreamState]) -> SortformerStreamState:
        """Concatenate states along the batch axis."""
        return SortformerStreamState(
            **{f.name: np.concatenate([getattr(s, f.name) for s in states]) for f in fields(SortformerStreamState)}
        )


def init_state(params: SortformerParams, batch_size: int) -> SortformerStreamState:
    """Empty cache and FIFO, nothing compressed yet (NeMo's ``init_streaming_state``, either layout)."""
    b, d, n = batch_size, params.emb_dim, params.n_spk
    return SortformerStreamState(
        spkcache=np.zeros((b, params.spkcache_len, d), np.float32),
        spkcache_lengths=np.zeros(b, np.int64),
        spkcache_preds=np.zeros((b, params.spkcache_len, n), np.float32),
        fifo=np.zeros((b, params.fifo_len, d), np.float32),
        fifo_lengths=np.zeros(b, np.int64),
        fifo_preds=np.zeros((b, params.fifo_len, n), np.float32),
        mean_sil_emb=np.zeros((b, d), np.float32),
        n_sil_frames=np.zeros(b, np.int64),
        spkcache_compressed=np.zeros(b, np.bool_),
    )


# What one more graph call costs, in frames of one row encoded: the default diarizer on one thread took 2.1 ms
# for one row with an empty cache and FIFO and ~0.08 ms per further frame of a row, batched or not.
CALL_COST_FRAMES = 16


def width_batches(
    spkcache_lengths: np.ndarray, fifo_lengths: np.ndarray, chunk_frames: int, call_cost_frames: int = CALL_COST_FRAMES
) -> list[np.ndarray]:
    """Rows of a batch grouped into graph calls of similar speaker-cache and FIFO fill.

    Fed with `core_inputs(trim=True)`, a call encodes every row as wide as its widest one: a new stream batched
    with a 15-second-old one pays the old one's width, and the graph's cost grows with the frames it encodes,
    not with the calls. The rows, sorted by fill, are cut where that minimises the frames encoded plus
    `call_cost_frames` per call (exact: dynamic programming over the sorted rows). Each row's outputs are
    those of any other batching (padding is masked); returns the row indices of each call.
    """
    spk, fifo = np.asarray(spkcache_lengths), np.asarray(fifo_lengths)
    order = np.argsort(spk + fifo, kind="stable")
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        widest_spk = widest_fifo = 0
        for i in range(j, 0, -1):  # the last call holds sorted rows i-1 .. j-1
            widest_spk, widest_fifo = max(widest_spk, spk[order[i - 1]]), max(widest_fifo, fifo[order[i - 1]])
            cost = best[i - 1] + (j - i + 1) * (widest_spk + widest_fifo + chunk_frames) + call_cost_frames
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    calls = []
    j = n
    while j > 0:
        calls.append(order[cut[j] : j])
        j = cut[j]
    return calls[::-1]


def core_inputs(
    state: SortformerStreamState,
    chunk_feats: np.ndarray,
    chunk_lengths: int | np.ndarray,
    drop_extra_pre_encoded: int | np.ndarray,
    trim: bool = False,
) -> dict[str, np.ndarray]:
    """ORT feeds for the core graph.

        chunk_feats [B, chunk_feature_frames, n_mels] (time-major, rows right-padded), chunk_lengths [B] their
        true widths, drop_extra_pre_encoded [B]: pre-encoded frames to drop per row (0 on a stream's first
        chunk, the ASR's ``drop_extra_pre_encoded`` on later ones). Scalars are broadcast to every row.
    trim: feed the speaker cache and FIFO only as wide as their longest row (a graph with dynamic cache
    widths, as ONNX Runtime runs it), not at full size (what Triton graph models and TensorRT profiles take).
    The predictions of valid frames are the same; a short stream's chunks cost a fraction.
    """
    b = state.batch_size
    feats = np.ascontiguousarray(chunk_feats, dtype=np.float32)
    if feats.ndim != 3 or feats.shape[0] != b:
        raise ValueError(f"chunk features must be [B={b}, T, n_mels], got {feats.shape}")
    lengths = np.broadcast_to(np.asarray(chunk_lengths, dtype=np.int64), (b,)).copy()
    drops = np.broadcast_to(np.asarray(drop_extra_pre_encoded, dtype=np.int64), (b,)).copy()
    spkcache, fifo = state.spkcache, state.fifo
    if trim:
        # The graph encodes [spkcache | fifo | chunk] at the widths it is fed, masking each row's padding:
        # cut both to the longest row (NeMo's batch does the same) instead of the full cache and FIFO sizes.
        spkcache = spkcache[:, : max(1, int(state.spkcache_lengths.max(initial=0)))]
        fifo = fifo[:, : max(1, int(state.fifo_lengths.max(initial=0)))]
    return {
        CHUNK: feats,
        CHUNK_LENGTHS: lengths,
        SPKCACHE: np.ascontiguousarray(spkcache),
        SPKCACHE_LENGTHS: state.spkcache_lengths,
        FIFO: np.ascontiguousarray(fifo),
        FIFO_LENGTHS: state.fifo_lengths,
        DROP_EXTRA_PRE_ENCODED: drops,
    }


def streaming_update(
    params: SortformerParams,
    state: SortformerStreamState,
    chunk_embs: np.ndarray,
    chunk_lengths: np.ndarray,
    preds: np.ndarray,
    *,
    sync: bool = False,
) -> tuple[SortformerStreamState, np.ndarray]:
    """Move this chunk into the FIFO, FIFO overflow into the speaker cache, compress the cache if full.

    chunk_embs [B, T, D] and chunk_lengths [B] are the core graph's pre-encode outputs (after the drop;
    row b's valid frames are the first chunk_lengths[b]); preds [B, >= S+F+T, n_spk] its predictions over
    [spkcache | fifo | chunk] (per-stream lengths, zero tail). Returns the new state (the input state is
    not modified) and this chunk's predictions [B, T, n_spk]: row b's first chunk_lengths[b] frames are
    its new frames, the rest zero.

    sync: reproduce NeMo's ``streaming_update`` (``async_streaming`` false; pass
    ``sync=not params.async_streaming``), else ``streaming_update_async``. They differ only at a row's
    first compression: sync compresses the cached frames with this step's predictions over them
    (``preds[b, :spkcache_len]``), async with the predictions they had when they left the FIFO.

    The whole chunk is used (NeMo's lc = rc = 0). How much leaves the FIFO depends on each row's own chunk
    length, as in NeMo for one stream fed unpadded chunks; NeMo's batched update uses the padded width
    instead, which differs only after a short (last) chunk and never in the predictions.
    """
    p = params
    b_size, max_chunk, emb_dim = chunk_embs.shape
    n_spk = preds.shape[2]
    max_cache, max_fifo = state.spkcache.shape[1], state.fifo.shape[1]
    max_pop = min(max(p.spkcache_update_period, max_chunk), max_chunk + max_fifo)

    chunk_lens = np.clip(np.asarray(chunk_lengths, dtype=np.int64), 0, max_chunk)
    cache_lens = state.spkcache_lengths.astype(np.int64).copy()
    fifo_lens = state.fifo_lengths.astype(np.int64).copy()
    mean_sil = state.mean_sil_emb.astype(np.float32).copy()
    n_sil = state.n_sil_frames.astype(np.int64).copy()
    compressed = state.spkcache_compressed.astype(np.bool_).copy()

    chunk_preds = np.zeros((b_size, max_chunk, n_spk), np.float32)
    fifo = np.zeros((b_size, max_fifo + max_chunk, emb_dim), np.float32)
    fifo_preds = np.zeros((b_size, max_fifo + max_chunk, n_spk), np.float32)
    cache = np.zeros((b_size, max_cache + max_pop, emb_dim), np.float32)
    cache_preds = np.zeros((b_size, max_cache + max_pop, n_spk), np.float32)

    for b in range(b_size):
        sl, fl, cl = int(cache_lens[b]), int(fifo_lens[b]), int(chunk_lens[b])
        cache[b, :sl] = state.spkcache[b, :sl]
        cache_preds[b, :sl] = state.spkcache_preds[b, :sl]
        # FIFO frames get this step's predictions; the chunk is appended after them.
        fifo[b, :fl] = state.fifo[b, :fl]
        fifo_preds[b, :fl] = preds[b, sl : sl + fl]
        chunk_preds[b, :cl] = preds[b, sl + fl : sl + fl + cl]
        fifo[b, fl : fl + cl] = chunk_embs[b, :cl]
        fifo_preds[b, fl : fl + cl] = chunk_preds[b, :cl]
        fifo_lens[b] = fl + cl
        if fl + cl <= max_fifo:
            continue
        # FIFO overflow: its first pop frames go to the end of the speaker cache.
        pop = min(max(p.spkcache_update_period, cl - max_fifo + fl), fl + cl)
        pop_embs, pop_preds = fifo[b, :pop].copy(), fifo_preds[b, :pop].copy()
        mean_sil[b], n_sil[b] = _silence_profile(p, mean_sil[b], n_sil[b], pop_embs, pop_preds)
        cache[b, sl : sl + pop] = pop_embs
        # Async: cached frames keep the predictions they left the FIFO with (NeMo's async first-compression
        # branch is dead code). Sync keeps no cache predictions before the first compression (the popped
        # ones stored here until then are never used) and compresses the first time with this step's
        # predictions over the cached frames.
        cache_preds[b, sl : sl + pop] = pop_preds
        if sync and not compressed[b] and sl + pop > p.spkcache_len:
            cache_preds[b, :sl] = preds[b, :sl]
        cache_lens[b] += pop
        new_fl = fl + cl - pop
        fifo_lens[b] = new_fl
        fifo[b, :new_fl] = fifo[b, pop : pop + new_fl].copy()
        fifo_preds[b, :new_fl] = fifo_preds[b, pop : pop + new_fl].copy()
        fifo[b, new_fl:] = 0.0
        fifo_preds[b, new_fl:] = 0.0

    new_cache = cache[:, : p.spkcache_len].copy()
    new_cache_preds = cache_preds[:, : p.spkcache_len].copy()
    full = np.flatnonzero(cache_lens > p.spkcache_len)
    if full.size:
        new_cache[full], new_cache_preds[full] = compress_spkcache(p, cache[full], cache_preds[full], mean_sil[full])
        cache_lens[full] = p.spkcache_len
        compressed[full] = True

    new_state = SortformerStreamState(
        spkcache=new_cache,
        spkcache_lengths=cache_lens,
        spkcache_preds=new_cache_preds,
        fifo=fifo[:, :max_fifo].copy(),
        fifo_lengths=fifo_lens,
        fifo_preds=fifo_preds[:, :max_fifo].copy(),
        mean_sil_emb=mean_sil,
        n_sil_frames=n_sil,
        spkcache_compressed=compressed,
    )
    return new_state, chunk_preds


def _silence_profile(
    p: SortformerParams, mean_sil: np.ndarray, n_sil: np.integer, embs: np.ndarray, preds: np.ndarray
) -> tuple[np.ndarray, np.int64]:
    """Running mean of embeddings of frames whose summed speaker probability is under sil_threshold."""
    is_sil = preds.sum(axis=1) < np.float32(p.sil_threshold)
    count = int(is_sil.sum())
    if count == 0:
        return mean_sil, np.int64(n_sil)
    sil_sum = (embs * is_sil[:, None].astype(np.float32)).sum(axis=0, dtype=np.float32)
    total = np.int64(n_sil) + count
    new_mean = (mean_sil * np.float32(n_sil) + sil_sum) / np.float32(max(total, 1))
    return new_mean.astype(np.float32), total


def _log_pred_scores(p: SortformerParams, preds: np.ndarray) -> np.ndarray:
    """High for confident single-speaker frames: log p - log(1-p) + sum_k log(1-p_k) - log 0.5."""
    thr = np.float32(p.pred_score_threshold)
    log_p = np.log(np.maximum(preds, thr))
    log_1p = np.log(np.maximum(np.float32(1.0) - preds, thr))
    log_1p_sum = log_1p.sum(axis=2, keepdims=True, dtype=np.float32)
    return ((log_p - log_1p) + log_1p_sum - np.float32(math.log(0.5))).astype(np.float32)


def _disable_low_scores(preds: np.ndarray, scores: np.ndarray, min_pos_per_spk: int) -> np.ndarray:
    """-inf for non-speech; also for overlapped (non-positive) frames of speakers with enough clean frames."""
    is_speech = preds > 0.5
    scores = np.where(is_speech, scores, -np.inf).astype(np.float32)
    is_pos = scores > 0
    enough = is_pos.sum(axis=1, keepdims=True) >= min_pos_per_spk
    return np.where(~is_pos & is_speech & enough, np.float32(-np.inf), scores)


def _boost_topk(scores: np.ndarray, k: int, scale: float) -> np.ndarray:
    """Add -scale*log(0.5) to the k highest scores of each speaker (over frames)."""
    if k <= 0:
        return scores
    n_frames = scores.shape[1]
    k = min(k, n_frames)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k, :]  # [B, k, n_spk]
    b_idx = np.arange(scores.shape[0])[:, None, None]
    s_idx = np.arange(scores.shape[2])[None, None, :]
    scores = scores.copy()
    scores[b_idx, top, s_idx] -= np.float32(scale * math.log(0.5))
    return scores


def compress_spkcache(
    params: SortformerParams, embs: np.ndarray, preds: np.ndarray, mean_sil_emb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the spkcache_len most informative of N > spkcache_len frames (NeMo's _compress_spkcache).

    Output is grouped by speaker (frame order kept within a speaker), each speaker block ending with up to
    spkcache_sil_frames_per_spk silence frames (mean silence embedding, zero predictions); unused slots too.
    """
    p = params
    b_size, n_frames, n_spk = preds.shape
    per_spk = p.spkcache_len // n_spk - p.spkcache_sil_frames_per_spk
    strong_k = math.floor(per_spk * p.strong_boost_rate)
    weak_k = math.floor(per_spk * p.weak_boost_rate)
    min_pos = math.floor(per_spk * p.min_pos_scores_rate)

    scores = _disable_low_scores(preds, _log_pred_scores(p, preds), min_pos)
    if p.scores_boost_latest > 0:  # newest frames (past the cache size) win ties against old ones
        scores[:, p.spkcache_len :, :] += np.float32(p.scores_boost_latest)
    scores = _boost_topk(scores, strong_k, 2.0)  # every speaker keeps some frames
    scores = _boost_topk(scores, weak_k, 1.0)  # no speaker dominates the cache
    n_sil = p.spkcache_sil_frames_per_spk
    if n_sil > 0:
        scores = np.concatenate([scores, np.full((b_size, n_sil, n_spk), np.inf, np.float32)], axis=1)

    n_all = scores.shape[1]
    flat = scores.transpose(0, 2, 1).reshape(b_size, -1)  # speaker-major
    k = p.spkcache_len
    top = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    top_vals = np.take_along_axis(flat, top, axis=1)
    top = np.where(top_vals != -np.inf, top, p.max_index)
    top = np.sort(top, axis=1)
    disabled = top == p.max_index
    top = np.remainder(top, n_all)
    disabled |= top >= n_all - n_sil
    top = np.where(disabled, 0, top)

    out_embs = np.take_along_axis(embs, top[:, :, None], axis=1)
    out_embs = np.where(disabled[:, :, None], mean_sil_emb[:, None, :], out_embs).astype(np.float32)
    out_preds = np.take_along_axis(preds, top[:, :, None], axis=1)
    out_preds = np.where(disabled[:, :, None], np.float32(0.0), out_preds).astype(np.float32)
    return out_embs, out_preds


def replace_rows(state: SortformerStreamState, rows: np.ndarray | list[int], sub: SortformerStreamState) -> None:
    """Write the state of some streams back into a batch state (in place)."""
    idx = np.asarray(rows, dtype=np.int64)
    for f in fields(state):
        getattr(state, f.name)[idx] = getattr(sub, f.name)


__all__ = [
    "CHUNK",
    "CHUNK_LENGTHS",
    "CHUNK_PRE_ENCODE_EMBS",
    "CHUNK_PRE_ENCODE_LENGTHS",
    "DROP_EXTRA_PRE_ENCODED",
    "FIFO",
    "FIFO_LENGTHS",
    "SPKCACHE",
    "SPKCACHE_FIFO_CHUNK_PREDS",
    "SPKCACHE_LENGTHS",
    "SortformerParams",
    "SortformerStreamState",
    "compress_spkcache",
    "core_inputs",
    "init_state",
    "replace_rows",
    "streaming_update",
]
