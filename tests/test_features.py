"""Specification of mtasr.features: numpy log-mel features equal to NeMo's preprocessor.

The served pipeline computes features without torch, per stream, chunk by chunk; the models were
trained on NeMo's ``AudioToMelSpectrogramPreprocessor``. These tests pin the two together.

Tolerance note: NeMo computes the STFT in float32 (MKL on CPU, cuFFT on GPU). Its own rounding
error, measured against a float64 evaluation of the same formula, reaches ~1e-4 in log-mel at
quiet mel bins (energy < 1e-5, log-mel < -11.5) of frames with loud components, so there we
allow 3e-4; everywhere else the contract is 1e-4.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from mtasr.export import asr, sortformer
from mtasr.features import FeatureConfig, StreamingLogMel, log_mel, mel_filterbank, num_frames, validate_audio

SR = 16000


def _built_preprocessor(config) -> dict:
    """The preprocessor section of a config the project builds (one place for those settings)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(config.preprocessor, resolve=True)


# multitalker-parakeet-streaming-0.6b-v1 (128 mels) and Streaming Sortformer v2 (no pad_to: NeMo's
# default 16 applies), as the export's model builders define them.
MULTITALKER_CFG = _built_preprocessor(asr.asr_config("full", Path("unused-tokenizer")))
SORTFORMER_V2_CFG = _built_preprocessor(sortformer.sortformer_config("full"))
# NeMo's cache-aware FastConformer example (fastconformer_transducer_bpe_streaming.yaml): 80 mels.
ASR_STREAMING_CFG = {**MULTITALKER_CFG, "features": 80}
MODEL_CFGS = {
    "asr_streaming": ASR_STREAMING_CFG,
    "multitalker": MULTITALKER_CFG,
    "sortformer_v2": SORTFORMER_V2_CFG,
}

TOL = 1e-4  # the contract
TOL_QUIET = 3e-4  # where NeMo's float32 STFT is itself this far from exact (see module docstring)
QUIET_LOG_MEL = -11.5


# ---------------------------------------------------------------- audio


def harmonic_with_noise(n: int, seed: int = 0) -> np.ndarray:
    """Harmonic tones plus white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1234.5 * t)
    return (x + 0.05 * rng.standard_normal(n)).astype(np.float32)


def speech_like(n: int, seed: int = 0) -> np.ndarray:
    """Voiced harmonics on a gliding pitch, syllable-rate envelope with pauses, fricative bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t) + 20 * t
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum((0.5 / k) * np.sin(k * phase) for k in range(1, 25))
    envelope = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None) ** 0.5
    fricative = (np.sin(2 * np.pi * 1.3 * t) > 0.6) * 0.08 * rng.standard_normal(n)
    floor = np.convolve(rng.standard_normal(n), [1, 0.9, 0.5], mode="same")
    return (0.25 * voiced * envelope + fricative + 0.003 * floor).astype(np.float32)


