"""Log-mel features in numpy, equal to NeMo's ``AudioToMelSpectrogramPreprocessor`` in eval mode.

Why numpy: the Triton python-backend models import this package without torch, and the served
pipeline must see exactly the features the NeMo models were trained and evaluated on.

What NeMo's ``FilterbankFeatures.forward`` does (eval mode, so no dither and no narrow-band
augmentation), restated as the definition implemented here, for one signal ``s`` of ``L`` samples:

1. ``exact_pad``: ``p = (n_fft - hop) // 2`` zeros are added on both sides *before* pre-emphasis,
   and the STFT is not centred. Otherwise the STFT is centred with ``n_fft // 2`` zeros
   (``pad_mode="constant"``) on both sides, added *after* pre-emphasis.
2. Pre-emphasis ``y[0] = x[0]``, ``y[i] = x[i] - preemph * x[i - 1]`` (float32), then every sample at
   index ``>= L`` of the (possibly padded) signal is zeroed. With ``exact_pad`` this zeroes the last
   ``p`` real samples too (a NeMo quirk, reproduced on purpose).
3. STFT with a symmetric (``periodic=False``) window of ``win_length`` samples, zero-padded to
   ``n_fft`` in the middle; magnitude ``|X|``, raised to ``mag_power``.
4. Mel filterbank (librosa's ``filters.mel``, htk=False, ``norm=mel_norm``) times the spectrum.
5. ``log(x + guard)`` or ``log(max(x, guard))``.
6. Optional normalisation over the valid frames (``per_feature``, ``all_features``, fixed mean/std).
7. Valid frames: ``(L + 2 * pad - n_fft) // hop`` (``pad`` = ``n_fft // 2`` or ``p``). NeMo's tensor
   holds one more STFT frame (set to ``pad_value``) and is padded to a multiple of ``pad_to``;
   :func:`log_mel` returns the valid frames only unless ``nemo_padding=True``.

Everything after pre-emphasis is computed in float64 and returned as float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "FeatureConfig",
    "StreamingLogMel",
    "log_mel",
    "mel_filterbank",
    "num_frames",
    "validate_audio",
]

# NeMo's ``CONSTANT`` in parts/preprocessing/features.py: added to the std in normalisation.
_NORM_EPS = 1e-5

_NO_NORMALIZE = "NA"
_SUPPORTED_WINDOWS = ("hann", "hamming", "blackman", "bartlett")

# NeMo preprocessor config keys that do not change eval-mode output (training-time augmentation,
# deprecated switches NeMo forces off, the module target).
_IGNORED_KEYS = frozenset(
    {
        "_target_",
        "dither",
        "rng",
        "nb_augmentation_prob",
        "nb_max_freq",
        "use_torchaudio",
        "stft_exact_pad",
        "stft_conv",
    }
)
_TARGET_NAME = "AudioToMelSpectrogramPreprocessor"


@dataclass(frozen=True)
class FeatureConfig:
    """The preprocessor settings that determine the eval-mode log-mel features.

    Built from a checkpoint's preprocessor config with :meth:`from_nemo` so nothing numeric is
    hard-coded; stored in the model repository manifest with :meth:`to_dict`.
    """

    sample_rate: int = 16000
    win_length: int = 400  # samples
    hop_length: int = 160  # samples
    n_fft: int = 512
    window: str = "hann"
    n_mels: int = 128
    lowfreq: float = 0.0
    highfreq: float = 8000.0  # resolved: NeMo uses sample_rate / 2 when unset
    mel_norm: str | None = "slaney"
    preemph: float | None = 0.97
    mag_power: float = 2.0
    log: bool = True
    log_zero_guard_type: str = "add"
    log_zero_guard_value: float = 2.0**-24  # resolved: "tiny"/"eps" become float32's values
    normalize: str = _NO_NORMALIZE  # "NA" (none), "per_feature", "all_features" or "fixed"
    fixed_mean: tuple[float, ...] | None = None  # per mel bin, only with normalize == "fixed"
    fixed_std: tuple[float, ...] | None = None
    exact_pad: bool = False
    pad_to: int = 0  # only shapes NeMo's padded tensor (log_mel(..., nemo_padding=True))
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        _check_config(self)

    @property
    def stft_pad(self) -> int:
        """Zeros NeMo adds on each side of the signal before framing."""
        return (self.n_fft - self.hop_length) // 2 if self.exact_pad else self.n_fft // 2

    @property
    def streamable(self) -> bool:
        """False where features depend on whole-utterance statistics."""
        return self.normalize not in ("per_feature", "all_features")

    @classmethod
    def from_nemo(cls, preprocessor_cfg: Mapping[str, Any]) -> FeatureConfig:
        """Read a (resolved) NeMo ``AudioToMelSpectrogramPreprocessor`` config dict.

        Defaults are NeMo's own for keys the config leaves out. Options that change eval-mode
        output and are not implemented here raise ``ValueError``; training-only options (dither,
        narrow-band augmentation) are ignored because inference runs in eval mode.
        """
        cfg = dict(preprocessor_cfg)
        target = cfg.get("_target_")
        if target is not None and str(target).rsplit(".", 1)[-1] != _TARGET_NAME:
            raise ValueError(f"preprocessor _target_ {target!r} is not supported; only {_TARGET_NAME} is")
        known = {
            "sample_rate",
            "window_size",
            "window_stride",
            "n_window_size",
            "n_window_stride",
            "window",
            "normalize",
            "n_fft",
            "preemph",
            "features",
            "lowfreq",
            "highfreq",
            "log",
            "log_zero_guard_type",
            "log_zero_guard_value",
            "pad_to",
            "frame_splicing",
            "exact_pad",
            "pad_value",
            "mag_power",
            "mel_norm",
        }
        unknown = sorted(set(cfg) - known - _IGNORED_KEYS)
        if unknown:
            raise ValueError(f"unsupported preprocessor option(s) {unknown} (not in NeMo's {_TARGET_NAME})")
        for key, value in cfg.items():
            if isinstance(value, str) and "${" in value:
                raise ValueError(
                    f"preprocessor option {key}={value!r} is an unresolved interpolation; resolve the "
                    "config first (OmegaConf.to_container(cfg, resolve=True))"
                )

        sample_rate = int(cfg.get("sample_rate", 16000))
        win_length = _samples(cfg, "window_size", "n_window_size", 0.02, sample_rate)
        hop_length = _samples(cfg, "window_stride", "n_window_stride", 0.01, sample_rate)
        n_fft = cfg.get("n_fft")
        n_fft = int(n_fft) if n_fft else 2 ** math.ceil(math.log2(win_length))

        frame_splicing = int(cfg.get("frame_splicing", 1) or 1)
        if frame_splicing != 1:
            raise ValueError(f"frame_splicing={frame_splicing} is not supported (only 1, i.e. off)")

        pad_to = cfg.get("pad_to", 16)
        if pad_to == "max" or not isinstance(pad_to, int) or isinstance(pad_to, bool) or pad_to < 0:
            raise ValueError(f"pad_to={pad_to!r} is not supported (only an int >= 0)")

        normalize, fixed_mean, fixed_std = _parse_normalize(cfg.get("normalize", "per_feature"))

        guard_type = cfg.get("log_zero_guard_type", "add")
        guard = cfg.get("log_zero_guard_value", 2.0**-24)
        if isinstance(guard, str):
            if guard == "tiny":
                guard = float(np.finfo(np.float32).tiny)
            elif guard == "eps":
                guard = float(np.finfo(np.float32).eps)
            else:
                raise ValueError(f"log_zero_guard_value={guard!r} must be a number, 'tiny' or 'eps'")

        highfreq = cfg.get("highfreq")
        preemph = cfg.get("preemph", 0.97)
        mel_norm = cfg.get("mel_norm", "slaney")
        return cls(
            sample_rate=sample_rate,
            win_length=win_length,
            hop_length=hop_length,
            n_fft=n_fft,
            window=cfg.get("window", "hann"),
            n_mels=int(cfg.get("features", 64)),
            lowfreq=float(cfg.get("lowfreq", 0) or 0),
            highfreq=float(highfreq or sample_rate / 2),
            mel_norm=None if mel_norm is None else str(mel_norm),
            preemph=None if preemph is None else float(preemph),
            mag_power=float(cfg.get("mag_power", 2.0)),
            log=bool(cfg.get("log", True)),
            log_zero_guard_type=str(guard_type),
            log_zero_guard_value=float(guard),
            normalize=normalize,
            fixed_mean=fixed_mean,
            fixed_std=fixed_std,
            exact_pad=bool(cfg.get("exact_pad", False)),
            pad_to=int(pad_to),
            pad_value=float(cfg.get("pad_value", 0.0)),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = asdict(self)
        for key in ("fixed_mean", "fixed_std"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a manifest from another version)."""
        data = dict(data)
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown FeatureConfig field(s) {unknown}")
        for key in ("fixed_mean", "fixed_std"):
            if data.get(key) is not None:
                data[key] = tuple(float(v) for v in data[key])
        return cls(**data)


