"""Tokens -> words with times -> per-speaker SegLST.

A SentencePiece word starts at a piece beginning with "▁"; a word is complete once the next word
starts or the stream ends. A word spans from its first token's encoder frame to the end of its
last token's frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mtasr.protocol import speaker_name  # noqa: F401  (re-exported)

WORD_START = "\u2581"


@dataclass(frozen=True)
class Word:
    slot: int
    text: str
    start: float
    end: float


class Tokenizer:
    """The checkpoint's SentencePiece model (the repository's tokenizer.model)."""

    def __init__(self, model_file: Path) -> None:
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.pieces = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def starts_word(self, token: int) -> bool:
        return self.pieces[token].startswith(WORD_START)


@dataclass
class WordAssembler:
    """One speaker slot's words, built token by token."""

    slot: int
    frame_s: float
    _ids: list[int] = field(default_factory=list)
    _frames: list[int] = field(default_factory=list)

    def push(self, tokenizer: Tokenizer, tokens: list[tuple[int, int]]) -> list[Word]:
        """Add (token, frame) pairs; return the words they complete."""
        done = []
        for token, frame in tokens:
            if self._ids and tokenizer.starts_word(token):
                done.extend(self.finish(tokenizer))
            self._ids.append(token)
            self._frames.append(frame)
        return done

    def finish(self, tokenizer: Tokenizer) -> list[Word]:
        """The word in progress, if any (end of stream, or the next word began)."""
        if not self._ids:
            return []
        text = tokenizer.decode(self._ids).strip()
        word = Word(self.slot, text, self._frames[0] * self.frame_s, (self._frames[-1] + 1) * self.frame_s)
        self._ids, self._frames = [], []
        return [word] if text else []


def seglst(words: list[Word], session_id: str, segment_gap_s: float) -> list[dict]:
    """Per-speaker segments (a new one after a pause longer than `segment_gap_s`), sorted by start."""
    segments: list[dict] = []
    open_segment: dict[int, dict] = {}
    for word in sorted(words, key=lambda w: (w.start, w.slot)):
        seg = open_segment.get(word.slot)
        if seg is None or word.start - seg["end_time"] > segment_gap_s:
            seg = {
                "session_id": session_id,
                "speaker": speaker_name(word.slot),
                "start_time": round(word.start, 3),
                "end_time": round(word.end, 3),
                "words": word.text,
            }
            segments.append(seg)
            open_segment[word.slot] = seg
        else:
            seg["words"] += " " + word.text
            seg["end_time"] = round(max(seg["end_time"], word.end), 3)
    return sorted(segments, key=lambda s: (s["start_time"], s["speaker"]))