def synthesized_speech() -> np.ndarray | None:
    """English from espeak-ng or flite at 16 kHz, or None where neither is installed."""
    import os
    import tempfile

    sf = pytest.importorskip("soundfile")
    text = "Streaming speech recognition for several talkers, with times, while the audio arrives."
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "speech.wav")
        if shutil.which("espeak-ng"):
            cmd = ["espeak-ng", "-w", wav, text]
        elif shutil.which("flite"):
            cmd = ["flite", "-t", text, "-o", wav]
        else:
            return None
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        audio, rate = sf.read(wav, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if rate != SR:
        from scipy.signal import resample_poly

        g = np.gcd(rate, SR)
        audio = resample_poly(audio, SR // g, rate // g)
    return np.ascontiguousarray(audio, dtype=np.float32)


# ---------------------------------------------------------------- NeMo reference


@pytest.fixture(scope="module")
def nemo_preprocessor():
    """Factory: NeMo's preprocessor from a config dict, in eval mode, dither 0, pad_to 0 unless given."""
    pytest.importorskip("torch")
    pytest.importorskip("nemo.collections.asr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor

    def build(cfg: dict, **overrides):
        kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
        kwargs.update({"dither": 0.0, "pad_to": 0})
        kwargs.update(overrides)
        return AudioToMelSpectrogramPreprocessor(**kwargs).eval()

    return build


def run_nemo(module, audio: np.ndarray) -> tuple[np.ndarray, int]:
    import torch

    with torch.no_grad():
        feats, length = module(input_signal=torch.from_numpy(audio)[None], length=torch.tensor([audio.shape[0]]))
    return feats[0].numpy(), int(length[0])


def assert_matches_nemo(ours: np.ndarray, nemo_valid: np.ndarray) -> float:
    """Same shape; <= TOL where NeMo's float32 STFT is accurate, <= TOL_QUIET everywhere."""
    assert ours.shape == nemo_valid.shape
    assert ours.dtype == np.float32
    if ours.size == 0:
        return 0.0
    diff = np.abs(ours - nemo_valid)
    loud = nemo_valid >= QUIET_LOG_MEL
    assert diff[loud].max(initial=0.0) <= TOL, f"max diff {diff[loud].max()} on non-quiet bins"
    assert diff.max() <= TOL_QUIET, f"max diff {diff.max()}"
    return float(diff.max())


# ---------------------------------------------------------------- offline parity


@pytest.mark.parametrize("name", sorted(MODEL_CFGS))
@pytest.mark.parametrize("signal", [harmonic_with_noise, speech_like])
@pytest.mark.parametrize("n", [3 * SR + 123, SR + 7, 4001, 401])
def test_log_mel_equals_nemo_preprocessor(nemo_preprocessor, name, signal, n):
    """Offline features equal NeMo's output cut to its length; same frame count, lengths off the hop grid."""
    cfg = MODEL_CFGS[name]
    audio = signal(n, seed=n)
    nemo, length = run_nemo(nemo_preprocessor(cfg), audio)
    config = FeatureConfig.from_nemo(cfg)
    ours = log_mel(config, audio)
    assert ours.shape == (cfg["features"], length) == (config.n_mels, num_frames(config, n))
    assert_matches_nemo(ours, nemo[:, :length])


def test_log_mel_equals_nemo_on_synthesized_speech(nemo_preprocessor):
    """Real synthesised English (espeak-ng or flite), where a synthesiser is installed."""
    audio = synthesized_speech()
    if audio is None:
        pytest.skip("neither espeak-ng nor flite is installed")
    for cfg in (MULTITALKER_CFG, SORTFORMER_V2_CFG):
        nemo, length = run_nemo(nemo_preprocessor(cfg), audio)
        assert_matches_nemo(log_mel(FeatureConfig.from_nemo(cfg), audio), nemo[:, :length])


def test_nemo_padding_reproduces_the_whole_tensor(nemo_preprocessor):
    """With nemo_padding the full tensor matches: the extra masked STFT frame and pad_to=16 padding."""
    config = FeatureConfig.from_nemo(SORTFORMER_V2_CFG)
    assert config.pad_to == 16  # NeMo's default where the config leaves pad_to out
    module = nemo_preprocessor(SORTFORMER_V2_CFG, pad_to=16)
    for n in (SR + 7, 2 * SR, 100):
        audio = speech_like(n, seed=3)
        nemo, length = run_nemo(module, audio)
        ours = log_mel(config, audio, nemo_padding=True)
        assert ours.shape == nemo.shape
        assert_matches_nemo(ours[:, :length], nemo[:, :length])
        np.testing.assert_array_equal(ours[:, length:], nemo[:, length:])


@pytest.mark.parametrize(
    "options",
    [
        {"exact_pad": True},
        {"normalize": "per_feature"},
        {"normalize": "all_features"},
        {"log_zero_guard_type": "clamp", "log_zero_guard_value": "tiny"},
        {"log_zero_guard_value": "eps"},
        {"mag_power": 1.0, "window": "hamming", "features": 64},
        {"preemph": None, "mel_norm": None},
        {
            "n_window_size": 320,
            "n_window_stride": 160,
            "window_size": None,
            "window_stride": None,
            "n_fft": None,
        },
        {"lowfreq": 100, "highfreq": 7000, "window": "blackman"},
        {"window": "bartlett", "pad_value": -5.0},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_other_supported_options_equal_nemo(nemo_preprocessor, options):
    """Every option NeMo's eval-mode preprocessor has that this module accepts gives NeMo's output."""
    cfg = {**MULTITALKER_CFG, **options}
    audio = speech_like(SR + 301, seed=5)
    nemo, length = run_nemo(nemo_preprocessor(cfg), audio)
    config = FeatureConfig.from_nemo(cfg)
    ours = log_mel(config, audio)
    if config.normalize in ("per_feature", "all_features"):
        # Normalised values are O(1) and the division amplifies quiet-bin noise a little.
        assert ours.shape == (config.n_mels, length)
        np.testing.assert_allclose(ours, nemo[:, :length], atol=TOL_QUIET, rtol=0)
    else:
        assert_matches_nemo(ours, nemo[:, :length])


def test_log_mel_without_log_equals_nemo(nemo_preprocessor):
    cfg = {**MULTITALKER_CFG, "log": False}
    audio = harmonic_with_noise(SR // 2 + 33)
    nemo, length = run_nemo(nemo_preprocessor(cfg), audio)
    np.testing.assert_allclose(log_mel(FeatureConfig.from_nemo(cfg), audio), nemo[:, :length], rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("exact_pad", [False, True])
def test_frame_count_equals_nemo_length(nemo_preprocessor, exact_pad):
    """num_frames is NeMo's processed_length for every length, short ones included."""
    cfg = {**MULTITALKER_CFG, "exact_pad": exact_pad}
    module = nemo_preprocessor(cfg)
    config = FeatureConfig.from_nemo(cfg)
    if exact_pad:
        lengths = [512, 513, 639, 640, 641, 1600, 16001]
    else:
        lengths = [1, 159, 160, 161, 255, 256, 257, 16001]
    for n in lengths:
        _, length = run_nemo(module, harmonic_with_noise(n))
        assert num_frames(config, n) == length, n
        assert log_mel(config, harmonic_with_noise(n)).shape[1] == length


def test_filterbank_equals_nemo_and_librosa(nemo_preprocessor):
    """Our Slaney mel filterbank is NeMo's ``fb`` buffer (built by librosa) bit for bit."""
    for cfg in (ASR_STREAMING_CFG, MULTITALKER_CFG, {**MULTITALKER_CFG, "lowfreq": 20, "highfreq": 7600}):
        fb = nemo_preprocessor(cfg).filter_banks[0].numpy()
        np.testing.assert_array_equal(mel_filterbank(FeatureConfig.from_nemo(cfg)), fb)


def test_empty_audio_gives_no_frames():
    config = FeatureConfig.from_nemo(MULTITALKER_CFG)
    assert log_mel(config, np.zeros(0, np.float32)).shape == (128, 0)


# ---------------------------------------------------------------- streaming


def stream_in_chunks(config: FeatureConfig, audio: np.ndarray, sizes) -> np.ndarray:
    stream = StreamingLogMel(config)
    parts, pos = [], 0
    for size in sizes:
        part = stream.accept(audio[pos : pos + size])
        assert part.shape[0] == config.n_mels and part.dtype == np.float32
        parts.append(part)
        pos += size
        # Only final frames come out before the end: never more than NeMo's count for the audio so far.
        assert stream.num_frames <= num_frames(config, pos)
    assert pos >= audio.shape[0]
    parts.append(stream.flush())
    return np.concatenate(parts, axis=1)


def random_sizes(rng: np.random.Generator, n: int) -> list[int]:
    sizes, total = [], 0
    while total < n:
        size = int(rng.choice([0, 1, 2, 159, 160, 161, 511, 512, 1000, 2560, int(rng.integers(0, 6000))]))
        sizes.append(size)
        total += size
    return sizes


@pytest.mark.parametrize(
    "cfg",
    [
        MULTITALKER_CFG,
        SORTFORMER_V2_CFG,
        {**MULTITALKER_CFG, "exact_pad": True},
        {**MULTITALKER_CFG, "preemph": None},
    ],
    ids=["multitalker", "sortformer_v2", "exact_pad", "no_preemph"],
)
def test_streaming_in_random_chunks_equals_offline(cfg):
    """Any chunking (0- and 1-sample chunks included) yields exactly the offline frames, in order."""
    config = FeatureConfig.from_nemo(cfg)
    rng = np.random.default_rng(7)
    for n in (2 * SR + 77, 1234, 511, 160, 1, 0):
        audio = speech_like(n, seed=n) if n else np.zeros(0, np.float32)
        offline = log_mel(config, audio)
        for _ in range(3):
            streamed = stream_in_chunks(config, audio, random_sizes(rng, n) if n else [0])
            assert streamed.shape == offline.shape
            np.testing.assert_allclose(streamed, offline, atol=1e-5, rtol=0)


def test_streaming_one_sample_at_a_time_and_latency():
    """Frames come out as soon as their window is complete; the state stays a short tail."""
    config = FeatureConfig.from_nemo(MULTITALKER_CFG)
    audio = harmonic_with_noise(3000)
    stream = StreamingLogMel(config)
    frames = []
    for i in range(audio.shape[0]):
        out = stream.accept(audio[i : i + 1])
        frames.append(out)
        # Centred STFT: frame t needs samples up to t * hop + n_fft // 2.
        assert stream.num_frames == max(0, (i + 1 - config.n_fft // 2) // config.hop_length + 1)
        assert stream._buf.shape[0] < config.n_fft + config.hop_length
    frames.append(stream.flush())
    np.testing.assert_allclose(np.concatenate(frames, axis=1), log_mel(config, audio), atol=1e-5, rtol=0)


def test_streaming_lifecycle():
    config = FeatureConfig.from_nemo(MULTITALKER_CFG)
    stream = StreamingLogMel(config)
    stream.accept(harmonic_with_noise(1000))
    stream.flush()
    with pytest.raises(RuntimeError):
        stream.accept(harmonic_with_noise(10))
    stream.reset()
    audio = harmonic_with_noise(5000, seed=1)
    out = np.concatenate([stream.accept(audio), stream.flush()], axis=1)
    np.testing.assert_allclose(out, log_mel(config, audio), atol=1e-5, rtol=0)
    assert stream.num_samples == 5000


@pytest.mark.parametrize("normalize", ["per_feature", "all_features"])
def test_streaming_refuses_utterance_normalisation(normalize):
    """Utterance statistics are unknown until the end, so streaming would silently differ: refuse."""
    config = FeatureConfig.from_nemo({**MULTITALKER_CFG, "normalize": normalize})
    with pytest.raises(ValueError, match="whole-utterance"):
        StreamingLogMel(config)


# ---------------------------------------------------------------- validation and config


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(100, np.float64), "float32"),
        (np.zeros(100, np.int16), "float32"),
        (np.zeros((2, 100), np.float32), "1-D"),
        (np.zeros((), np.float32), "1-D"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.array([0.0, np.inf], np.float32), "NaN or infinite"),
        ([0.0, 0.1], "numpy array"),
    ],
)
def test_bad_audio_is_a_value_error(bad, message):
    config = FeatureConfig.from_nemo(MULTITALKER_CFG)
    with pytest.raises(ValueError, match=message):
        validate_audio(bad)
    with pytest.raises(ValueError, match=message):
        log_mel(config, bad)
    with pytest.raises(ValueError, match=message):
        StreamingLogMel(config).accept(bad)


def test_config_from_nemo_reads_the_model_configs():
    asr = FeatureConfig.from_nemo(MULTITALKER_CFG)
    assert (asr.sample_rate, asr.win_length, asr.hop_length, asr.n_fft) == (16000, 400, 160, 512)
    assert (asr.n_mels, asr.window, asr.normalize, asr.mel_norm) == (128, "hann", "NA", "slaney")
    assert (asr.preemph, asr.mag_power, asr.log_zero_guard_type) == (0.97, 2.0, "add")
    assert (asr.log_zero_guard_value, asr.lowfreq, asr.highfreq) == (2.0**-24, 0.0, 8000.0)
    assert not asr.exact_pad and asr.pad_to == 0 and asr.streamable
    assert FeatureConfig.from_nemo(SORTFORMER_V2_CFG).pad_to == 16


def test_config_round_trips_through_json():
    fixed = {"fixed_mean": [0.5] * 128, "fixed_std": [2.0] * 128}
    for cfg in (*MODEL_CFGS.values(), {**MULTITALKER_CFG, "normalize": fixed}):
        config = FeatureConfig.from_nemo(cfg)
        assert FeatureConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown FeatureConfig"):
        FeatureConfig.from_dict({**FeatureConfig().to_dict(), "n_mfcc": 3})


def test_fixed_normalisation_streams():
    mean, std = np.linspace(-10, -5, 128), np.linspace(1, 3, 128)
    config = FeatureConfig.from_nemo({**MULTITALKER_CFG, "normalize": {"fixed_mean": mean, "fixed_std": std}})
    plain = log_mel(FeatureConfig.from_nemo(MULTITALKER_CFG), speech_like(5000))
    fixed = log_mel(config, speech_like(5000))
    np.testing.assert_allclose(fixed, (plain - mean[:, None]) / std[:, None], atol=1e-5)
    streamed = stream_in_chunks(config, speech_like(5000), [1000] * 5)
    np.testing.assert_allclose(streamed, fixed, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"frame_splicing": 3}, "frame_splicing"),
        ({"pad_to": "max"}, "pad_to"),
        ({"window": "none"}, "window"),
        ({"window": "kaiser"}, "window"),
        ({"mel_norm": 1.0}, "mel_norm"),
        ({"log_zero_guard_type": "floor"}, "log_zero_guard_type"),
        ({"log_zero_guard_value": "smallest"}, "log_zero_guard_value"),
        ({"exact_pad": True, "window_stride": None, "n_window_stride": 161}, "even hop"),
        ({"n_window_size": 400}, "both window_size"),
        ({"n_fft": 256}, "longer than n_fft"),
        ({"sample_rate": "${model.sample_rate}"}, "interpolation"),
        ({"n_mfcc": 40}, "unsupported preprocessor option"),
        ({"_target_": "nemo.collections.asr.modules.AudioToMFCCPreprocessor"}, "not supported"),
        ({"highfreq": 9000}, "highfreq"),
    ],
)
def test_unsupported_options_are_rejected_clearly(options, message):
    with pytest.raises(ValueError, match=message):
        FeatureConfig.from_nemo({**MULTITALKER_CFG, **options})
