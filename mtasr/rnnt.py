"""Greedy RNNT decoding over batched prediction/joint graph calls, continuing hypotheses across chunks.

Same decisions as NeMo's greedy (batched) RNNT decoding with partial hypotheses: per encoder frame
run the joint on (frame, prediction output); a blank moves to the next frame; a token is emitted,
the prediction network advances on it, and the same frame is tried again, at most
``max_symbols`` times. A fresh hypothesis starts from the blank token (NeMo's start-of-sequence,
a zero embedding with ``blank_as_pad``) and a zero LSTM state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# (tokens [N, 1] int64, state_h [N, L, H], state_c [N, L, H]) -> (output [N, H], state_h, state_c)
PredictionFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
# (encoder frames [N, D], prediction outputs [N, H]) -> logits [N, vocab + 1]
JointFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DecoderGeometry:
    blank_id: int
    pred_hidden: int
    pred_rnn_layers: int
    max_symbols: int

    @classmethod
    def from_manifest(cls, decoding: dict) -> DecoderGeometry:
        return cls(
            blank_id=int(decoding["blank_id"]),
            pred_hidden=int(decoding["pred_hidden"]),
            pred_rnn_layers=int(decoding["pred_rnn_layers"]),
            max_symbols=int(decoding["max_symbols_per_step"]),
        )


@dataclass
class Hypothesis:
    """One (stream, speaker) decoder: the prediction output for its last token and the LSTM state after it."""

    prediction: np.ndarray  # [H] float32
    state_h: np.ndarray  # [L, H]
    state_c: np.ndarray  # [L, H]
    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # stream-global encoder frame of each token


def start_hypotheses(geometry: DecoderGeometry, n: int, predict: PredictionFn) -> list[Hypothesis]:
    """`n` fresh hypotheses: the prediction network run once on the start token from a zero state."""
    if n == 0:
        return []
    shape = (n, geometry.pred_rnn_layers, geometry.pred_hidden)
    tokens = np.full((n, 1), geometry.blank_id, np.int64)
    out, h, c = predict(tokens, np.zeros(shape, np.float32), np.zeros(shape, np.float32))
    return [Hypothesis(out[i], h[i], c[i]) for i in range(n)]


def greedy_decode(
    geometry: DecoderGeometry,
    encoded: np.ndarray,
    lengths: np.ndarray,
    hypotheses: list[Hypothesis],
    frame_offsets: np.ndarray,
    predict: PredictionFn,
    joint: JointFn,
) -> list[list[tuple[int, int]]]:
    """Decode `encoded` [N, T, D] (valid `lengths` [N]) onto `hypotheses` in place.

    Returns the new (token, stream frame) pairs per row; `frame_offsets` [N] maps chunk frames to
    stream frames.
    """
    n = len(hypotheses)
    new: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    if n == 0:
        return new
    t = np.zeros(n, np.int64)
    emitted = np.zeros(n, np.int64)  # tokens emitted at the current frame
    lengths = np.asarray(lengths, np.int64)
    pred = np.stack([h.prediction for h in hypotheses])
    state_h = np.stack([h.state_h for h in hypotheses])
    state_c = np.stack([h.state_c for h in hypotheses])
    rows = np.arange(n)
    while True:
        live = rows[t < lengths]
        if live.size == 0:
            break
        logits = joint(np.ascontiguousarray(encoded[live, t[live]]), np.ascontiguousarray(pred[live]))
        labels = logits.argmax(axis=-1)
        is_blank = labels == geometry.blank_id
        for row in live[is_blank]:
            t[row] += 1
            emitted[row] = 0
        speaking = live[~is_blank]
        if speaking.size == 0:
            continue
        tokens = labels[~is_blank]
        for row, token in zip(speaking, tokens, strict=True):
            frame = int(frame_offsets[row] + t[row])
            hypotheses[row].tokens.append(int(token))
            hypotheses[row].frames.append(frame)
            new[row].append((int(token), frame))
            emitted[row] += 1
            if emitted[row] >= geometry.max_symbols:
                t[row] += 1
                emitted[row] = 0
        out, h, c = predict(tokens.astype(np.int64)[:, None], state_h[speaking], state_c[speaking])
        pred[speaking], state_h[speaking], state_c[speaking] = out, h, c
    for i, hyp in enumerate(hypotheses):
        hyp.prediction, hyp.state_h, hyp.state_c = pred[i], state_h[i], state_c[i]
    return new
