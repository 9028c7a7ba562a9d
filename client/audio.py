"""Read audio files (WAV, FLAC, OGG, any rate and channel count) as the server wants them: mono float32.

Channels are averaged; the rate is changed with a polyphase resampler (scipy's resample_poly:
a Kaiser-windowed FIR anti-aliasing filter), not by dropping or repeating samples. Files are read
and resampled block by block (:func:`open_audio`), so a 3-hour recording streams in flat memory;
the blocks join to exactly the whole-file result (:func:`load_audio`).
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUPPORTED = "WAV, FLAC or OGG"
BLOCK_S = 5.0  # seconds of source audio read at a time


class AudioError(ValueError):
    """A file that cannot be transcribed; the message says why."""


def _ratio(source_rate: int, target_rate: int) -> tuple[int, int]:
    g = math.gcd(source_rate, target_rate)
    return target_rate // g, source_rate // g


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    up, down = _ratio(source_rate, target_rate)
    return resample_poly(audio, up, down).astype(np.float32)


def resample_blocks(blocks: Iterable[np.ndarray], source_rate: int, target_rate: int) -> Iterator[np.ndarray]:
    """:func:`resample` of a signal that arrives in blocks, as blocks, equal to resampling it whole.

    Output sample m depends only on input samples within the filter's reach of m * down / up, so
    each output stretch is computed from its input plus `reach` samples on each side (rounded to a
    multiple of `down`, which keeps input and output indices aligned); the signal's true ends are
    zero-padded exactly as the whole-signal call pads them.
    """
    if source_rate == target_rate:
        yield from (np.asarray(b, np.float32) for b in blocks)
        return
    from scipy.signal import resample_poly

    up, down = _ratio(source_rate, target_rate)
    half_len = 10 * max(up, down)  # resample_poly's filter half-length, in upsampled samples
    reach = -(-(half_len // up + 2) // down) * down
    pending = np.zeros(0, np.float32)  # input from absolute index `origin` on
    origin = done = 0  # input before `done` has had its output emitted; both are multiples of `down`

    def emit(end: int, stop: int) -> np.ndarray:
        """Output for input [done, end), computed from input [done - reach, stop)."""
        first = max(0, done - reach)
        out = resample_poly(pending[first - origin : stop - origin], up, down)
        skip = (done - first) // down * up
        return out[skip : skip + (end - done) // down * up] if end < stop else out[skip:]

    for block in blocks:
        pending = np.concatenate([pending, np.asarray(block, np.float32)])
        available = origin + len(pending)
        end = (available - reach) // down * down
        if end > done:
            yield emit(end, end + reach).astype(np.float32)
            done = end
            keep = max(0, done - reach)
            pending, origin = pending[keep - origin :], keep
    total = origin + len(pending)
    if total > done or total == 0:
        yield emit(total, total).astype(np.float32)


@dataclass(frozen=True)
class AudioSource:
    """An opened audio file: its name, length and rate; :meth:`blocks` streams its samples."""

    name: str
    handle: str | io.BytesIO
    frames: int
    source_rate: int
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.frames / self.source_rate

    def blocks(self, block_s: float = BLOCK_S) -> Iterator[np.ndarray]:
        """Mono float32 at `sample_rate`, a few seconds at a time; AudioError if the file turns out
        unreadable or holds NaN or infinite samples part way through."""
        frames = max(1, int(block_s * self.source_rate))
        return resample_blocks(self._mono_blocks(frames), self.source_rate, self.sample_rate)

    def _mono_blocks(self, frames: int) -> Iterator[np.ndarray]:
        import soundfile

        if isinstance(self.handle, io.BytesIO):
            self.handle.seek(0)
        try:
            with soundfile.SoundFile(self.handle) as sound:
                while len(block := sound.read(frames, dtype="float32", always_2d=True).mean(axis=1)):
                    if not np.isfinite(block).all():
                        raise AudioError(f"{self.name}: holds NaN or infinite samples")
                    yield block
        except (soundfile.LibsndfileError, RuntimeError) as err:
            raise AudioError(f"{self.name}: cannot read it as {SUPPORTED} audio ({err})") from None


def open_audio(source: str | Path, sample_rate: int) -> AudioSource:
    """Open a file path, or standard input for "-" (read whole: a pipe cannot be searched), to be
    streamed at `sample_rate`; AudioError naming the problem if it cannot be."""
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
        header = soundfile.info(handle)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{name}: cannot read it as {SUPPORTED} audio ({err})") from None
    if header.frames <= 0:
        raise AudioError(f"{name}: holds no samples")
    return AudioSource(name, handle, int(header.frames), int(header.samplerate), sample_rate)


def load_audio(source: str | Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples at `sample_rate` from a file path, or standard input for "-", whole."""
    return np.concatenate(list(open_audio(source, sample_rate).blocks()))
