"""Cut a stream's feature frames into the encoder's cache-aware chunks, as NeMo's streaming buffer does.

NeMo's ``CacheAwareStreamingAudioBuffer`` walks the whole utterance's features: the first chunk is
``chunk_feature_frames[0]`` frames with no pre-encode cache; every later chunk is the previous
``pre_encode_cache_frames[1]`` frames followed by ``chunk_feature_frames[1]`` new ones; the last
chunk is whatever is left, and a remainder too short for one subsampled frame is dropped. Here
frames arrive a piece at a time, so a chunk is cut as soon as it is complete and the remainder is
cut at the end of the stream. Every chunk is right-padded to one width (the later chunks' width)
so that streams at different positions batch into one graph call; its true length and the number
of leading pre-encoded frames to drop travel with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ChunkGeometry:
    """The encoder's streaming geometry (manifest ``asr.streaming``), in feature frames."""

    chunk_frames: tuple[int, int]  # new frames in the first chunk, in later chunks
    shift_frames: tuple[int, int]
    pre_encode_cache_frames: tuple[int, int]
    drop_extra_pre_encoded: int
    encoder_frames_per_chunk: int
    subsampling_factor: int
    encoder_frame_s: float
    encoder_frames_by_feature_frames: tuple[int, ...]  # NeMo's subsampling length rule, before the drop

    @classmethod
    def from_manifest(cls, streaming: Mapping[str, Any]) -> ChunkGeometry:
        return cls(
            chunk_frames=tuple(streaming["chunk_feature_frames"]),
            shift_frames=tuple(streaming["shift_feature_frames"]),
            pre_encode_cache_frames=tuple(streaming["pre_encode_cache_frames"]),
            drop_extra_pre_encoded=int(streaming["drop_extra_pre_encoded"]),
            encoder_frames_per_chunk=int(streaming["encoder_frames_per_chunk"]),
            subsampling_factor=int(streaming["subsampling_factor"]),
            encoder_frame_s=float(streaming["encoder_frame_s"]),
            encoder_frames_by_feature_frames=tuple(streaming["encoder_frames_by_feature_frames"]),
        )

    @property
    def padded_frames(self) -> int:
        """Width of every chunk handed to the graphs: a later chunk with its pre-encode cache."""
        return self.chunk_frames[1] + self.pre_encode_cache_frames[1]

    def encoder_frames(self, feature_frames: np.ndarray, drop: np.ndarray) -> np.ndarray:
        """Valid encoder frames of chunks with these lengths and drops."""
        table = np.asarray(self.encoder_frames_by_feature_frames, np.int64)
        return np.clip(table[np.asarray(feature_frames, np.int64)] - drop, 0, None)

    def min_frames(self, first: bool) -> int:
        """Fewest new frames that still give one subsampled frame (NeMo's ``get_sampling_frames``)."""
        return 1 if first else self.subsampling_factor


@dataclass
class FeatureChunks:
    """Zero or more chunks of one stream, ready for the diarizer and encoder graphs."""

    features: np.ndarray  # [K, padded_frames, n_mels] float32, time-major, right-padded with zeros
    lengths: np.ndarray  # [K] int64: valid frames (pre-encode cache included)
    drop: np.ndarray  # [K] int64: leading pre-encoded frames that belong to the cache

    @classmethod
    def empty(cls, padded_frames: int, n_mels: int) -> FeatureChunks:
        return cls(np.zeros((0, padded_frames, n_mels), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


class FeatureChunker:
    """One stream's chunker: ``accept`` final feature frames, ``finish`` at the end of the stream."""

    def __init__(self, geometry: ChunkGeometry, n_mels: int) -> None:
        self.geometry = geometry
        self.n_mels = n_mels
        # Frames from global index `_base` on; `_next` is where the next chunk's new frames start.
        self._frames = np.zeros((0, n_mels), np.float32)
        self._base = 0
        self._next = 0
        self._chunks_cut = 0

    @property
    def chunks_cut(self) -> int:
        return self._chunks_cut

    def accept(self, frames: np.ndarray) -> FeatureChunks:
        """Add frames [n_mels, k]; return every chunk that is now complete."""
        self._frames = np.concatenate([self._frames, np.ascontiguousarray(frames.T, dtype=np.float32)])
        return self._cut(final=False)

    def finish(self) -> FeatureChunks:
        """End of stream: cut the remaining frames (a last, shorter chunk) as NeMo does."""
        return self._cut(final=True)

    def _cut(self, final: bool) -> FeatureChunks:
        g = self.geometry
        end = self._base + len(self._frames)
        feats, lengths, drops = [], [], []
        while self._next < end:
            first = self._chunks_cut == 0
            idx = 0 if first else 1
            new = min(g.chunk_frames[idx], end - self._next)
            if new < g.chunk_frames[idx] and not final:
                break
            if new < g.min_frames(first):
                break
            cache = g.pre_encode_cache_frames[idx]
            chunk = np.zeros((g.padded_frames, self.n_mels), np.float32)
            start = self._next - cache
            # Too few frames before the chunk for its cache: NeMo pads the cache with zeros on the left.
            have = min(cache, self._next - self._base)
            chunk[cache - have : cache + new] = self._frames[
                start + (cache - have) - self._base : self._next + new - self._base
            ]
            feats.append(chunk)
            lengths.append(cache + new)
            drops.append(0 if first else g.drop_extra_pre_encoded)
            self._next += g.shift_frames[idx]
            self._chunks_cut += 1
        if final:
            self._next = max(self._next, end)
        # Keep only what the next chunk can still need: its pre-encode cache and new frames.
        keep_from = max(self._base, self._next - g.pre_encode_cache_frames[1])
        self._frames = self._frames[keep_from - self._base :]
        self._base = keep_from
        if not feats:
            return FeatureChunks.empty(g.padded_frames, self.n_mels)
        return FeatureChunks(np.stack(feats), np.asarray(lengths, np.int64), np.asarray(drops, np.int64))