def _samples(cfg: Mapping[str, Any], seconds_key: str, samples_key: str, default: float, sr: int) -> int:
    """NeMo's rule: seconds win over samples, both set is an error, seconds are truncated by int()."""
    seconds, samples = cfg.get(seconds_key), cfg.get(samples_key)
    if seconds and samples:
        raise ValueError(f"both {seconds_key} and {samples_key} are set; NeMo accepts only one")
    if seconds:
        return int(seconds * sr)
    if samples:
        return int(samples)
    if seconds_key in cfg or samples_key in cfg:
        raise ValueError(f"{seconds_key}/{samples_key} must be positive")
    return int(default * sr)


def _parse_normalize(value: Any) -> tuple[str, tuple[float, ...] | None, tuple[float, ...] | None]:
    if isinstance(value, Mapping):
        if "fixed_mean" in value and "fixed_std" in value:
            mean = tuple(float(v) for v in np.asarray(value["fixed_mean"], dtype=np.float64).ravel())
            std = tuple(float(v) for v in np.asarray(value["fixed_std"], dtype=np.float64).ravel())
            return "fixed", mean, std
        raise ValueError(f"normalize={dict(value)!r}: a mapping needs fixed_mean and fixed_std")
    if value in ("per_feature", "all_features"):
        return value, None, None
    if value is None or isinstance(value, str):
        # NeMo applies no normalisation for any other string ("NA" in the streaming configs).
        return _NO_NORMALIZE, None, None
    raise ValueError(f"normalize={value!r} is not supported")


