"""Debian's flite, festival and espeak-ng voices: the speakers of the training corpus.

Eleven distinct voices from three engines. Two are pitch- and rate-shifted flite voices, four are
espeak-ng variants at their own pitch and rate, so that the models hear more than one synthesiser
and a mixture of any two speakers is easy to tell apart by ear. One espeak-ng voice
(`HELD_OUT_VOICES`) never speaks a training sentence: it measures how the models do on a speaker
they have not heard. Installed by `make system-deps` (flite, festival, festvox-kdlpc16k, espeak-ng).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Voice:
    name: str  # the speaker id in manifests
    engine: str  # "flite", "festival" or "espeak-ng"
    voice: str  # flite -voice name, festival voice function without "voice_", or espeak-ng -v
    flite_features: tuple[tuple[str, str], ...] = field(default=())  # --setf key=value
    espeak_pitch_rate: tuple[int, int] = (50, 160)  # espeak-ng -p (0-99) and -s (words per minute)


VOICES: tuple[Voice, ...] = (
    Voice("awb", "flite", "awb"),  # Scottish male
    Voice("slt", "flite", "slt"),  # US female
    Voice("rms", "flite", "rms"),  # US male, low
    Voice("kal", "flite", "kal16"),  # US male, diphone
    Voice("ked", "festival", "ked_diphone"),  # US male, diphone, other speaker
    Voice("sltx", "flite", "slt", (("int_f0_target_mean", "250"), ("duration_stretch", "0.85"))),  # high, fast
    Voice("rmsx", "flite", "rms", (("int_f0_target_mean", "78"), ("duration_stretch", "1.2"))),  # deeper, slow
    Voice("esm", "espeak-ng", "en-us+m3", espeak_pitch_rate=(35, 150)),  # US male
    Voice("esf", "espeak-ng", "en-gb+f3", espeak_pitch_rate=(70, 165)),  # British female
    Voice("esk", "espeak-ng", "en-us+klatt4", espeak_pitch_rate=(55, 140)),  # Klatt synthesiser
    Voice("ess", "espeak-ng", "en-gb-scotland+m7", espeak_pitch_rate=(45, 170)),  # Scottish male: held out
)
# Voices that speak only evaluation sentences, never training ones (reported on their own).
HELD_OUT_VOICES = ("ess",)
VOICE_BY_NAME = {v.name: v for v in VOICES}


class SynthesisError(RuntimeError):
    pass


def missing_engines(voices: tuple[Voice, ...] = VOICES) -> list[str]:
    """Programs the voices need that are not installed."""
    return sorted({v.engine for v in voices if shutil.which(v.engine) is None})


def _festival_scheme(voice: Voice, jobs: list[tuple[str, Path]]) -> str:
    lines = [f"(voice_{voice.voice})"]
    for text, path in jobs:
        quoted = text.replace("\\", " ").replace('"', " ")
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{quoted}")) "{path}" \'riff)')
    return "\n".join(lines) + "\n"


def _write_raw(voice: Voice, jobs: list[tuple[str, Path]]) -> None:
    if voice.engine == "flite":
        for text, path in jobs:
            cmd = ["flite", "-voice", voice.voice]
            for key, value in voice.flite_features:
                cmd += ["--setf", f"{key}={value}"]
            subprocess.run(cmd + ["-t", text, str(path)], check=True, capture_output=True, timeout=60)
    elif voice.engine == "espeak-ng":
        pitch, rate = voice.espeak_pitch_rate
        for text, path in jobs:
            cmd = ["espeak-ng", "-v", voice.voice, "-p", str(pitch), "-s", str(rate), "-w", str(path), text]
            subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    elif voice.engine == "festival":
        # One festival process per batch: its start-up costs more than an utterance.
        with tempfile.NamedTemporaryFile("w", suffix=".scm") as script:
            script.write(_festival_scheme(voice, jobs))
            script.flush()
            subprocess.run(["festival", "-b", script.name], check=True, capture_output=True, timeout=600)
    else:
        raise SynthesisError(f"unknown engine {voice.engine!r}")


def trim(audio: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    """Cut leading and trailing silence (below `threshold` of the peak)."""
    loud = np.nonzero(np.abs(audio) > threshold * max(float(np.abs(audio).max()), 1e-9))[0]
    if loud.size == 0:
        return audio[:0]
    return np.ascontiguousarray(audio[loud[0] : loud[-1] + 1])


def synthesize_to_files(voice: Voice, jobs: list[tuple[str, Path]]) -> list[float]:
    """Speak each (text, path) into a 16 kHz mono WAV, silence trimmed; returns the durations in seconds."""
    import soundfile as sf

    from mtasr.client.audio import resample

    if missing_engines((voice,)):
        raise SynthesisError(
            f"{voice.engine} is not installed: the training corpus needs Debian's flite, festival, "
            "festvox-kdlpc16k and espeak-ng (apt-get install flite festival festvox-kdlpc16k espeak-ng, "
            "or `make system-deps` as root)"
        )
    _write_raw(voice, jobs)
    durations = []
    for text, path in jobs:
        audio, rate = sf.read(path, dtype="float32")
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        if rate != SAMPLE_RATE:
            audio = resample(audio, int(rate), SAMPLE_RATE)
        audio = trim(audio)
        if audio.size < SAMPLE_RATE // 10:
            raise SynthesisError(f"{voice.name} produced no speech for {text!r}")
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        durations.append(audio.size / SAMPLE_RATE)
    return durations
