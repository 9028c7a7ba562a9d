"""Deterministic synthetic conversations: the tests' inputs, the demo's conversation, benchmark audio.

Speech is synthesised by espeak-ng (a Debian package, installed by ``make system-deps`` when run
as root) with clearly different voices, resampled to 16 kHz and mixed so that consecutive turns of
different speakers overlap. Nothing is written to disk: espeak-ng's WAV comes through a pipe.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mtasr.training.voices import SAMPLE_RATE

MIN_DURATION_S = 6.0
MAX_DURATION_S = 15.0
MAX_REDRAWS = 50  # utterances of one speaker tried for a turn that must fit (`compose`)
RESERVE_PER_SILENT_SPEAKER_S = 2.0


class Voice(NamedTuple):
    name: str  # espeak-ng -v (language + variant)
    pitch: int  # -p, 0..99
    speed: int  # -s, words per minute


# Distinct timbre (variant), pitch and rate; the first three differ the most.
VOICES: tuple[Voice, ...] = (
    Voice("en-us+m3", 30, 150),
    Voice("en-gb+f3", 78, 175),
    Voice("en-us+klatt4", 55, 135),
    Voice("en-gb-scotland+m7", 40, 165),
    Voice("en-us+f5", 90, 160),
)

_WORDS = (
    "the quick team will meet again after lunch to review the new plan for our next release "
    "please send me the latest numbers before the call today we should move the server to the "
    "second room because the network there is faster and the weather looks fine for a short walk "
    "maybe we can order some coffee while the build is running I think the results look good but "
    "the model still needs more data from the north office and a better test set for next week"
).split()


class Segment(NamedTuple):
    speaker: int
    start_s: float
    end_s: float
    text: str


@dataclass
class Conversation:
    audio: np.ndarray  # float32 [samples], 16 kHz mono mix
    segments: list[Segment]  # in start order
    sources: np.ndarray  # float32 [n_speakers, samples], each speaker's track as mixed
    voices: list  # voice of each speaker (a Voice here, a training voice name for corpus conversations)
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return self.audio.shape[0] / self.sample_rate

    @property
    def n_speakers(self) -> int:
        return self.sources.shape[0]

    def overlaps(self) -> list[tuple[int, int, float]]:
        """(segment i, segment j, seconds) for every overlapping pair of different speakers' segments."""
        out = []
        for i, a in enumerate(self.segments):
            for j in range(i + 1, len(self.segments)):
                b = self.segments[j]
                shared = min(a.end_s, b.end_s) - max(a.start_s, b.start_s)
                if a.speaker != b.speaker and shared > 0:
                    out.append((i, j, shared))
        return out


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """espeak-ng speech of ``text`` at 16 kHz (float32), leading/trailing silence trimmed."""
    if not espeak_available():
        raise RuntimeError(
            "espeak-ng is not installed: the synthetic conversations need the Debian package 'espeak-ng' "
            "(apt-get install espeak-ng, or `make system-deps` as root)"
        )
    import soundfile as sf

    from mtasr.client.audio import resample

    cmd = ["espeak-ng", "-v", voice.name, "-p", str(voice.pitch), "-s", str(voice.speed), "--stdout", text]
    wav = subprocess.run(cmd, check=True, capture_output=True, timeout=60).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = resample(audio.astype(np.float64), int(rate), SAMPLE_RATE)
    audio = np.asarray(audio, dtype=np.float32)
    loud = np.nonzero(np.abs(audio) > 1e-3 * max(float(np.abs(audio).max()), 1e-9))[0]
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {text!r} with voice {voice}")
    return np.ascontiguousarray(audio[loud[0] : loud[-1] + 1])


def _sentence(rng: np.random.Generator, n_words: int) -> str:
    start = int(rng.integers(0, len(_WORDS) - n_words))
    return " ".join(_WORDS[start : start + n_words])


Turn = tuple[int, str, np.ndarray]  # (speaker index, text, 16 kHz float32 speech)


def make_conversation(
    n_speakers: int,
    seed: int,
    *,
    target_s: float | None = None,
    overlap_s: tuple[float, float] = (0.4, 1.0),
    level_db: float = -20.0,
) -> Conversation:
    """A 6–15 s conversation of ``n_speakers`` (1 to 4) espeak-ng voices, deterministic in ``seed``.

    Up to three speakers: the three most different voices, in a seeded order; four: the first four.
    Short phrases of a fixed word list. See `compose` for the turn layout.
    """
    if n_speakers not in (1, 2, 3, 4):
        raise ValueError(f"n_speakers must be 1, 2, 3 or 4, got {n_speakers}")
    rng = np.random.default_rng(seed)
    target = float(rng.uniform(7.0, 12.0)) if target_s is None else float(target_s)
    voice_order = rng.permutation(max(3, n_speakers))
    voices = [VOICES[int(i)] for i in voice_order[:n_speakers]]

    def speak(speaker: int) -> Turn:
        text = _sentence(rng, int(rng.integers(3, 8)))
        return speaker, text, synthesize(text, voices[speaker])

    return compose(speak, n_speakers, rng, target_s=target, overlap_s=overlap_s, level_db=level_db, voices=voices)