def _check_config(c: FeatureConfig) -> None:
    """Reject settings NeMo itself rejects or that this module does not implement."""
    for name in ("sample_rate", "win_length", "hop_length", "n_fft", "n_mels"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if c.win_length > c.n_fft:
        raise ValueError(f"win_length {c.win_length} is longer than n_fft {c.n_fft}")
    if c.window not in _SUPPORTED_WINDOWS:
        raise ValueError(f"window={c.window!r} is not supported (one of {_SUPPORTED_WINDOWS})")
    if c.mel_norm not in ("slaney", None):
        raise ValueError(f"mel_norm={c.mel_norm!r} is not supported ('slaney' or None)")
    if c.log_zero_guard_type not in ("add", "clamp"):
        raise ValueError(f"log_zero_guard_type={c.log_zero_guard_type!r} must be 'add' or 'clamp'")
    if c.normalize not in (_NO_NORMALIZE, "per_feature", "all_features", "fixed"):
        raise ValueError(f"normalize={c.normalize!r} is not supported")
    if c.normalize == "fixed":
        if c.fixed_mean is None or c.fixed_std is None:
            raise ValueError("normalize='fixed' needs fixed_mean and fixed_std")
        if len(c.fixed_mean) != c.n_mels or len(c.fixed_std) != c.n_mels:
            raise ValueError(f"fixed_mean/fixed_std must have n_mels={c.n_mels} values")
    if c.exact_pad and c.hop_length % 2 == 1:
        raise ValueError("exact_pad needs an even hop_length (NeMo raises NotImplementedError)")
    if not 0 <= c.lowfreq < c.highfreq <= c.sample_rate / 2:
        raise ValueError(f"need 0 <= lowfreq < highfreq <= sample_rate/2, got {c.lowfreq}, {c.highfreq}")
    if c.pad_to < 0:
        raise ValueError("pad_to must be >= 0")


def validate_audio(samples: Any) -> np.ndarray:
    """Check one mono chunk: a 1-D float32 numpy array of finite values; returns it unchanged.

    Float32 because that is what NeMo's preprocessor computes in; silently casting int16 PCM
    would give features 30000x too large, so the caller must convert explicitly.
    """
    if not isinstance(samples, np.ndarray):
        raise ValueError(f"audio must be a numpy array, got {type(samples).__name__}")
    if samples.dtype != np.float32:
        raise ValueError(f"audio must be float32 (scaled to [-1, 1]), got dtype {samples.dtype}")
    if samples.ndim != 1:
        raise ValueError(f"audio must be 1-D [samples] (mono), got shape {samples.shape}")
    if samples.size and not np.isfinite(samples).all():
        raise ValueError("audio contains NaN or infinite values")
    return samples


def num_frames(config: FeatureConfig, num_samples: int) -> int:
    """Number of valid feature frames NeMo reports (``processed_length``) for ``num_samples``."""
    if num_samples <= 0:
        return 0
    return max(0, (num_samples + 2 * config.stft_pad - config.n_fft) // config.hop_length)


def padded_frames(config: FeatureConfig, num_samples: int) -> int:
    """Frames NeMo's preprocessor outputs (its tensor width): the valid ones plus the STFT's last,
    which it overwrites with ``pad_value``. NeMo's streaming buffer chunks the whole width."""
    if num_samples <= 0:
        return 0
    return (num_samples + 2 * config.stft_pad - config.n_fft) // config.hop_length + 1


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = math.log(6.4) / 27.0
    mel = hz / f_sp
    return np.where(
        hz >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep, mel
    )


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(config: FeatureConfig) -> np.ndarray:
    """The mel filterbank NeMo builds (librosa ``filters.mel``, Slaney mel scale), [n_mels, n_fft//2+1].

    float32 like librosa's default and rounded the same way (weights stored in float32, then the
    Slaney area normalisation applied in place), so it matches NeMo's ``fb`` buffer bit for bit
    or to the last ulp.
    """
    n_bins = config.n_fft // 2 + 1
    fft_freqs = np.arange(n_bins, dtype=np.float64) * (config.sample_rate / config.n_fft)
    mel_lo, mel_hi = _hz_to_mel_slaney(np.array([config.lowfreq, config.highfreq]))
    mel_f = _mel_to_hz_slaney(np.linspace(mel_lo, mel_hi, config.n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)
    if config.mel_norm == "slaney":
        enorm = 2.0 / (mel_f[2:] - mel_f[:-2])
        weights = (weights.astype(np.float64) * enorm[:, None]).astype(np.float32)
    return weights


def _window(config: FeatureConfig) -> np.ndarray:
    """torch's symmetric window (``periodic=False``), centred in n_fft like torch.stft does.

    Evaluated the way torch does in float32 (phase ``n * float32(2 pi / (N - 1))``, then
    ``alpha - beta * cos``) so it equals ``torch.hann_window`` to within 1 ulp: at the float32 noise
    floor of quiet mel bins even that last bit of the window shows in the log-mel values.
    """
    n = config.win_length
    f32 = np.float32
    if n == 1:
        win = np.ones(1, dtype=f32)
    else:
        idx = np.arange(n, dtype=f32)
        phase = idx * f32(2.0 * math.pi / (n - 1))
        cos = np.cos(phase.astype(np.float64)).astype(f32)
        if config.window == "hann":
            win = cos * f32(-0.5) + f32(0.5)
        elif config.window == "hamming":
            win = cos * f32(-0.46) + f32(0.54)
        elif config.window == "blackman":
            cos2 = np.cos(2.0 * phase.astype(np.float64)).astype(f32)
            win = f32(0.42) - f32(0.5) * cos + f32(0.08) * cos2
        else:  # bartlett
            win = (f32(1.0) - np.abs(idx * f32(2.0 / (n - 1)) - f32(1.0))).astype(f32)
    left = (config.n_fft - n) // 2
    out = np.zeros(config.n_fft, dtype=np.float64)
    out[left : left + n] = win
    return out


class _Kernels:
    """Per-config constants (window, filterbank), built once and shared by every stream."""

    def __init__(self, config: FeatureConfig) -> None:
        self.window = _window(config)
        self.fb = mel_filterbank(config).astype(np.float64)
        self.band_bins, self.band_weights = _filterbank_bands(self.fb)
        self.preemph = None if config.preemph is None else np.float32(config.preemph)
        self.guard = np.float64(np.float32(config.log_zero_guard_value))
        if config.normalize == "fixed":
            self.mean = np.asarray(config.fixed_mean, dtype=np.float64)[:, None]
            self.std = np.asarray(config.fixed_std, dtype=np.float64)[:, None]


def _filterbank_bands(fb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each mel filter's run of bins, as (bins [n_mels, W], weights [n_mels, W]), W the widest filter's
    bins; a narrower filter's run is padded with zero weights. The product with the filterbank then reads
    W bins per filter instead of all of them (128 filters over 257 bins: at most 12 each, 504 in all)."""
    runs = [np.flatnonzero(row) for row in fb]
    width = max(1, max(run[-1] - run[0] + 1 if run.size else 0 for run in runs))
    starts = np.array([min(run[0], fb.shape[1] - width) if run.size else 0 for run in runs])
    bins = starts[:, None] + np.arange(width)[None, :]
    return bins, np.take_along_axis(fb, bins, axis=1)


# Frames per filterbank product: bounds the [frames, n_mels, W] gather for whole-utterance features.
_BAND_BLOCK_FRAMES = 256


def _mel_power(k: _Kernels, power: np.ndarray) -> np.ndarray:
    """`fb @ power.T` ([n_mels, frames]) from each filter's bins alone: the same sums (to float64 rounding),
    a tenth of the multiplications of the dense product, which was half a streamed chunk's feature time."""
    blocks = [
        np.einsum("tiw,iw->it", power[start : start + _BAND_BLOCK_FRAMES, k.band_bins], k.band_weights)
        for start in range(0, power.shape[0], _BAND_BLOCK_FRAMES)
    ]
    return np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]


_KERNEL_CACHE: dict[FeatureConfig, _Kernels] = {}


def _kernels(config: FeatureConfig) -> _Kernels:
    k = _KERNEL_CACHE.get(config)
    if k is None:
        if len(_KERNEL_CACHE) > 16:
            _KERNEL_CACHE.clear()
        k = _KERNEL_CACHE[config] = _Kernels(config)
    return k


def _preemphasis(x: np.ndarray, coeff: np.float32 | None, prev: np.float32) -> np.ndarray:
    """Float32 pre-emphasis with ``prev`` the sample before ``x[0]`` (0 at the stream start)."""
    if coeff is None or x.size == 0:
        return x.astype(np.float32, copy=True)
    shifted = np.empty_like(x)
    shifted[0] = prev
    shifted[1:] = x[:-1]
    return x - coeff * shifted


def _frames_to_features(config: FeatureConfig, k: _Kernels, padded: np.ndarray, n: int) -> np.ndarray:
    """Features of frames 0..n-1 of ``padded`` (frame t starts at t * hop), before normalisation."""
    if n <= 0:
        return np.zeros((config.n_mels, 0), dtype=np.float64)
    view = np.lib.stride_tricks.sliding_window_view(padded, config.n_fft)[:: config.hop_length][:n]
    spec = np.fft.rfft(view.astype(np.float64) * k.window, axis=-1)
    power = spec.real**2 + spec.imag**2
    if config.mag_power != 2.0:
        power = np.sqrt(power)
        if config.mag_power != 1.0:
            power = power**config.mag_power
    mel = _mel_power(k, power)
    if config.log:
        if config.log_zero_guard_type == "add":
            mel = np.log(mel + k.guard)
        else:
            mel = np.log(np.maximum(mel, k.guard))
    if config.normalize == "fixed":
        mel = (mel - k.mean) / k.std
    return mel


def _normalize_utterance(config: FeatureConfig, feats: np.ndarray) -> np.ndarray:
    """NeMo's ``normalize_batch`` over the valid frames (unbiased std plus 1e-5)."""
    n = feats.shape[1]
    if n == 0 or config.normalize not in ("per_feature", "all_features"):
        return feats
    if config.normalize == "per_feature":
        mean = feats.mean(axis=1, keepdims=True)
        # One frame: NeMo's std is NaN and replaced by 0.
        std = feats.std(axis=1, ddof=1, keepdims=True) if n > 1 else np.zeros_like(mean)
        return (feats - mean) / (std + _NORM_EPS)
    # all_features: torch.std of a single value is NaN, and NeMo keeps it.
    std = feats.std(ddof=1) if feats.size > 1 else np.nan
    return (feats - feats.mean()) / (std + _NORM_EPS)


def log_mel(config: FeatureConfig, audio: np.ndarray, *, nemo_padding: bool = False) -> np.ndarray:
    """Features of a whole utterance, [n_mels, num_frames(config, len(audio))] float32.

    Equal to NeMo's preprocessor output cut to its reported length. With ``nemo_padding=True``
    the array has NeMo's full time axis instead: the extra STFT frame(s) and the ``pad_to``
    padding, filled with ``pad_value``.
    """
    validate_audio(audio)
    k = _kernels(config)
    length = audio.shape[0]
    n = num_frames(config, length)
    pad = config.stft_pad
    if config.exact_pad:
        # Pad first, then pre-emphasis, then NeMo's time mask (index >= length) on the padded signal.
        padded = np.concatenate([np.zeros(pad, np.float32), audio, np.zeros(pad, np.float32)])
        padded = _preemphasis(padded, k.preemph, np.float32(0.0))
        padded[length:] = 0.0
        total = (padded.shape[0] - config.n_fft) // config.hop_length + 1 if padded.shape[0] >= config.n_fft else 0
    else:
        y = _preemphasis(audio, k.preemph, np.float32(0.0))
        padded = np.concatenate([np.zeros(pad, np.float32), y, np.zeros(pad, np.float32)])
        total = (padded.shape[0] - config.n_fft) // config.hop_length + 1
    feats = _frames_to_features(config, k, padded, n)
    feats = _normalize_utterance(config, feats)
    if nemo_padding:
        width = max(total, n)
        if config.pad_to > 0 and width % config.pad_to:
            width += config.pad_to - width % config.pad_to
        out = np.full((config.n_mels, width), config.pad_value, dtype=np.float64)
        out[:, :n] = feats
        feats = out
    return feats.astype(np.float32)


class StreamingLogMel:
    """Per-stream incremental features whose concatenation equals :func:`log_mel` of the whole audio.

    ``accept(chunk)`` returns the frames that no later audio can change: frame ``t`` is final once
    every pre-emphasised sample in its window is known and (with ``exact_pad``) cannot fall in
    NeMo's zeroed tail. ``flush()`` applies NeMo's end padding and returns the rest. State is the
    pre-emphasised samples from the next frame's start onwards (< n_fft + chunk), the last raw
    sample (pre-emphasis crosses chunk boundaries) and two counters.

    Not possible with ``normalize`` ``per_feature``/``all_features``: those use statistics of the
    whole utterance, so no frame is final before the end; the constructor raises ``ValueError``.
    """

    def __init__(self, config: FeatureConfig) -> None:
        if not config.streamable:
            raise ValueError(
                f"normalize={config.normalize!r} uses whole-utterance statistics, so features cannot be "
                "computed incrementally; streaming needs normalize 'NA' (or fixed mean/std)"
            )
        self.config = config
        self._k = _kernels(config)
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        # Pre-emphasised signal in padded coordinates (the left padding zeros first; with exact_pad
        # they go through pre-emphasis too, zeros in, zeros out); _buf[0] is padded index _buf_start.
        self._buf = np.zeros(self.config.stft_pad, dtype=np.float32)
        self._buf_start = 0
        self._prev = np.float32(0.0)
        self._num_samples = 0
        self._num_frames = 0
        self._finished = False

    @property
    def num_samples(self) -> int:
        """Audio samples accepted so far."""
        return self._num_samples

    @property
    def num_frames(self) -> int:
        """Frames returned so far."""
        return self._num_frames

    def accept(self, chunk: np.ndarray) -> np.ndarray:
        """Add audio (any length, also 0); return the newly final frames, [n_mels, k] float32."""
        if self._finished:
            raise RuntimeError("stream already flushed; call reset() to start another")
        validate_audio(chunk)
        if chunk.size:
            y = _preemphasis(chunk, self._k.preemph, self._prev)
            self._prev = chunk[-1]
            self._buf = np.concatenate([self._buf, y])
            self._num_samples += chunk.size
        c = self.config
        # Known-final pre-emphasised samples, in padded coordinates.
        final_end = c.stft_pad + self._num_samples - (c.stft_pad if c.exact_pad else 0)
        last = (final_end - c.n_fft) // c.hop_length  # last frame index fully inside final samples
        return self._emit(last + 1 - self._num_frames)

    def flush(self) -> np.ndarray:
        """End of stream: apply NeMo's end padding/masking and return the remaining frames."""
        if self._finished:
            raise RuntimeError("stream already flushed; call reset() to start another")
        c = self.config
        total_valid = num_frames(c, self._num_samples)
        pad = c.stft_pad
        if c.exact_pad:
            # NeMo zeroes padded indices >= num_samples (the last `pad` real samples included).
            cut = max(0, self._num_samples - self._buf_start)
            self._buf[cut:] = 0.0
            self._buf = np.concatenate([self._buf, np.zeros(pad, dtype=np.float32)])
        else:
            self._buf = np.concatenate([self._buf, np.zeros(pad, dtype=np.float32)])
        out = self._emit(total_valid - self._num_frames)
        self._finished = True
        self._buf = np.zeros(0, dtype=np.float32)
        return out

    def _emit(self, n: int) -> np.ndarray:
        c = self.config
        if n <= 0:
            return np.zeros((c.n_mels, 0), dtype=np.float32)
        offset = self._num_frames * c.hop_length - self._buf_start
        feats = _frames_to_features(c, self._k, self._buf[offset:], n)
        self._num_frames += n
        drop = self._num_frames * c.hop_length - self._buf_start
        self._buf = self._buf[drop:].copy()
        self._buf_start += drop
        return feats.astype(np.float32)
