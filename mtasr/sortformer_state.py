"""Streaming Sortformer state between chunks: speaker cache + FIFO update, in numpy.

This reproduces NeMo's ``SortformerModules.streaming_update_async`` (what
``SortformerEncLabelModel.forward_streaming_step`` runs when ``async_streaming`` is on, the only
variant where streams in a batch have their own cache/FIFO/chunk lengths), including the speaker
cache compression (silence profile, log-score, boosting, top-k frame selection).

A caller loops::

    state = init_state(params, batch_size)
    for feats, feat_lengths, lc, rc in iter_feature_chunks(params, feats_bct, feat_lengths):
        preds, embs, emb_lengths = session.run(None, core_inputs(state, feats, feat_lengths))
        state, chunk_preds = streaming_update(params, state, embs, emb_lengths, preds, lc, rc)

The state arrays are fixed size (``spkcache_len`` / ``fifo_len`` frames) with per-stream lengths,
which is the layout the exported core graph takes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
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


@dataclass(frozen=True)
class SortformerParams:
    """Streaming geometry and cache-update parameters (from the export's geometry dict)."""

    chunk_len: int
    chunk_left_context: int
    chunk_right_context: int
    spkcache_len: int
    fifo_len: int
    spkcache_update_period: int
    n_spk: int
    emb_dim: int
    subsampling_factor: int
    n_mels: int
    spkcache_sil_frames_per_spk: int = 3
    pred_score_threshold: float = 0.25
    max_index: int = 99999
    scores_boost_latest: float = 0.05
    sil_threshold: float = 0.2
    strong_boost_rate: float = 0.75
    weak_boost_rate: float = 1.5
    min_pos_scores_rate: float = 0.5
    frame_len_s: float = 0.08

    @classmethod
    def from_dict(cls, geometry: Mapping[str, Any]) -> SortformerParams:
        """Build from the export's geometry dict; keys that are not parameters are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in geometry.items() if k in names})

    @property
    def chunk_feat_frames(self) -> int:
        """Feature frames of a full chunk with both contexts."""
        return (self.chunk_len + self.chunk_left_context + self.chunk_right_context) * self.subsampling_factor


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
    """Empty cache and FIFO (NeMo's ``init_streaming_state(async_streaming=True)``)."""
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
    )


def core_inputs(
    state: SortformerStreamState, chunk_feats: np.ndarray, chunk_len: int | np.ndarray
) -> dict[str, np.ndarray]:
    """ORT feeds for the core graph: chunk features [B, T_feat, n_mels] (time-major) + valid frame counts."""
    b = state.batch_size
    feats = np.ascontiguousarray(chunk_feats, dtype=np.float32)
    if feats.ndim != 3 or feats.shape[0] != b:
        raise ValueError(f"chunk features must be [B={b}, T, n_mels], got {feats.shape}")
    lengths = np.broadcast_to(np.asarray(chunk_len, dtype=np.int64), (b,)).copy()
    return {
        CHUNK: feats,
        CHUNK_LENGTHS: lengths,
        SPKCACHE: state.spkcache,
        SPKCACHE_LENGTHS: state.spkcache_lengths,
        FIFO: state.fifo,
        FIFO_LENGTHS: state.fifo_lengths,
    }


def iter_feature_chunks(
    params: SortformerParams,
    feats_bct: np.ndarray,
    feat_lengths: np.ndarray,
    feat_offsets: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, int, int]]:
    """Split features [B, n_mels, T] into chunks like NeMo's ``streaming_feat_loader``.

    Yields (chunk feats [B, T_chunk, n_mels], valid feature frames [B], lc, rc) with lc/rc in encoder frames,
    ready for :func:`core_inputs` and :func:`streaming_update`.
    """
    sub = params.subsampling_factor
    total = feats_bct.shape[2]
    lengths = np.asarray(feat_lengths, dtype=np.int64)
    offsets = np.zeros_like(lengths) if feat_offsets is None else np.asarray(feat_offsets, dtype=np.int64)
    start = end = 0
    while end < total:
        left = min(params.chunk_left_context * sub, start)
        end = min(start + params.chunk_len * sub, total)
        right = min(params.chunk_right_context * sub, total - end)
        chunk = feats_bct[:, :, start - left : end + right]
        valid = np.clip(lengths + offsets - start + left, 0, chunk.shape[2]) * (offsets < end)
        yield (
            np.ascontiguousarray(chunk.transpose(0, 2, 1)),
            valid.astype(np.int64),
            round(left / sub),
            math.ceil(right / sub),
        )
        start = end


