"""Speaker gating and speaker-kernel masks, chunk by chunk, as NeMo's parallel multitalker streaming does.

Per chunk the diarizer gives probabilities [frames, slots]. A slot is *active* when its maximum
over the most recent ``gating_chunks`` chunks of frames exceeds the threshold (at most
``max_active`` slots, the most probable first). Each active slot gets one encoder instance whose
target mask is its own probability over this chunk's frames and whose background mask marks the
frames where any *other active* speaker is above the threshold.

NeMo builds the background mask by list position instead of speaker id
(``inactive_speaker_ids = [i for i in range(len(speaker_ids)) if i != speaker_id]``), so with active
slots [0, 2] speaker 0's background is slot 1, not slot 2. This module follows the speaker id;
``background_by_position`` reproduces NeMo's rule for the tests that show the difference.

Two ways to condition the encoder on its speaker, NeMo's script's ``masked_asr`` switch:
- ``kernels`` (``masked_asr=False``): the masks above feed the speaker kernels;
- ``masked`` (``masked_asr=True``, the script's default): the kernels get all ones (target) and
  zeros (background), as NeMo's encoder does when no targets are set, and the speaker's *features*
  are masked instead: frames where its most recent diarizer chunk is at or below the threshold are
  zeroed (``feature_mask``; applied by the ASR stage, see ``mask_features``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SpeakerConditioning = Literal["kernels", "masked"]
SPEAKER_CONDITIONINGS: tuple[str, ...] = ("kernels", "masked")
# NeMo's ``SpeakerTaggedASR.mask_features``: each diarizer frame covers this many feature frames (its
# constant; the released encoder subsamples 8x), and a feature exactly 0 (padding) becomes this value.
FEATURE_MASK_REPEAT = 8
MASKED_PADDING_VALUE = -16.6355


@dataclass(frozen=True)
class GatingConfig:
    frames_per_chunk: int  # encoder frames of a full chunk (right context + 1)
    gating_chunks: int = 2  # NeMo's cache_gating_buffer_size
    threshold: float = 0.5
    max_active: int = 4
    binary_targets: bool = False  # NeMo's binary_diar_preds
    nemo_background_mask: bool = False  # reproduce NeMo's by-position background rule (for comparisons)
    all_active: bool = False  # every slot active once the diarizer has spoken (benchmarks: the worst-case load)
    conditioning: SpeakerConditioning = "kernels"

    def __post_init__(self) -> None:
        if self.conditioning not in SPEAKER_CONDITIONINGS:
            raise ValueError(f"speaker conditioning must be one of {SPEAKER_CONDITIONINGS}, got {self.conditioning!r}")

    @property
    def window_frames(self) -> int:
        return self.frames_per_chunk * self.gating_chunks


@dataclass
class ChunkMasks:
    """Gating result for one chunk of one stream; masks are [slots, width] with valid frames first."""

    active: np.ndarray  # [slots] bool
    speaker: np.ndarray  # [slots, width] float32 target speaker activity
    background: np.ndarray  # [slots, width] float32 1 where another active speaker talks
    valid_frames: int
    # [slots, feature width] float32 1/0 per feature frame ("masked" conditioning), else [slots, 0]
    features: np.ndarray


def active_slots(window: np.ndarray, config: GatingConfig) -> list[int]:
    """Slots whose max probability over `window` [frames, slots] exceeds the threshold, ascending."""
    if window.shape[0] == 0:
        return []
    k = min(config.max_active, window.shape[1])
    if config.all_active:
        return list(range(k))
    peak = window.max(axis=0)
    # The k most probable slots (stable order on ties), then the threshold: NeMo's topk + mask.
    top = np.argsort(-peak, kind="stable")[:k]
    return sorted(int(s) for s in top if peak[s] > config.threshold)


def background_by_id(chunk: np.ndarray, slot: int, active: list[int], threshold: float) -> np.ndarray:
    """1 on frames where another active slot is above the threshold (the correct rule)."""
    others = [s for s in active if s != slot]
    if not others:
        return np.zeros(chunk.shape[0], np.float32)
    return (chunk[:, others] > threshold).any(axis=1).astype(np.float32)


def background_by_position(chunk: np.ndarray, slot: int, active: list[int], threshold: float) -> np.ndarray:
    """NeMo's rule: the "other" slots are list positions 0..len(active)-1 except `slot`."""
    others = [i for i in range(len(active)) if i != slot]
    if not others:
        return np.zeros(chunk.shape[0], np.float32)
    return (chunk[:, others] > threshold).any(axis=1).astype(np.float32)


