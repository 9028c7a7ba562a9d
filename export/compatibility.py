"""What a checkpoint pair must be for the served pipeline to run it as NeMo's streaming script does.

Checked on the configs inside the `.nemo` files, before minutes go into loading them. A setting the
pipeline cannot serve faithfully is refused with one line naming it; a setting NeMo's multitalker
script overrides at run time is served with the script's value and reported as a note.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtasr.export.checkpoints import ExportError
from mtasr.features import FeatureConfig

# Decoding strategies the served decoder reproduces (greedy RNNT, one or more symbols per frame).
GREEDY_STRATEGIES = ("greedy", "greedy_batch")
# The attention style cache-aware streaming needs (NeMo's streaming buffer requires it too).
STREAMING_ATTENTION = "chunked_limited"
# The diarizer cache NeMo's multitalker script sets at run time (`spkcache_len`, `fifo_len`), whatever the
# checkpoint says; export serves these unless told otherwise (`ExportSettings.diarizer_cache`).
NEMO_SCRIPT_DIARIZER_CACHE = (188, 188)

# Feature settings the diarizer cannot run without (the ASR's features are what it reads): tensor shape and
# time base. Other differences change values only (a note); `pad_to` changes no value at all.
MUST_MATCH = ("n_mels", "sample_rate", "hop_length")
LAYOUT_ONLY = ("pad_to",)
# Speaker conditioning the served encoder graph has been checked against NeMo with.
SPEAKER_KERNEL = {"spk_kernel_type": "ff", "spk_kernel_layers": [0], "add_bg_spk_kernel": True}


def asr_features(config: Mapping[str, Any], path: Any) -> FeatureConfig:
    """The ASR's streaming features; refused when they cannot be computed chunk by chunk."""
    features = _features(config, "ASR", path)
    if not features.streamable:
        raise ExportError(
            f"ASR checkpoint {path}: preprocessor.normalize is {features.normalize!r}, statistics of the whole "
            "utterance, which a stream does not have; streaming needs 'NA' or fixed_mean/fixed_std"
        )
    return features


def _features(config: Mapping[str, Any], role: str, path: Any) -> FeatureConfig:
    try:
        return FeatureConfig.from_nemo(config.get("preprocessor") or {})
    except ValueError as err:
        raise ExportError(f"{role} checkpoint {path}: preprocessor: {err}") from None


def check_asr_config(config: Mapping[str, Any], path: Any) -> FeatureConfig:
    """Refuse ASR settings the served pipeline would run differently from NeMo's script; returns its features."""
    features = asr_features(config, path)
    strategy = (config.get("decoding") or {}).get("strategy", "greedy_batch")
    if strategy not in GREEDY_STRATEGIES:
        raise ExportError(
            f"ASR checkpoint {path}: decoding.strategy is {strategy!r}; the served decoder is greedy "
            f"({' or '.join(GREEDY_STRATEGIES)}): change the strategy and save the model again"
        )
    style = (config.get("encoder") or {}).get("att_context_style", "regular")
    if style != STREAMING_ATTENTION:
        raise ExportError(
            f"ASR checkpoint {path}: encoder.att_context_style is {style!r}; cache-aware streaming needs "
            f"{STREAMING_ATTENTION!r}"
        )
    for key, served in SPEAKER_KERNEL.items():
        value = config.get(key, served)
        if value != served:
            raise ExportError(
                f"ASR checkpoint {path}: {key} is {value!r}; the served encoder is verified against NeMo "
                f"only with {served!r} (the released model's setting)"
            )
    return features


def check_diarizer_config(config: Mapping[str, Any], asr: FeatureConfig, path: Any) -> list[str]:
    """Refuse a diarizer the pipeline cannot feed `asr` features to; return notes on what is served
    differently from its config."""
    notes = []
    asr, diarizer = asr.to_dict(), _features(config, "diarizer", path).to_dict()
    differing = [key for key in asr if asr[key] != diarizer[key] and key not in LAYOUT_ONLY]
    shown = ", ".join(f"{key} {_short(diarizer[key])} (ASR: {_short(asr[key])})" for key in differing)
    if set(differing) & set(MUST_MATCH):
        raise ExportError(
            f"diarizer checkpoint {path}: its features differ from the ASR's ({shown}); served, as in NeMo's "
            "multitalker script, the diarizer reads the ASR's features"
        )
    if differing:
        notes.append(
            f"the diarizer was trained on other features than the ASR's ({shown}); served, as in NeMo's multitalker "
            "script, it reads the ASR's: expect it to diarize worse than it did in training"
        )
    if not config.get("streaming_mode", False):
        notes.append("the diarizer's streaming_mode is off in its config; served streaming, as NeMo's script runs it")
    if config.get("async_streaming", False):
        notes.append(
            "the diarizer uses async_streaming, which NeMo 3.0's multitalker script cannot run (its state reset "
            "builds the sync layout); it is served with the async cache update of the diarizer's own "
            "forward_streaming_step"
        )
    return notes


def _short(value: Any) -> str:
    if isinstance(value, list) and len(value) > 3:
        return f"[{value[0]:.4g}, {value[1]:.4g}, ...]"
    return repr(value)


def check_diarizer_cache(spkcache_len: int, fifo_len: int, min_spkcache_len: int) -> None:
    """Cache sizes NeMo's streaming update can run (it needs the speaker cache for every speaker's silence
    frames) and the served graph can take (a FIFO of 0 frames leaves an empty tensor dimension)."""
    if spkcache_len < min_spkcache_len:
        raise ExportError(f"diarizer spkcache_len {spkcache_len} is below this model's minimum of {min_spkcache_len}")
    if fifo_len < 1:
        raise ExportError(
            f"diarizer fifo_len {fifo_len} is not served (an empty FIFO); NeMo's script runs "
            f"{NEMO_SCRIPT_DIARIZER_CACHE[1]}: export with --diarizer-cache script or SPKCACHE,FIFO"
        )