def _next_turn(speak, speaker: int, segments: list, n_speakers: int, rng: np.random.Generator, how: dict) -> tuple:
    """`speaker`'s next turn, levelled to `how["level_db"]` dBFS RMS, and where it starts after `segments`
    (at `how["lead"]` for the first; see `compose`)."""
    speaker, text, clip = speak(speaker)
    rms = float(np.sqrt(np.mean(clip.astype(np.float64) ** 2)))
    clip = (clip * (10 ** (how["level_db"] / 20) / max(rms, 1e-9))).astype(np.float32)
    dur = clip.shape[0] / SAMPLE_RATE
    if not segments:
        return speaker, text, clip, round(how["lead"] * SAMPLE_RATE) / SAMPLE_RATE
    prev = segments[-1]
    if n_speakers > 1:
        shared = float(rng.uniform(*how["overlap_s"]))
        shared = min(shared, 0.4 * dur, 0.4 * (prev.end_s - prev.start_s))
        start = prev.end_s - shared
    else:
        start = prev.end_s + float(rng.uniform(0.2, 0.6))
    return speaker, text, clip, round(start * SAMPLE_RATE) / SAMPLE_RATE


def compose(
    speak,
    n_speakers: int,
    rng: np.random.Generator,
    *,
    target_s: float | None = None,
    overlap_s: tuple[float, float] = (0.4, 1.0),
    level_db: float = -20.0,
    voices: list | None = None,
) -> Conversation:
    """Lay turns out into a 6–15 s conversation; `speak(speaker)` gives each next turn's speech.

    Turns rotate through the speakers (every speaker speaks at least once); each turn of a different
    speaker starts ``overlap_s`` seconds (uniform, capped at 40 % of either turn) before the previous
    turn ends, so with two or more speakers every change of speaker is a real overlap. One speaker:
    turns separated by 0.2–0.6 s pauses. Each turn is normalised to ``level_db`` dBFS RMS.
    """
    target = float(rng.uniform(7.0, 12.0)) if target_s is None else float(target_s)
    target = min(max(target, MIN_DURATION_S), MAX_DURATION_S)
    speaker_order = [int(s) for s in rng.permutation(n_speakers)]

    how = {"lead": float(rng.uniform(0.3, 0.6)), "overlap_s": overlap_s, "level_db": level_db}
    tail = 0.4
    segments: list[Segment] = []
    clips: list[np.ndarray] = []
    turn = 0
    while True:
        everyone_spoke = len({s.speaker for s in segments}) == n_speakers and len(segments) >= 2
        next_speaker = speaker_order[turn % n_speakers]
        # Time kept for the speakers still silent after this turn, while someone has yet to speak.
        silent = set(range(n_speakers)) - {s.speaker for s in segments} - {next_speaker}
        reserve = RESERVE_PER_SILENT_SPEAKER_S * len(silent)
        for _ in range(MAX_REDRAWS):
            speaker, text, clip, start = _next_turn(speak, next_speaker, segments, n_speakers, rng, how)
            end = start + clip.shape[0] / SAMPLE_RATE
            # A turn too long for what is left: another of that speaker's utterances.
            if everyone_spoke or end + tail + reserve <= MAX_DURATION_S:
                break
        else:
            raise RuntimeError(f"no turn of speaker {speaker} fits into a {MAX_DURATION_S} s conversation")
        if everyone_spoke and end + tail > MAX_DURATION_S:
            break
        segments.append(Segment(speaker, start, end, text))
        clips.append(clip)
        turn += 1
        if everyone_spoke and end >= target - tail:
            break
        if end + tail > MAX_DURATION_S:
            break

    total = max(segments[-1].end_s + tail, MIN_DURATION_S)
    if total > MAX_DURATION_S:
        raise RuntimeError(f"conversation came out {total:.2f} s long; expected at most {MAX_DURATION_S} s")
    n = int(round(total * SAMPLE_RATE))
    sources = np.zeros((n_speakers, n), dtype=np.float32)
    for seg, clip in zip(segments, clips, strict=True):
        i = int(round(seg.start_s * SAMPLE_RATE))
        sources[seg.speaker, i : i + clip.shape[0]] += clip[: n - i]
    mix = sources.sum(axis=0)
    peak = float(np.abs(mix).max())
    if peak > 0.95:
        scale = 0.95 / peak
        mix *= scale
        sources *= scale
    ordered = sorted(segments, key=lambda s: (s.start_s, s.speaker))
    return Conversation(
        audio=np.ascontiguousarray(mix, dtype=np.float32), segments=ordered, sources=sources, voices=voices or []
    )