class SpeakerGate:
    """One stream's gate: keeps the last few chunks of probabilities."""

    def __init__(self, config: GatingConfig, n_slots: int) -> None:
        self.config = config
        self.n_slots = n_slots
        self._background = background_by_position if config.nemo_background_mask else background_by_id
        self._recent = np.zeros((0, n_slots), np.float32)

    def step(
        self, probs: np.ndarray, encoder_frames: int, width: int, feature_frames: int = 0, feature_width: int = 0
    ) -> ChunkMasks:
        """Gate one chunk: its valid diarizer probabilities [frames, slots] and the encoder's valid
        frames for it; the masks are `width` frames wide, valid frames first. With "masked"
        conditioning, also the feature masks of the chunk's `feature_frames` (pre-encode cache
        included), `feature_width` wide."""
        c = self.config
        self._recent = np.concatenate([self._recent, probs.astype(np.float32)])[-c.window_frames :]
        active = active_slots(self._recent, c)
        flags = np.zeros(self.n_slots, bool)
        flags[active] = True
        if c.conditioning == "masked":
            features = np.ones((self.n_slots, feature_width), np.float32)
            for slot in active:
                features[slot, :feature_frames] = feature_mask(
                    self._recent[-c.frames_per_chunk :, slot], feature_frames, c.threshold
                )
            ones, zeros = np.ones((self.n_slots, width), np.float32), np.zeros((self.n_slots, width), np.float32)
            return ChunkMasks(flags, ones, zeros, encoder_frames, features)
        # NeMo masks the encoder frames with the stream's most recent diarizer frames, as many as
        # the encoder has (left-padded if there are fewer). On a short last chunk the diarizer can
        # have one frame fewer than the encoder, so this window may reach into the previous chunk.
        recent = (
            self._recent[-min(encoder_frames, self.config.frames_per_chunk) :] if encoder_frames else self._recent[:0]
        )
        missing = encoder_frames - recent.shape[0]
        speaker = np.ones((self.n_slots, width), np.float32)
        background = np.zeros((self.n_slots, width), np.float32)
        for slot in active:
            target = recent[:, slot]
            speaker[slot, missing:encoder_frames] = (target > c.threshold) if c.binary_targets else target
            background[slot, missing:encoder_frames] = self._background(recent, slot, active, c.threshold)
        return ChunkMasks(flags, speaker, background, encoder_frames, np.zeros((self.n_slots, 0), np.float32))


def feature_mask(target: np.ndarray, feature_frames: int, threshold: float) -> np.ndarray:
    """NeMo's feature mask for one speaker: its diarizer frames [n] above the threshold, each repeated
    over FEATURE_MASK_REPEAT feature frames, then cut to the chunk's `feature_frames` by keeping the
    *first* ones, or left-padded with zeros (so the pre-encode cache is masked out)."""
    mask = np.repeat((target > threshold).astype(np.float32), FEATURE_MASK_REPEAT)
    if mask.shape[0] >= feature_frames:
        return mask[:feature_frames]
    return np.concatenate([np.zeros(feature_frames - mask.shape[0], np.float32), mask])


def mask_features(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """NeMo's ``mask_features`` for one row: `features` [n_mels, frames] times `mask` [frames]; values
    that were exactly 0 (padding, a zero-filled pre-encode cache) become MASKED_PADDING_VALUE."""
    masked = features * mask[None, :]
    masked[features == 0] = MASKED_PADDING_VALUE
    return masked