def streaming_update(
    params: SortformerParams,
    state: SortformerStreamState,
    chunk_embs: np.ndarray,
    chunk_lengths: np.ndarray,
    preds: np.ndarray,
    lc: int = 0,
    rc: int = 0,
) -> tuple[SortformerStreamState, np.ndarray]:
    """Move this chunk into the FIFO, FIFO overflow into the speaker cache, compress the cache if full.

    chunk_embs [B, lc+chunk+rc, D] and chunk_lengths [B] are the core graph's pre-encode outputs; preds
    [B, >= S+F+T, n_spk] its predictions over [spkcache | fifo | chunk] (per-stream lengths, zero tail).
    Returns the new state (the input state is not modified) and this chunk's predictions [B, chunk, n_spk]
    (rows past a stream's valid chunk length are zero).
    """
    p = params
    b_size, t_chunk, emb_dim = chunk_embs.shape
    n_spk = preds.shape[2]
    max_cache, max_fifo, max_chunk = state.spkcache.shape[1], state.fifo.shape[1], t_chunk - lc - rc
    max_pop = min(max(p.spkcache_update_period, max_chunk), max_chunk + max_fifo)

    chunk_lens = np.clip(np.asarray(chunk_lengths, dtype=np.int64) - lc, 0, max_chunk)
    cache_lens = state.spkcache_lengths.astype(np.int64).copy()
    fifo_lens = state.fifo_lengths.astype(np.int64).copy()
    mean_sil = state.mean_sil_emb.astype(np.float32).copy()
    n_sil = state.n_sil_frames.astype(np.int64).copy()

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
        chunk_preds[b, :cl] = preds[b, sl + fl + lc : sl + fl + lc + cl]
        fifo[b, fl : fl + cl] = chunk_embs[b, lc : lc + cl]
        fifo_preds[b, fl : fl + cl] = chunk_preds[b, :cl]
        fifo_lens[b] = fl + cl
        if fl + cl <= max_fifo:
            continue
        # FIFO overflow: its first pop frames go to the end of the speaker cache.
        pop = min(max(p.spkcache_update_period, max_chunk - max_fifo + fl), fl + cl)
        pop_embs, pop_preds = fifo[b, :pop].copy(), fifo_preds[b, :pop].copy()
        mean_sil[b], n_sil[b] = _silence_profile(p, mean_sil[b], n_sil[b], pop_embs, pop_preds)
        cache[b, sl : sl + pop] = pop_embs
        if cache_preds[b, 0, 0] >= 0:  # always true (preds >= 0); NeMo's first-compression branch is dead
            cache_preds[b, sl : sl + pop] = pop_preds
        elif sl + pop > p.spkcache_len:
            cache_preds[b, :sl] = preds[b, :sl]
            cache_preds[b, sl : sl + pop] = pop_preds
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

    new_state = SortformerStreamState(
        spkcache=new_cache,
        spkcache_lengths=cache_lens,
        spkcache_preds=new_cache_preds,
        fifo=fifo[:, :max_fifo].copy(),
        fifo_lengths=fifo_lens,
        fifo_preds=fifo_preds[:, :max_fifo].copy(),
        mean_sil_emb=mean_sil,
        n_sil_frames=n_sil,
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
    "iter_feature_chunks",
    "replace_rows",
    "streaming_update",
]
