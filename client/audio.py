"""Read audio files (WAV, FLAC, OGG, any rate and channel count) as the server wants them: mono float32.

Channels are averaged; the rate is changed with a polyphase resampler (scipy's resample_poly:
a Kaiser-windowed FIR anti-aliasing filter), not by dropping or repeating samples.
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
import sys
from pathlib import Path

import numpy as np

SUPPORTED = "WAV, FLAC or OGG"


class AudioError(ValueError):
    """A file that cannot be transcribed; the message says why."""


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(source_rate, target_rate)
    return resample_poly(audio, target_rate // g, source_rate // g).astype(np.float32)


def load_audio(source: str | Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples at `sample_rate` from a file path, or standard input for "-"."""
    import soundfile

    name = "standard input" if str(source) == "-" else str(source)
    if str(source) == "-":
        data = sys.stdin.buffer.read()
        handle: io.BytesIO | str = io.BytesIO(data)
        if not data:
            raise AudioError("standard input is empty")
    else:
        path = Path(source)
        try:
            info = path.stat()
        except FileNotFoundError:
            if path.is_symlink():
                raise AudioError(f"{name}: a broken symbolic link (to {os.readlink(path)})") from None
            raise AudioError(f"{name}: no such file") from None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise AudioError(f"{name}: a symbolic link loop (it points back to itself)") from None
            raise AudioError(f"{name}: cannot open it ({err.strerror or err})") from None
        if stat.S_ISDIR(info.st_mode):
            raise AudioError(f"{name}: is a folder, not an audio file")
        if info.st_size == 0:
            raise AudioError(f"{name}: the file is empty")
        handle = str(path)
    try:
        audio, rate = soundfile.read(handle, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{name}: cannot read it as {SUPPORTED} audio ({err})") from None
    if audio.shape[0] == 0:
        raise AudioError(f"{name}: holds no samples")
    mono = audio.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError(f"{name}: holds NaN or infinite samples")
    return resample(mono, int(rate), sample_rate)
